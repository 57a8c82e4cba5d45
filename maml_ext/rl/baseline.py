"""Returns, the linear feature baseline (rllab's ``LinearFeatureBaseline``) and GAE, batched
over tasks and rollouts with the padding masked out."""

from __future__ import annotations

import torch
from torch import Tensor


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """G_h = Σ_k γ^k r_{h+k} within each episode, ``[..., H]``."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for h in range(rewards.shape[-1] - 1, -1, -1):
        running = (rewards[..., h] + gamma * running) * mask[..., h]
        out[..., h] = running
    return out


def features(obs: Tensor, mask: Tensor) -> Tensor:
    """rllab's features ``[o, o², t, t², t³, 1]`` (o clipped to ±10, t = step / 100), zero on
    padding: ``[T, R, H, 2·obs_dim + 4]``."""
    o = obs.clamp(-10.0, 10.0)
    t = (torch.arange(obs.shape[-2], dtype=obs.dtype) / 100.0).view(-1, 1).expand(*obs.shape[:-1], 1)
    feats = torch.cat([o, o * o, t, t * t, t * t * t, torch.ones_like(t)], dim=-1)
    return feats * mask.unsqueeze(-1)


def fit_linear_baseline(obs: Tensor, returns: Tensor, mask: Tensor, reg: float = 1e-5) -> Tensor:
    """Fit one linear baseline per task on its own rollouts and return its values ``[T, R, H]``.

    Ridge least squares (FᵀF + reg·I) c = Fᵀ G in float64, with rllab's fallback of a 10× larger
    regulariser (up to 5 tries) when the solve fails or gives NaN. Solved by Cholesky (the matrix
    is symmetric positive definite): LAPACK's least-squares driver (``lstsq``) gave results that
    differed in the last bit with the memory alignment of its buffers, so two identical runs (or a
    run and its ``--resume``) drifted apart.
    """
    t = obs.shape[0]
    f = features(obs, mask).reshape(t, -1, 2 * obs.shape[-1] + 4).double()
    g = (returns * mask).reshape(t, -1, 1).double()
    gram, rhs = f.transpose(1, 2) @ f, f.transpose(1, 2) @ g
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype)
    for _ in range(5):
        factor, info = torch.linalg.cholesky_ex(gram + reg * eye)
        coeffs = torch.cholesky_solve(rhs, factor)
        if not info.any() and not torch.isnan(coeffs).any():
            break
        reg *= 10
    return (f @ coeffs).reshape(returns.shape).to(returns.dtype) * mask


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalised advantage estimates ``[..., H]`` (λ = 1: discounted return minus baseline)."""
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    next_value = torch.zeros_like(rewards[..., 0])
    for h in range(rewards.shape[-1] - 1, -1, -1):
        delta = rewards[..., h] + gamma * next_value - values[..., h]
        running = (delta + gamma * lam * running) * mask[..., h]
        adv[..., h] = running
        next_value = values[..., h] * mask[..., h]
    return adv


def center(advantages: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """Per task: zero mean and unit standard deviation over its valid steps (rllab's
    ``center_adv``, applied per task as maml_rl processes each task's samples alone)."""
    dims = tuple(range(1, advantages.dim()))
    n = mask.sum(dims, keepdim=True).clamp_min(1.0)
    mu = (advantages * mask).sum(dims, keepdim=True) / n
    var = ((advantages - mu).pow(2) * mask).sum(dims, keepdim=True) / n
    return (advantages - mu) / (var.sqrt() + eps) * mask
