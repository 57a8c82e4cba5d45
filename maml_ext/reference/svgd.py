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

from ._checks import check_svgd, check_svgd_scalars

__all__ = ["median_bandwidth", "pairwise_sq_dists", "rbf_kernel", "svgd_direction", "svgd_step"]

_TINY = 1e-12


def pairwise_sq_dists(particles: Sequence[Tensor]) -> Tensor:
    """Squared distances ``[T, M, M]`` between the particles, summed over all tensors.

    Uses ‖a‖² + ‖b‖² − 2a·b (no ``[T, M, M, D]`` difference tensor, which would not fit for
    conv nets); the diagonal is set to exactly 0 and rounding negatives are clamped."""
    total = particles[0].new_zeros(())
    for p in particles:
        flat = _per_particle(p)
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
        flat, grad = _per_particle(p), _per_particle(g)
        drive = k @ grad
        repulse = (2.0 / h)[:, None, None] * (row_sums.unsqueeze(-1) * flat - k @ flat)
        out.append(((drive + repulse) / m).view_as(p))
    return out


def svgd_step(particles: Sequence[Tensor], scores: Sequence[Tensor], score_scale: float, step_size: float) -> list[Tensor]:
    """θ + ε φ per tensor with ∇log p = ``score_scale`` · ``scores`` (see ``maml_ext.ops.svgd_step``)."""
    check_svgd_scalars(score_scale, step_size)
    check_svgd(particles, scores, "scores")
    phi = svgd_direction(particles, [score_scale * s for s in scores])
    return [p + step_size * f for p, f in zip(particles, phi)]


def _per_particle(t: Tensor) -> Tensor:
    """``[T, M, ...]`` as ``[T, M, numel per particle]`` (a ``[T, M]`` tensor: one entry each)."""
    return t.reshape(t.shape[0], t.shape[1], -1)
