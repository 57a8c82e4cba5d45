"""Input checks of the pure-PyTorch reference ops.

They mirror the checks of the C++ kernels (same argument names, same exception types: ValueError
for shapes and values, TypeError for dtypes, RuntimeError for devices), so both paths reject bad
input the same way, before any work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

ACTIVATIONS = ("relu", "tanh")
LOSSES = ("mse", "cross_entropy", "gaussian_nll")


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        names = [repr(c) for c in choices]
        expected = f"{', '.join(names[:-1])} or {names[-1]}"
        raise ValueError(f"{name}: expected {expected}, got {value!r}")


def check_same_device(name: str, t: Tensor, like: Tensor) -> None:
    if t.device != like.device:
        raise RuntimeError(f"{name}: expected device {like.device}, got {t.device}")


def check_same_dtype(name: str, t: Tensor, like: Tensor) -> None:
    if t.dtype != like.dtype:
        raise TypeError(f"{name}: expected dtype {like.dtype}, got {t.dtype}")


def check_lr_value(lr: float) -> None:
    """The scalar learning rate: finite, any sign (Meta-SGD's learned steps have no sign
    constraint). Tensor rates are checked for shape only: reading their values would synchronise
    with the device, and non-finite rates propagate like any other non-finite input."""
    if not math.isfinite(lr):
        raise ValueError(f"lr: expected a finite value, got {lr}")


def check_inner_update(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    lrs: Sequence[Tensor],
    lr: float,
    step: int | None,
    in_place: bool,
) -> None:
    if step is not None and step < 0:
        raise ValueError(f"step: expected None (no step dimension) or a step index >= 0, got {step}")
    if len(grads) != len(params):
        raise ValueError(f"grads: expected one gradient per parameter ({len(params)}), got {len(grads)}")
    if lrs and len(lrs) != len(params):
        raise ValueError(
            f"lrs: expected an empty list (use lr) or one learning rate per parameter "
            f"({len(params)}), got {len(lrs)}"
        )
    check_lr_value(lr)
    tasks = None
    for i, (p, g) in enumerate(zip(params, grads)):
        check_same_device(f"grads[{i}]", g, p)
        check_same_dtype(f"grads[{i}]", g, p)
        if not p.is_floating_point():
            raise TypeError(f"params[{i}]: expected a floating-point tensor, got {p.dtype}")
        same = g.shape == p.shape
        per_task = g.dim() == p.dim() + 1 and g.shape[1:] == p.shape
        if not (same or (per_task and not in_place)):
            alt = "" if in_place else " or [T, *that shape] for a shared parameter"
            raise ValueError(f"grads[{i}]: expected shape {list(p.shape)}{alt}, got {list(g.shape)}")
        if per_task:
            if tasks is not None and tasks != g.shape[0]:
                raise ValueError(f"grads[{i}]: expected T={tasks} tasks like the other gradients, got {g.shape[0]}")
            tasks = g.shape[0]
        if not lrs:
            continue
        a = lrs[i]
        check_same_device(f"lrs[{i}]", a, p)
        check_same_dtype(f"lrs[{i}]", a, p)
        if step is not None:
            if a.dim() < 1 or step >= a.shape[0]:
                raise ValueError(
                    f"lrs[{i}]: step {step} needs a leading step dimension longer than {step}, "
                    f"got shape {list(a.shape)}"
                )
            a = a[step]
        trailing = a.dim() <= p.dim() and tuple(p.shape[p.dim() - a.dim():]) == tuple(a.shape)
        if a.numel() != 1 and not trailing:
            raise ValueError(
                f"lrs[{i}]: expected a scalar or the parameter's shape {list(p.shape)}, got {list(a.shape)}"
            )


def mlp_widths(params: Sequence[Tensor], task_dim: bool, tasks: int, loss: str) -> list[int]:
    """Checks [W1, b1, ..., WL, bL, (log_std)] and returns the layer widths [d0, ..., dL]."""
    gaussian = loss == "gaussian_nll"
    n = len(params)
    if n < (3 if gaussian else 2) or (n - gaussian) % 2:
        tail = ", log_std]" if gaussian else "]"
        raise ValueError(f"params: expected [W1, b1, ..., WL, bL{tail}, got {n} tensors")
    ref = params[0]
    if ref.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"params[0]: expected float32 or float64, got {ref.dtype}")
    lead = 1 if task_dim else 0
    for i, p in enumerate(params):
        check_same_dtype(f"params[{i}]", p, ref)
        check_same_device(f"params[{i}]", p, ref)
        if task_dim and (p.dim() < 1 or p.shape[0] != tasks):
            raise ValueError(
                f"params[{i}]: expected a leading task dimension of size {tasks}, got shape {list(p.shape)}"
            )
    layers = (n - gaussian) // 2
    widths: list[int] = []
    for layer in range(layers):
        w, b = params[2 * layer], params[2 * layer + 1]
        if w.dim() != 2 + lead:
            want = "[T, out, in]" if task_dim else "[out, in]"
            raise ValueError(f"params[{2 * layer}] (W{layer + 1}): expected {want}, got shape {list(w.shape)}")
        if b.dim() != 1 + lead or b.shape[lead] != w.shape[lead]:
            raise ValueError(
                f"params[{2 * layer + 1}] (b{layer + 1}): expected {'[T, ' if task_dim else '['}{w.shape[lead]}], "
                f"got shape {list(b.shape)}"
            )
        if layer == 0:
            widths.append(w.shape[lead + 1])
        elif w.shape[lead + 1] != widths[-1]:
            raise ValueError(
                f"params[{2 * layer}] (W{layer + 1}): expected {widths[-1]} input features to match "
                f"W{layer}, got shape {list(w.shape)}"
            )
        widths.append(w.shape[lead])
        if widths[-1] == 0 or widths[-2] == 0:
            raise ValueError(
                f"params[{2 * layer}] (W{layer + 1}): expected at least one input and one output "
                f"feature, got shape {list(w.shape)}"
            )
    if gaussian:
        s = params[-1]
        if s.dim() != 1 + lead or s.shape[lead] != widths[-1]:
            raise ValueError(
                f"params[{n - 1}] (log_std): expected {'[T, ' if task_dim else '['}{widths[-1]}], got shape {list(s.shape)}"
            )
    return widths


def check_batch(
    what: str,
    widths: Sequence[int],
    loss: str,
    x: Tensor,
    y: Tensor,
    weight: Tensor | None,
    tasks: int,
    like: Tensor,
) -> None:
    if x.device != like.device or y.device != like.device:
        raise RuntimeError(f"{what}: expected tensors on {like.device} like the parameters")
    check_same_dtype(f"{what} x", x, like)
    if x.dim() != 3 or x.shape[0] != tasks or x.shape[2] != widths[0]:
        raise ValueError(f"{what} x: expected [T={tasks}, K, {widths[0]}], got shape {list(x.shape)}")
    if tasks < 1:
        raise ValueError(f"{what} x: expected at least one task, got shape {list(x.shape)}")
    k = x.shape[1]
    if k < 1:
        raise ValueError(f"{what} x: expected at least one example per task, got shape {list(x.shape)}")
    if loss == "cross_entropy":
        if y.dtype != torch.int64:
            raise TypeError(f"{what} y: expected int64 class labels, got {y.dtype}")
        if y.dim() != 2 or y.shape[0] != tasks or y.shape[1] != k:
            raise ValueError(f"{what} y: expected [T={tasks}, K={k}], got shape {list(y.shape)}")
    else:
        check_same_dtype(f"{what} y", y, like)
        if y.dim() != 3 or y.shape[0] != tasks or y.shape[1] != k or y.shape[2] != widths[-1]:
            raise ValueError(
                f"{what} y: expected [T={tasks}, K={k}, {widths[-1]}], got shape {list(y.shape)}"
            )
    if weight is not None:
        check_same_device(f"{what} weight", weight, like)
        check_same_dtype(f"{what} weight", weight, like)
        if weight.dim() != 2 or weight.shape[0] != tasks or weight.shape[1] != k:
            raise ValueError(f"{what} weight: expected [T={tasks}, K={k}], got shape {list(weight.shape)}")


def check_labels(what: str, widths: Sequence[int], loss: str, y: Tensor) -> None:
    """Class labels within [0, classes): a value check, so not made on meta / fake tensors (the
    fake kernels check metadata only)."""
    if loss != "cross_entropy" or not y.numel():
        return
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= widths[-1]:
        raise ValueError(f"{what} y: class labels must lie in [0, {widths[-1]}), got values in [{lo}, {hi}]")


def check_hvp(
    params: Sequence[Tensor],
    x: Tensor,
    y: Tensor,
    direction: Sequence[Tensor],
    weight: Tensor | None,
    activation: str,
    loss: str,
    values: bool = True,
) -> list[int]:
    """Every input of mlp_hvp, in the compiled op's order; returns the layer widths.
    ``values=False`` (fake kernels) skips the one check that reads tensor values (labels)."""
    check_choice("activation", activation, ACTIVATIONS)
    check_choice("loss", loss, LOSSES)
    if x.dim() != 3:
        raise ValueError(f"x: expected [T, K, in], got shape {list(x.shape)}")
    tasks = x.shape[0]
    widths = mlp_widths(params, True, tasks, loss)
    check_batch("support", widths, loss, x, y, weight, tasks, params[0])
    if values:
        check_labels("support", widths, loss, y)
    if direction and len(direction) != len(params):
        raise ValueError(f"direction: expected {len(params)} tensors like params (or none), got {len(direction)}")
    for i, (v, p) in enumerate(zip(direction, params)):
        if v.shape != p.shape:
            raise ValueError(f"direction[{i}]: expected shape {list(p.shape)}, got {list(v.shape)}")
        check_same_dtype(f"direction[{i}]", v, p)
        check_same_device(f"direction[{i}]", v, p)
    return widths


def check_maml(
    params: Sequence[Tensor],
    lrs: Sequence[Tensor],
    lr: float,
    per_step: bool,
    support: tuple[Tensor, Tensor, Tensor | None],
    query: tuple[Tensor, Tensor, Tensor | None] | None,
    steps: int,
    activation: str,
    loss: str,
    checkpoint_every: int,
    values: bool = True,
) -> list[int]:
    """Every input of mlp_maml / mlp_maml_grad (query) and mlp_maml_backward (no query), in the
    compiled ops' order; returns the layer widths. ``values=False``: no label value check."""
    check_choice("activation", activation, ACTIVATIONS)
    check_choice("loss", loss, LOSSES)
    if steps < 1:
        raise ValueError(f"steps: expected >= 1, got {steps}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every: expected >= 1, got {checkpoint_every}")
    xs = support[0]
    if xs.dim() != 3:
        raise ValueError(f"x_support: expected [T, K, in], got shape {list(xs.shape)}")
    tasks = xs.shape[0]
    widths = mlp_widths(params, False, tasks, loss)
    for what, batch in (("support", support), ("query", query)):
        if batch is None:
            continue
        check_batch(what, widths, loss, *batch, tasks, params[0])
        if values:
            check_labels(what, widths, loss, batch[1])
    check_lrs_for_params(lrs, params, per_step, steps)
    check_lr_value(lr)
    return widths


