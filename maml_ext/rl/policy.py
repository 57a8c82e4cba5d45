"""Gaussian MLP policy (the paper's: 2 × 100 ReLU, learned state-independent log-std).

Its parameters are laid out as the fused ops expect for ``loss="gaussian_nll"``:
``[W1, b1, ..., WL, bL, log_std]`` (``nn.Linear`` layout). The functions below take that list,
either shared (``W [out, in]``) or per task (``W [T, out, in]``), so the same code acts for the
initialisation and for T adapted policies at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from maml_ext.models import FusedMLPSpec
from maml_ext.reference import mlp_forward

Params = Sequence[Tensor]
LOSS = "gaussian_nll"  # the fused ops' name for the (weighted) Gaussian negative log-likelihood


class GaussianMLPPolicy(nn.Module):
    """Mean = MLP(obs); std = exp(log_std), one learned value per action dimension."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (100, 100),
        activation: str = "relu",
        init_std: float = 1.0,
    ) -> None:
        super().__init__()
        if activation not in ("relu", "tanh"):
            raise ValueError(f"activation must be 'relu' or 'tanh', got {activation!r}")
        if not init_std > 0:
            raise ValueError(f"init_std must be > 0, got {init_std!r}")
        widths = [obs_dim, *hidden, act_dim]
        if any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"obs_dim, hidden and act_dim must be positive integers, got {widths}")
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        for layer in self.layers:  # rllab's init: Glorot-uniform weights, zero biases
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))
        self.activation = activation

    def params(self) -> list[Tensor]:
        """The parameters in the fused ops' order ``[W1, b1, ..., WL, bL, log_std]``."""
        return [p for layer in self.layers for p in (layer.weight, layer.bias)] + [self.log_std]

    def fused_mlp_spec(self) -> FusedMLPSpec:
        names = [f"layers.{i}.{k}" for i in range(len(self.layers)) for k in ("weight", "bias")]
        return FusedMLPSpec(self.activation, (*names, "log_std"))

    def forward(self, obs: Tensor) -> Tensor:
        """The action mean for ``obs [..., obs_dim]``."""
        lead = obs.shape[:-1]
        return mean(self.params(), obs.reshape(1, -1, obs.shape[-1]), self.activation).reshape(*lead, -1)


def mean(params: Params, obs: Tensor, activation: str = "relu") -> Tensor:
    """Action means ``[T, K, act]`` for ``obs [T, K, obs_dim]`` (params shared or per task)."""
    return mlp_forward(params, obs, activation, LOSS)


def _expand_log_std(params: Params) -> Tensor:
    """log_std broadcastable against [T, K, act] (per-task [T, act] gains the K dimension)."""
    ls = params[-1]
    return ls.unsqueeze(-2) if ls.dim() == 2 else ls


def log_prob(params: Params, obs: Tensor, actions: Tensor, activation: str = "relu") -> Tensor:
    """log π(a | s) ``[T, K]`` summed over action dimensions."""
    mu = mean(params, obs, activation)
    ls = _expand_log_std(params)
    z = (actions - mu) * torch.exp(-ls)
    return (-0.5 * z.pow(2) - ls - 0.5 * math.log(2 * math.pi)).sum(-1)


def kl(old_mean: Tensor, old_log_std: Tensor, new_mean: Tensor, new_log_std: Tensor) -> Tensor:
    """KL(old || new) of diagonal Gaussians per sample ``[T, K]`` (log-stds [T, act] or [act])."""
    if old_log_std.dim() == 2:
        old_log_std = old_log_std.unsqueeze(-2)
    if new_log_std.dim() == 2:
        new_log_std = new_log_std.unsqueeze(-2)
    var_ratio = torch.exp(2 * (old_log_std - new_log_std))
    diff = (old_mean - new_mean) * torch.exp(-new_log_std)
    return (0.5 * (var_ratio + diff.pow(2) - 1) + new_log_std - old_log_std).sum(-1)


def build(
    in_features: int,
    out_features: int,
    hidden: Sequence[int] = (100, 100),
    activation: str = "relu",
    init_std: float = 1.0,
    dtype: str = "float32",
) -> GaussianMLPPolicy:
    """Entry point ``maml_ext.models: gaussian_mlp`` (in = observation size, out = action size;
    ``dtype="float64"`` runs the policy, its rollouts and the meta-update in double precision)."""
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    policy = GaussianMLPPolicy(int(in_features), int(out_features), tuple(int(h) for h in hidden),
                               activation, float(init_std))
    return policy.double() if dtype == "float64" else policy
