"""Example model plugin: an MLP with a sine-feature input layer (x -> [x, sin x, cos x])."""

from __future__ import annotations

import torch
from torch import nn


class SineNet(nn.Module):
    def __init__(self, in_features: int, out_features: int, hidden: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3 * in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(torch.cat([x, torch.sin(x), torch.cos(x)], dim=-1)))


def build(in_features: int, out_features: int, hidden: int = 32) -> SineNet:
    """Called by maml_ext with the task family's input/output sizes and the [model] options."""
    return SineNet(in_features, out_features, hidden)
