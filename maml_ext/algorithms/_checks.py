"""Argument checks of the learners' front end (issue 12, defect 4): one rule per argument, a
ValueError naming it, raised before any work. Value checks live here, not in the ops, because the
ops never read tensor values on the host (that would synchronise with the device)."""

from __future__ import annotations

import math
import numbers

from torch import Tensor


def check_lr(lr: object, name: str = "lr") -> float:
    """A real, finite, positive step size (a fixed α; learned α may later take any sign)."""
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        raise ValueError(f"{name} must be > 0 and finite, got {lr!r} ({type(lr).__name__})")
    value = float(lr)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be > 0 and finite, got {value}")
    return value


def check_steps(steps: object, name: str = "steps", minimum: int = 1) -> int:
    """A whole number of inner steps, at least ``minimum`` (no silent truncation of 1.7)."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise ValueError(f"{name} must be an int >= {minimum}, got {steps!r} ({type(steps).__name__})")
    if steps < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {steps}")
    return int(steps)


def check_support(x: Tensor, y: Tensor) -> None:
    """A support batch [T, K, ...] with at least one task and one example per task."""
    if x.dim() < 2:
        raise ValueError(f"x_support must be [T, K, ...], got shape {tuple(x.shape)}")
    tasks, k = x.shape[0], x.shape[1]
    if tasks == 0:
        raise ValueError(f"x_support must hold at least one task, got shape {tuple(x.shape)}")
    if k == 0:
        raise ValueError(f"x_support must hold at least one example per task (K >= 1), got shape {tuple(x.shape)}")
    if y.shape[:2] != x.shape[:2]:
        raise ValueError(f"y_support must start with [T={tasks}, K={k}] like x_support, got shape {tuple(y.shape)}")
