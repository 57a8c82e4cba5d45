"""The fused per-task CUDA kernel body (csrc/mlp/mlp_fused.h), run on the CPU by a sequential
thread group as ``torch.ops.maml_ext._mlp_maml_grad_emulated``, against the pure-PyTorch reference
in float64: every loss, activation, learning-rate kind, step count, first and second order.

The CUDA kernel runs the same body with one thread block per task, so this is the arithmetic of
the GPU path checked on every CI run without a GPU (tests/test_ops_cuda.py runs the kernel itself).
"""

import pytest
import torch

from _ops_helpers import assert_rel, gen, mlp_batch, mlp_params, randn, requires_extension
from maml_ext import reference
from maml_ext.reference import split_lr
from test_ops_mlp_maml import CASES, Case

pytestmark = requires_extension

# Beyond test_ops_mlp_maml.CASES: the paper's sinusoid net, query sets larger than the support
# sets (workspace sized by the larger), deep nets and every loss with per-step elementwise rates.
EXTRA = [
    Case(4, 10, (1, 40, 40, 1), "relu", "mse", 3, "float"),
    Case(2, 3, (2, 4, 3, 5, 4, 3, 2), "tanh", "cross_entropy", 2, "per_step", weighted=True),
    Case(2, 4, (3, 6, 2), "relu", "gaussian_nll", 3, "per_step", weighted=True),
    Case(3, 6, (2, 5, 3), "tanh", "gaussian_nll", 4, "elementwise"),
    Case(2, 5, (2, 5, 3), "relu", "cross_entropy", 3, "per_step_scalar", first_order=True),
]


def grad_args(case, seed, dtype=torch.float64):
    params, lr, data = case.inputs(seed=seed, dtype=dtype)
    lrs, lr_value = split_lr(lr)
    weight = randn(gen(seed + 1), case.tasks, dtype=dtype)
    return (params, lrs, lr_value, case.lr_kind.startswith("per_step"), data["x_support"],
            data["y_support"], data.get("w_support"), data["x_query"], data["y_query"],
            data.get("w_query"), case.steps, case.activation, case.loss, case.first_order, weight)


def reference_grad(args):
    params, lrs, lr_value, per_step, xs, ys, ws, xq, yq, wq, steps, act, loss, fo, weight = args
    return reference.mlp_maml_grad(
        params, xs, ys, xq, yq, lr=list(lrs) if lrs else lr_value, steps=steps, per_step_lr=per_step,
        activation=act, loss=loss, first_order=fo, w_support=ws, w_query=wq, loss_weight=weight)


@pytest.mark.parametrize("case", CASES + EXTRA, ids=str)
def test_emulated_kernel_matches_reference(case):
    args = grad_args(case, seed=21)
    got = torch.ops.maml_ext._mlp_maml_grad_emulated(*args)
    expected = reference_grad(args)
    assert_rel(got[0], expected[0], what="query loss")
    assert_rel(list(got[1]), list(expected[1]), what="d params")
    assert_rel(list(got[2]), list(expected[2]), what="d lrs")


def test_emulated_kernel_query_larger_than_support():
    g = gen(30)
    widths, tasks = (2, 6, 3), 3
    params = mlp_params(g, widths, "cross_entropy")
    xs, ys = mlp_batch(g, widths, "cross_entropy", tasks, 2)
    xq, yq = mlp_batch(g, widths, "cross_entropy", tasks, 9)
    weight = torch.full((tasks,), 1.0 / tasks, dtype=torch.float64)
    args = (params, [], 0.3, False, xs, ys, None, xq, yq, None, 3, "tanh", "cross_entropy", False,
            weight)
    got = torch.ops.maml_ext._mlp_maml_grad_emulated(*args)
    expected = reference_grad(args)
    assert_rel(got[0], expected[0], what="query loss")
    assert_rel(list(got[1]), list(expected[1]), what="d params")


def as_double(obj):
    if isinstance(obj, torch.Tensor):
        return obj.double() if obj.is_floating_point() else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(as_double(o) for o in obj)
    return obj


def test_emulated_kernel_float32():
    args = grad_args(CASES[3], 22, torch.float32)
    got = torch.ops.maml_ext._mlp_maml_grad_emulated(*args)
    expected = reference_grad(as_double(args))  # the same numbers, in float64
    assert got[0].dtype == torch.float32
    assert_rel(got[0].double(), expected[0], tol=1e-5, what="query loss")
    assert_rel([g.double() for g in got[1]], list(expected[1]), tol=1e-4, what="d params")


def test_emulated_kernel_checks_inputs():
    args = list(grad_args(CASES[1], seed=23))
    args[-1] = torch.ones(CASES[1].tasks + 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="loss_weight"):
        torch.ops.maml_ext._mlp_maml_grad_emulated(*args)


def test_emulated_kernel_refuses_more_layers_than_it_holds():
    case = Case(2, 3, (1,) + (3,) * 9 + (1,), "tanh", "mse", 1, "float")  # 10 layers; the body holds 8
    with pytest.raises(RuntimeError, match="at most 8 layers"):
        torch.ops.maml_ext._mlp_maml_grad_emulated(*grad_args(case, seed=24))
