"""A small point-nav run (seconds, not minutes), shared by the meta-RL CLI tests."""

SMALL = [
    "model.hidden=[32, 32]", "train.meta_batch=6", "train.rollouts=8", "train.checkpoint_every=2",
    "eval.num_tasks=6", "eval.rollouts=8", "eval.steps=2", "eval.trajectories=2", "task.horizon=40",
]
