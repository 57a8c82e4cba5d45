"""The memorization property the benchmark rests on, on a small run: MAML meta-trained on the
non-mutually-exclusive coded sinusoid solves training tasks before adaptation (it reads the code)
and adaptation no longer helps (the pre-/post-adaptation gap collapses), while on the mutually
exclusive control it cannot, and adapts."""

import torch

from maml_ext.algorithms import build_algorithm
from maml_ext.models.mlp import MLP
from maml_ext.tasks.memorization import CodedSinusoid


def train_maml(exclusive: bool, iterations: int = 400) -> tuple[float, float]:
    """Mean training-task query MSE before and after one adaptation step (the training setting)."""
    torch.manual_seed(0)
    family = CodedSinusoid(codes=8, train_codes=6, exclusive=exclusive)
    learner = build_algorithm("maml", MLP(family.in_features, 1, (40, 40)), lr=0.01, steps=1)
    optimizer = torch.optim.Adam(learner.parameters(), lr=3e-3)
    tasks = torch.Generator().manual_seed(0)
    for _ in range(iterations):
        optimizer.zero_grad()
        learner.meta_loss(family.sample(10, 10, 10, tasks)).backward()
        optimizer.step()
    losses = learner.evaluate(family.sample(300, 10, 50, torch.Generator().manual_seed(1)), 1)
    return losses[0].mean().item(), losses[1].mean().item()


def test_maml_memorises_coded_tasks_and_adapts_on_the_control():
    pre, post = train_maml(exclusive=False)
    # ignoring the code costs Var(A)·E[sin²x] ≈ 0.3 before adaptation on these tasks
    assert pre < 0.1, f"MAML did not memorise the coded training tasks: pre-adaptation MSE {pre:.3f}"
    assert post > pre - 0.02, f"adaptation still helps on memorised tasks: {pre:.3f} -> {post:.3f}"
    pre_c, post_c = train_maml(exclusive=True)
    assert pre_c > 0.2, f"the control's code carries information: pre-adaptation MSE {pre_c:.3f}"
    assert post_c < pre_c - 0.05, f"MAML did not adapt on the control: {pre_c:.3f} -> {post_c:.3f}"