def check_backward(
    grad_loss: Tensor,
    grad_adapted: Sequence[Tensor],
    params: Sequence[Tensor],
    checkpoints: Tensor,
    query_grad: Tensor,
    tasks: int,
    steps: int,
    every: int,
) -> None:
    """The incoming gradients and saved tensors of mlp_maml_backward (fake kernel; the compiled op
    checks the same in check_backward of csrc/mlp/mlp_common.cpp)."""
    like = params[0]
    numel = sum(p.numel() for p in params)
    n = (steps - 1) // every if steps > 1 else 0
    check_same_device("grad_loss", grad_loss, like)
    check_same_dtype("grad_loss", grad_loss, like)
    if tuple(grad_loss.shape) != (tasks,):
        raise ValueError(f"grad_loss: expected [T={tasks}], got shape {list(grad_loss.shape)}")
    if grad_adapted and len(grad_adapted) != len(params):
        raise ValueError(f"grad_adapted: expected none or one tensor per parameter ({len(params)}), got {len(grad_adapted)}")
    for i, (g, p) in enumerate(zip(grad_adapted, params)):
        check_same_device(f"grad_adapted[{i}]", g, like)
        check_same_dtype(f"grad_adapted[{i}]", g, like)
        if tuple(g.shape) != (tasks, *p.shape):
            raise ValueError(f"grad_adapted[{i}]: expected [T={tasks}, *{list(p.shape)}], got shape {list(g.shape)}")
    check_same_device("query_grad", query_grad, like)
    check_same_dtype("query_grad", query_grad, like)
    if tuple(query_grad.shape) != (tasks, numel):
        raise ValueError(f"query_grad: expected [{tasks}, {numel}] saved by mlp_maml, got shape {list(query_grad.shape)}")
    check_same_device("checkpoints", checkpoints, like)
    check_same_dtype("checkpoints", checkpoints, like)
    if tuple(checkpoints.shape) != (n, tasks, numel):
        raise ValueError(
            f"checkpoints: expected [{n}, {tasks}, {numel}] saved by mlp_maml with the same steps and "
            f"checkpoint_every, got shape {list(checkpoints.shape)}"
        )


