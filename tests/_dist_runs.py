"""Tiny sinusoid runs and their comparison, shared by test_dist_train and test_torchrun."""

import torch

from maml_ext.train import config, loop

# meta_batch 5 splits unevenly (2 + 3 tasks): the all-reduce must weight ranks by their task counts.
TINY = ["model.hidden=[8]", "train.meta_batch=5", "train.log_every=1", "train.checkpoint_every=2",
        "eval.num_tasks=10", "eval.shots=[5]", "eval.k_query=10", "eval.steps=2"]


def cfg(*extra):
    return config.load("sinusoid", [*TINY, *extra])


def trained(out):
    return torch.load(out / loop.CHECKPOINT, weights_only=True)


def assert_same_run(dist_out, single_out):
    a, b = trained(dist_out), trained(single_out)
    assert a["iteration"] == b["iteration"]
    assert a["learner"].keys() == b["learner"].keys()
    for name in a["learner"]:
        torch.testing.assert_close(a["learner"][name], b["learner"][name], rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(a["rng"]["tasks"], b["rng"]["tasks"], rtol=0, atol=0)  # same tasks drawn


def single(tmp_path, name, c):
    out = tmp_path / name
    loop.train(c, out, progress=False)
    return out
