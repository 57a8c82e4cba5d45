"""Fully connected network (the paper's sinusoid model is ``hidden=(40, 40)``, ReLU)."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence

from torch import nn

from . import FusedMLPSpec

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class MLP(nn.Sequential):
    """Linear layers with one activation in between; declares support for the fused MLP op."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (40, 40),
        activation: str = "relu",
        init: str = "torch",
    ) -> None:
        # A string is a sequence too: hidden="40" must not become layers of widths 4 and 0.
        widths_ok = not isinstance(hidden, str) and isinstance(hidden, Iterable) and all(
            isinstance(h, numbers.Integral) and not isinstance(h, bool) and h >= 1 for h in hidden)
        if not widths_ok:
            raise ValueError(f"hidden must be a list of layer widths (integers >= 1), got {hidden!r}")
        hidden = tuple(int(h) for h in hidden)
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        widths = [in_features, *hidden, out_features]
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
            if i:
                layers.append(_ACTIVATIONS[activation]())
            layers.append(nn.Linear(n_in, n_out))
        super().__init__(*layers)
        self.activation = activation
        if init == "trunc_normal":
            # The official sinusoid code: weights ~ truncated normal (std 0.01), zero biases.
            for layer in self.linears():
                nn.init.trunc_normal_(layer.weight, std=0.01, a=-0.02, b=0.02)
                nn.init.zeros_(layer.bias)
        elif init != "torch":
            raise ValueError(f"init must be 'torch' or 'trunc_normal', got {init!r}")

    def linears(self) -> list[nn.Linear]:
        return [m for m in self if isinstance(m, nn.Linear)]

    def fused_mlp_spec(self) -> FusedMLPSpec:
        return FusedMLPSpec(self.activation, tuple(name for name, _ in self.named_parameters()))


def build(
    in_features: int,
    out_features: int,
    hidden: Sequence[int] = (40, 40),
    activation: str = "relu",
    init: str = "torch",
) -> MLP:
    """Entry point ``maml_ext.models: mlp``."""
    return MLP(in_features, out_features, hidden, activation, init)
