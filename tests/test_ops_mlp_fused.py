"""The fused per-task CUDA kernel body (csrc/mlp/mlp_fused.h), run on the CPU by a sequential
thread group as ``torch.ops.maml_ext._mlp_maml_grad_emulated``, against the pure-PyTorch reference
in float64: every loss, activation, learning-rate kind, step count, first and second order.

The CUDA kernel runs the same body with one thread block per task, so this is the arithmetic of
the GPU path checked on every CI run without a GPU (tests/test_ops_cuda.py runs the kernel itself).
"""

import pytest
import torch

from _ops_helpers import as_double, assert_rel, gen, mlp_batch, mlp_params, requires_extension
from _mlp_maml_cases import CASES, EXTRA, Case, grad_args, reference_grad

pytestmark = requires_extension


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
