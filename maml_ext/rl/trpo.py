"""TRPO's step on a flat parameter vector: conjugate gradient on the KL Hessian, then a
backtracking line search under the KL bound (rllab's ``ConjugateGradientOptimizer`` constants)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from maml_ext.train import progress


def conjugate_gradient(hvp: Callable[[Tensor], Tensor], b: Tensor, iterations: int = 10,
                       residual_tol: float = 1e-10) -> tuple[Tensor, Tensor]:
    """Approximately solve H x = b with ``iterations`` CG steps (rllab's ``cg``); returns x and
    H x. x = Σ α_i p_i, so H x = Σ α_i H p_i accumulates from the products CG computes anyway:
    TRPO's step size needs xᵀH x, and this saves the extra product rllab spends on it."""
    x, hx = torch.zeros_like(b), torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r.dot(r)
    for i in range(iterations):
        # Each iteration is a Hessian-vector product through the whole meta-batch: seconds at the
        # paper's size, so it is shown on the running progress bar (a no-op when none is open).
        progress.detail("TRPO: conjugate gradient iteration", i + 1, iterations)
        hp = hvp(p)
        alpha = rr / p.dot(hp)
        x += alpha * p
        hx += alpha * hp
        r -= alpha * hp
        rr_new = r.dot(r)
        if rr_new < residual_tol:
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, hx


@dataclass
class TRPOResult:
    accepted: bool
    backtracks: int  # how many shrinks before the accepted step (the count tried when rejected)
    loss_before: float
    loss_after: float
    kl: float  # KL of the accepted step (of the last candidate when rejected)


def step(
    theta: Tensor,
    grad: Tensor,
    hvp: Callable[[Tensor], Tensor],
    evaluate: Callable[[Tensor], tuple[float, float]],
    *,
    max_kl: float = 0.01,
    cg_iters: int = 10,
    damping: float = 1e-5,
    backtrack_ratio: float = 0.8,
    max_backtracks: int = 15,
) -> tuple[Tensor, TRPOResult]:
    """One TRPO update of the flat parameters ``theta`` for the loss whose gradient is ``grad``.

    ``hvp(v)`` is the KL Hessian times v (damping is added here); ``evaluate(theta)`` returns the
    (surrogate loss, mean KL to the current policy) at candidate parameters. The step
    ``s = H⁻¹g`` is scaled to the KL bound, sqrt(2·max_kl / sᵀHs), and shrunk by
    ``backtrack_ratio`` until the loss decreases and the KL is within ``max_kl``; if no candidate
    qualifies, ``theta`` is returned unchanged (rllab rejects the step the same way).
    """
    if not max_kl > 0:
        raise ValueError(f"max_kl must be > 0, got {max_kl!r}")
    if not 0 < backtrack_ratio < 1:
        raise ValueError(f"backtrack_ratio must be in (0, 1), got {backtrack_ratio!r}")
    if cg_iters < 1 or max_backtracks < 1:
        raise ValueError(f"cg_iters and max_backtracks must be >= 1, got {cg_iters}, {max_backtracks}")
    damped = lambda v: hvp(v) + damping * v  # noqa: E731
    direction, h_direction = conjugate_gradient(damped, grad, cg_iters)
    shs = direction.dot(h_direction).item()
    full_step = math.sqrt(2.0 * max_kl / (shs + 1e-8)) * direction
    progress.detail("TRPO: line search candidate", 0, max_backtracks)  # the loss at theta first
    loss_before, _ = evaluate(theta)
    loss, kl = float("nan"), float("nan")
    for k in range(max_backtracks):
        progress.detail("TRPO: line search candidate", k + 1, max_backtracks)
        candidate = theta - backtrack_ratio**k * full_step
        loss, kl = evaluate(candidate)
        if math.isfinite(loss) and math.isfinite(kl) and loss < loss_before and kl <= max_kl:
            return candidate, TRPOResult(True, k, loss_before, loss, kl)
    return theta, TRPOResult(False, max_backtracks, loss_before, loss, kl)
