"""The generic path's own pieces (issue 14.3): the inner step's torch formula against the
reference op, and the parameter slots of the user's module restored even when its forward fails."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maml_ext import reference
from maml_ext.algorithms import MAML
from maml_ext.algorithms.inner import apply_step
from maml_ext.tasks import TaskBatch

T = 3


def _tensors(shared: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 2), (4,)]
    params = [torch.randn(*(s if shared else (T, *s)), generator=g, dtype=torch.float64) for s in shapes]
    return params, [torch.randn(T, *s, generator=g, dtype=torch.float64) for s in shapes]


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("rate", ["float", "per_tensor", "elementwise", "per_step"])
def test_apply_step_is_the_inner_update_formula(shared: bool, rate: str) -> None:
    params, dirs = _tensors(shared)
    lr, row = {
        "float": (0.3, None),
        "per_tensor": ([torch.tensor(0.3, dtype=torch.float64), torch.tensor(-0.2, dtype=torch.float64)], None),
        "elementwise": ([torch.rand(4, 2, dtype=torch.float64), torch.rand(4, dtype=torch.float64)], None),
        "per_step": ([torch.tensor([0.1, 0.3], dtype=torch.float64), torch.tensor([0.5, 0.2], dtype=torch.float64)], 1),
    }[rate]
    got, want = apply_step(params, dirs, lr, row), reference.inner_update(params, dirs, lr, row)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-15, atol=1e-15)


def test_module_slots_restored_when_the_forward_raises() -> None:
    model = nn.Sequential(nn.Linear(1, 3), nn.BatchNorm1d(3), nn.Linear(3, 1))
    model[2].weight = nn.Parameter(torch.randn(1, 3))
    original = {n: p for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    learner = MAML(model, lr=0.1, fused=False)
    x = torch.randn(T, 4, 1)
    batch = TaskBatch(x, x.sin(), x, x.sin())
    learner.meta_loss(batch).backward()  # a working call first: the slots are looked up once
    model[2].register_forward_pre_hook(lambda m, args: (_ for _ in ()).throw(RuntimeError("model failure")))
    with pytest.raises(RuntimeError, match="model failure"):
        learner.meta_loss(batch)
    for name, p in model.named_parameters():
        assert p is original[name] and isinstance(p, nn.Parameter)
    for name, b in model.named_buffers():
        assert b is not None and torch.equal(b, buffers[name])
