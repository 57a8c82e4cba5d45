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


def check_examples(x: Tensor, y: Tensor, which: str = "support", tasks: int | None = None) -> None:
    """The one shape rule of a learner's example sets, for ``adapt`` and ``meta_loss`` alike:
    ``x_<which>`` and ``y_<which>`` are ``[T, K, ...]`` with the T of the support set (``tasks``;
    default: x's own), at least one task and K >= 1 examples, the K of ``x_<which>``. On the
    fused path's every call: no string is built unless a check fails."""
    if tasks is None:
        tasks = x.shape[0] if x.dim() else 0
    if x.dim() < 2 or x.shape[0] != tasks:
        raise _not_examples("x", which, tasks, x)
    if tasks == 0:
        raise ValueError(f"x_{which}: expected at least one task (T >= 1), got shape {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"x_{which}: expected at least one example per task (K >= 1), got shape {tuple(x.shape)}")
    if y.dim() < 2 or y.shape[0] != tasks or y.shape[1] != x.shape[1]:
        raise _not_examples("y", which, tasks, y)


def _not_examples(xy: str, which: str, tasks: int, t: Tensor) -> ValueError:
    return ValueError(f"{xy}_{which}: expected [T={tasks}, K, ...] with the K of x_{which}, got shape {tuple(t.shape)}")
