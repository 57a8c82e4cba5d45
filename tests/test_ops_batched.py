"""The batched (bmm over tasks) implementation that CUDA builds use, checked on the CPU.

``torch.ops.maml_ext._mlp_*_batched`` run the exact code of the CUDA path (csrc/mlp/mlp_batched.cpp)
on any device; here they must agree with the CPU kernels, which test_ops_mlp_* check against the
pure-PyTorch reference.
"""

import pytest
import torch

from _mlp_maml_cases import CASES
from _ops_helpers import assert_rel, gen, like, mlp_batch, mlp_params, randn, requires_extension
from maml_ext.reference import snapshot_interval, split_lr

pytestmark = requires_extension


def maml_args(case, save=True):
    params, lr, data = case.inputs(seed=3)
    lrs, lr_value = split_lr(lr)
    every = snapshot_interval(case.snapshots, case.steps)
    return [params, lrs, lr_value, case.lr_kind.startswith("per_step"), data["x_support"],
            data["y_support"], data.get("w_support"), data["x_query"], data["y_query"],
            data.get("w_query"), case.steps, case.activation, case.loss, case.first_order, every,
            save]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_batched_mlp_maml_matches_cpu_kernels(case):
    args = maml_args(case)
    fused = torch.ops.maml_ext.mlp_maml(*args)
    batched = torch.ops.maml_ext._mlp_maml_batched(*args)
    for name, a, b in zip(("query_loss", "adapted", "checkpoints", "query_grad"), fused, batched):
        assert_rel(b, a, what=name)

    params, lrs = args[0], args[1]
    g = gen(4)
    grad_loss = randn(g, case.tasks)
    grad_adapted = like(g, fused[1])
    back = [grad_loss, grad_adapted, params, lrs, args[2], args[3], args[4], args[5], args[6],
            fused[2], fused[3], case.steps, case.activation, case.loss, case.first_order, args[14],
            bool(lrs)]
    d_params, d_lrs = torch.ops.maml_ext.mlp_maml_backward(*back)
    b_params, b_lrs = torch.ops.maml_ext._mlp_maml_backward_batched(*back)
    assert_rel(b_params, d_params, what="d params")
    assert_rel(b_lrs, d_lrs, what="d lrs")


@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "gaussian_nll"])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_batched_mlp_hvp_matches_cpu_kernels(activation, loss):
    g = gen(5)
    widths, tasks, k = (3, 7, 5, 4), 3, 6
    params = mlp_params(g, widths, loss, tasks=tasks)
    x, y = mlp_batch(g, widths, loss, tasks, k)
    weight = torch.rand(tasks, k, generator=g, dtype=torch.float64)
    for direction in (like(g, params), []):  # with the HVP, and gradient only
        args = (params, x, y, direction, weight, activation, loss)
        cpu, batched = torch.ops.maml_ext.mlp_hvp(*args), torch.ops.maml_ext._mlp_hvp_batched(*args)
        assert len(batched[2]) == len(direction)
        for name, a, b in zip(("loss", "grads", "hvps"), cpu, batched):
            assert_rel(b, a, what=name)
