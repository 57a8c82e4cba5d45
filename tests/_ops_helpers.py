"""Shared helpers of the fused-op tests (tests/test_ops_*.py): random MLPs and batches, tolerances."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch
from torch import Tensor

from maml_ext import _extension, ops

# Relative error allowed between the fused ops and their references (norm-wise, per tensor).
TOL = {torch.float64: 1e-9, torch.float32: 2e-5}

requires_extension = pytest.mark.skipif(
    not ops.extension_available(), reason="the compiled maml_ext kernels are not loaded"
)


def cuda_usable() -> bool:
    """A CUDA device is present and the compiled extension has CUDA kernels."""
    return torch.cuda.is_available() and _extension.C is not None and bool(_extension.C.with_cuda)


def rel_err(actual: Tensor, expected: Tensor) -> float:
    """‖actual − expected‖ / ‖expected‖ (absolute when expected is zero)."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    diff = (actual - expected).norm().item()
    scale = expected.norm().item()
    return diff / scale if scale > 0 else diff


def assert_rel(actual, expected, tol: float = TOL[torch.float64], what: str = "value") -> None:
    """Equal shapes and relative error <= tol, tensor by tensor (lists and tuples recursively)."""
    if isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)), f"{what}: expected a sequence, got {type(actual)}"
        assert len(actual) == len(expected), f"{what}: {len(actual)} tensors, expected {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_rel(a, e, tol, f"{what}[{i}]")
        return
    assert actual is not None, f"{what}: got None"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    err = rel_err(actual, expected)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.0e}"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(g: torch.Generator, *shape: int, dtype=torch.float64, scale: float = 1.0) -> Tensor:
    return torch.randn(shape, generator=g, dtype=torch.float64).mul_(scale).to(dtype)


def mlp_params(
    g: torch.Generator,
    widths: Sequence[int],
    loss: str = "mse",
    tasks: int | None = None,
    dtype=torch.float64,
) -> list[Tensor]:
    """[W1, b1, ..., WL, bL(, log_std)], shared (tasks=None) or with a leading task dimension."""
    lead = () if tasks is None else (tasks,)
    params = []
    for d_in, d_out in zip(widths[:-1], widths[1:]):
        params.append(randn(g, *lead, d_out, d_in, dtype=dtype, scale=1.5 / math.sqrt(d_in)))
        params.append(randn(g, *lead, d_out, dtype=dtype, scale=0.3))
    if loss == "gaussian_nll":
        params.append(randn(g, *lead, widths[-1], dtype=dtype, scale=0.2) - 0.3)
    return params


def mlp_batch(
    g: torch.Generator, widths: Sequence[int], loss: str, tasks: int, k: int, dtype=torch.float64
) -> tuple[Tensor, Tensor]:
    """x [T, K, d0] and y: [T, K] int64 labels for cross_entropy, else [T, K, dL] targets."""
    x = randn(g, tasks, k, widths[0], dtype=dtype)
    if loss == "cross_entropy":
        return x, torch.randint(0, widths[-1], (tasks, k), generator=g)
    return x, randn(g, tasks, k, widths[-1], dtype=dtype)


def like(g: torch.Generator, tensors: Sequence[Tensor], scale: float = 1.0) -> list[Tensor]:
    """Random tensors shaped like ``tensors``."""
    return [randn(g, *t.shape, dtype=t.dtype, scale=scale) for t in tensors]


def leaves(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Fresh leaf copies that require grad."""
    return [t.detach().clone().requires_grad_() for t in tensors]


def dot(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(xs, ys))


def as_double(obj):
    """Tensors (alone or in nested lists/tuples) cast to float64; other values unchanged."""
    if isinstance(obj, torch.Tensor):
        return obj.double() if obj.is_floating_point() else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(as_double(o) for o in obj)
    return obj
