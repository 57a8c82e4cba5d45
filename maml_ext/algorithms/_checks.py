"""Argument checks of the learners' front end (issue 12, defect 4): one rule per argument, a
ValueError naming it, raised before any work. Value checks live here, not in the ops, because the
ops never read tensor values on the host (that would synchronise with the device)."""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

from torch import Tensor, nn


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
    xs, ys = x.shape, y.shape  # each .shape builds a new torch.Size
    if tasks is None:
        tasks = xs[0] if xs else 0
    if len(xs) < 2 or xs[0] != tasks:
        raise _not_examples("x", which, tasks, x)
    if tasks == 0:
        raise ValueError(f"x_{which}: expected at least one task (T >= 1), got shape {tuple(xs)}")
    if xs[1] == 0:
        raise ValueError(f"x_{which}: expected at least one example per task (K >= 1), got shape {tuple(xs)}")
    if len(ys) < 2 or ys[0] != tasks or ys[1] != xs[1]:
        raise _not_examples("y", which, tasks, y)


def _not_examples(xy: str, which: str, tasks: int, t: Tensor) -> ValueError:
    return ValueError(f"{xy}_{which}: expected [T={tasks}, K, ...] with the K of x_{which}, got shape {tuple(t.shape)}")


class FirstLayer(NamedTuple):
    """What a model's first layer reads of each example, where that is knowable (see
    :func:`first_layer`): the rule behind "x must be ``[T, K, ...]``" for this model."""

    layer: str  # for messages, e.g. "nn.Linear(in_features=1)"
    rank: int  # the per-example dims it reads: 1 for Linear ([..., in]), 1 + n for ConvNd ([C, *n spatial])
    exact: bool  # ConvNd: exactly rank dims (one fewer is read as one unbatched example); Linear: at least
    size: int  # Linear: in_features (the last dim); ConvNd: in_channels (the first per-example dim)


_CONVS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}


def first_layer(model: nn.Module) -> FirstLayer | None:
    """The first layer's rule for a model whose first layer is known: an ``nn.Sequential`` (or a
    subclass keeping its forward, as maml_ext's MLP; or ``torch.compile`` of one) whose first
    module is, through nested Sequentials, exactly an ``nn.Linear`` or ``nn.ConvNd``. None for any
    other model: its forward may read its input in any way, so only the ``[T, K, ...]`` rule of
    :func:`check_examples` applies. A model may declare its rule: a method ``input_rule()``
    returning a :class:`FirstLayer` (maml_ext's Conv4 does; the rule then holds for any module)."""
    declared = getattr(model, "input_rule", None)
    if callable(declared):
        return declared()
    module = getattr(model, "_orig_mod", model) if type(model).__name__ == "OptimizedModule" else model
    while isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward and len(module):
        module = module[0]
    if type(module) is nn.Linear:
        return FirstLayer(f"nn.Linear(in_features={module.in_features})", 1, False, module.in_features)
    if type(module) in _CONVS:
        n = _CONVS[type(module)]
        return FirstLayer(f"nn.Conv{n}d(in_channels={module.in_channels})", 1 + n, True, module.in_channels)
    return None


def check_inputs(x: Tensor, name: str, rule: FirstLayer | None) -> None:
    """``x [T, K, ...]`` as the model's first layer reads it (``rule``; None: nothing known)."""
    if rule is None:
        return
    shape = x.shape
    dims = len(shape) - 2
    if rule.exact:
        ok = dims == rule.rank and shape[2] == rule.size
    else:
        ok = dims >= rule.rank and shape[-1] == rule.size
    if not ok:  # the message is built only here: this runs on every meta_loss
        expected = f"[T, K, {rule.size}, {_SPATIAL[rule.rank - 1]}]" if rule.exact else f"[T, K, {rule.size}]"
        hint = " (no task dimension? stack the tasks' examples as [T, K, ...])" if dims < rule.rank else ""
        raise ValueError(f"{name}: expected {expected} (tasks, examples per task, then what the model's first "
                         f"layer {rule.layer} reads of one example), got shape {tuple(x.shape)}{hint}")


def check_alike(name: str, t: Tensor, like: str, other: Tensor) -> None:
    """Query and support examples of one shape: ``t [T, K', *e]`` against ``other [T, K, *e]``."""
    if t.shape[2:] != other.shape[2:]:
        raise ValueError(f"{name}: expected [T, K{''.join(f', {d}' for d in other.shape[2:])}] with the per-example "
                         f"shape of {like} {tuple(other.shape)}, got shape {tuple(t.shape)}")
