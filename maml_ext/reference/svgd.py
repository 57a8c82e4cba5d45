"""Stein variational gradient descent (Liu & Wang 2016) over particle sets stored as tensor lists:
the pure-PyTorch twin of ``maml_ext.ops.svgd_step`` (differentiable to any order).

Each parameter tensor holds every task's particles as ``[T, M, ...]``; a particle is the
concatenation of its slices of all tensors. The RBF kernel k(a, b) = exp(−‖a − b‖² / h) uses the
median heuristic h = med² / log M (med: the median distance between the M(M−1)/2 distinct
particle pairs of a task, the mean of the two middle ones for an even count), treated as a
constant (no gradient through the median). Kernel values and kernel gradients are exact and
differentiable, so a meta-gradient through an SVGD step is exact second order.
The squared distances come from norms and dot products here (‖a‖² + ‖b‖² − 2a·b) and from
summed squared differences in the compiled CPU kernel, so the two agree to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["check_svgd", "median_bandwidth", "pairwise_sq_dists", "rbf_kernel", "svgd_direction", "svgd_step"]

_TINY = 1e-12


def check_svgd(particles: Sequence[Tensor], others: Sequence[Tensor], name: str) -> None:
    """The checks of the compiled op (same argument names and exception types): ``particles`` are
    float32/float64 tensors [T, M, ...] with equal T, M, dtype and device, and ``others`` (called
    ``name``) match them tensor by tensor."""
    if not particles:
        raise ValueError("particles: expected at least one tensor [T, M, ...], got none")
    if len(others) != len(particles):
        raise ValueError(f"{name}: expected {len(particles)} tensors (one per particles tensor), got {len(others)}")
    first = particles[0]
    if first.dim() < 2 or first.shape[1] < 1:
        raise ValueError(f"particles[0]: expected [T, M, ...] with M >= 1, got shape {tuple(first.shape)}")
    if first.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"particles[0]: expected dtype float32 or float64, got {first.dtype}")
    for i, (p, o) in enumerate(zip(particles, others)):
        if p.dim() < 2 or p.shape[:2] != first.shape[:2]:
            raise ValueError(f"particles[{i}]: expected [T, M, ...] with T, M = {tuple(first.shape[:2])} "
                             f"like particles[0], got shape {tuple(p.shape)}")
        if o.shape != p.shape:
            raise ValueError(f"{name}[{i}]: expected shape {tuple(p.shape)} (that of particles[{i}]), got {tuple(o.shape)}")
        for label, t, like in ((f"particles[{i}]", p, first), (f"{name}[{i}]", o, p)):
            if t.dtype != like.dtype:
                raise TypeError(f"{label}: expected dtype {like.dtype}, got {t.dtype}")
            if t.device != like.device:
                raise RuntimeError(f"{label}: expected device {like.device}, got {t.device}")


def pairwise_sq_dists(particles: Sequence[Tensor]) -> Tensor:
    """Squared distances ``[T, M, M]`` between the particles, summed over all tensors.

    Uses ‖a‖² + ‖b‖² − 2a·b (no ``[T, M, M, D]`` difference tensor, which would not fit for
    conv nets); the diagonal is set to exactly 0 and rounding negatives are clamped."""
    total = particles[0].new_zeros(())
    for p in particles:
        flat = p.flatten(2)
        norms = flat.pow(2).sum(-1)
        sq = norms.unsqueeze(2) + norms.unsqueeze(1) - 2.0 * flat @ flat.transpose(1, 2)
        total = total + sq
    m = total.shape[-1]
    off_diagonal = 1.0 - torch.eye(m, dtype=total.dtype, device=total.device)
    return total.clamp_min(0.0) * off_diagonal


def median_bandwidth(sq_dists: Tensor) -> Tensor:
    """h = med² / log M per task ``[T]`` (1 for M = 1, where the kernel plays no role)."""
    tasks, m = sq_dists.shape[0], sq_dists.shape[-1]
    if m == 1:
        return sq_dists.new_ones(tasks)
    rows, cols = torch.triu_indices(m, m, 1, device=sq_dists.device)
    dists = sq_dists.detach()[:, rows, cols].sqrt()
    med = torch.quantile(dists, 0.5, dim=1)
    return (med.pow(2) / math.log(m)).clamp_min(_TINY)


def rbf_kernel(sq_dists: Tensor, bandwidth: Tensor) -> Tensor:
    """k_ij = exp(−d²_ij / h) ``[T, M, M]``."""
    return torch.exp(-sq_dists / bandwidth[:, None, None])


def svgd_direction(particles: Sequence[Tensor], log_p_grads: Sequence[Tensor]) -> list[Tensor]:
    """The SVGD direction φ per tensor ``[T, M, ...]``:

        φ(θ_m) = 1/M Σ_j [ k(θ_j, θ_m) ∇log p(θ_j) + ∇_{θ_j} k(θ_j, θ_m) ],
        ∇_{θ_j} k(θ_j, θ_m) = (2/h) (θ_m − θ_j) k_jm,

    so the particles move to θ + ε φ. ``log_p_grads`` are ∇log p per particle, shaped like
    ``particles``. With M = 1 this is exactly ∇log p (k = 1, no repulsion).
    """
    check_svgd(particles, log_p_grads, "log_p_grads")
    sq = pairwise_sq_dists(particles)
    h = median_bandwidth(sq)
    k = rbf_kernel(sq, h)
    m = k.shape[-1]
    row_sums = k.sum(2)  # Σ_j k_jm (k is symmetric)
    out = []
    for p, g in zip(particles, log_p_grads):
        flat, grad = p.flatten(2), g.flatten(2)
        drive = k @ grad
        repulse = (2.0 / h)[:, None, None] * (row_sums.unsqueeze(-1) * flat - k @ flat)
        out.append(((drive + repulse) / m).view_as(p))
    return out


def svgd_step(particles: Sequence[Tensor], scores: Sequence[Tensor], score_scale: float, step_size: float) -> list[Tensor]:
    """θ + ε φ per tensor with ∇log p = ``score_scale`` · ``scores`` (see ``maml_ext.ops.svgd_step``)."""
    check_svgd(particles, scores, "scores")
    for name, value in (("score_scale", score_scale), ("step_size", step_size)):
        if not math.isfinite(value):
            raise ValueError(f"{name}: expected a finite number, got {value}")
    phi = svgd_direction(particles, [score_scale * s for s in scores])
    return [p + step_size * f for p, f in zip(particles, phi)]