def loss_weight(weight: Tensor | None, like: Tensor, tasks: int) -> Tensor:
    """The per-task weights of the query losses: the given [T] tensor, or 1/T (the mean)."""
    if weight is None:
        return like.new_full((tasks,), 1.0 / max(tasks, 1))
    check_same_device("loss_weight", weight, like)
    check_same_dtype("loss_weight", weight, like)
    if weight.dim() != 1 or weight.shape[0] != tasks:
        raise ValueError(f"loss_weight: expected [T={tasks}], got shape {list(weight.shape)}")
    return weight


def check_lrs_for_params(
    lrs: Sequence[Tensor], params: Sequence[Tensor], per_step: bool, steps: int
) -> None:
    if lrs and len(lrs) != len(params):
        raise ValueError(
            f"lrs: expected one learning rate per parameter ({len(params)}), got {len(lrs)}"
        )
    for i, (a, p) in enumerate(zip(lrs, params)):
        check_same_device(f"lrs[{i}]", a, p)
        check_same_dtype(f"lrs[{i}]", a, p)
        if per_step and (a.dim() < 1 or a.shape[0] != steps):
            raise ValueError(
                f"lrs[{i}]: per-step learning rates need a leading dimension of size steps={steps}, "
                f"got shape {list(a.shape)}"
            )
        rest = a[0] if per_step else a
        if rest.numel() != 1 and rest.shape != p.shape:
            after = " after the step dimension" if per_step else ""
            raise ValueError(
                f"lrs[{i}]: expected a scalar or the shape {list(p.shape)} of its parameter{after}, "
                f"got shape {list(a.shape)}"
            )
