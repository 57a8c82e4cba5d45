"""The meta-optimizer of the training loops."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

# Devices with torch's fused Adam kernel (a subset of what it supports; others use the default).
_FUSED_DEVICES = ("cpu", "cuda")


def adam(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Adam:
    """torch's Adam, fused (one kernel over every tensor) where torch has it: the default
    for-loop Adam costs ~3x the fused one per step, as much as a whole paper-config meta-gradient
    (see benchmarks/RESULTS.md, front-end overhead)."""
    params = list(params)
    fused = bool(params) and all(p.is_floating_point() and p.device.type in _FUSED_DEVICES for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused or None)
