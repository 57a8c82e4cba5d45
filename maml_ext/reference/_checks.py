"""Input checks of every op: the one source of their rules and messages.

The reference ops and the fake (meta) kernels run these functions as they are; at build time
``csrc/gen_checks.py`` compiles the ``@compiled`` ones into C++ (``maml_ext::checks``, with the
``@inline`` helpers expanded at each call site), which the compiled ops call before any work. A
rule or a message is therefore written once, here, and both paths reject bad input alike: the
same argument names and exception types (ValueError for shapes and values, TypeError for dtypes,
RuntimeError for devices). Keep to the subset the generator documents; undecorated functions are
Python-only (value checks and helpers evaluated when the header is generated).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import Tensor

F = TypeVar("F", bound=Callable[..., object])

ACTIVATIONS = ("relu", "tanh")
LOSSES = ("mse", "cross_entropy", "gaussian_nll")
FLOATS = (torch.float32, torch.float64)


def compiled(fn: F) -> F:
    """Also a C++ function of the generated header (no cost here: returns ``fn``)."""
    return fn


def inline(fn: F) -> F:
    """Expanded at each call site in the generated C++ (its messages are built only on failure)."""
    return fn


def alternatives(choices: Sequence[str]) -> str:
    names = [repr(c) for c in choices]
    return f"{', '.join(names[:-1])} or {names[-1]}"


@inline
def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected {alternatives(choices)}, got {value!r}")


@inline
def check_same_device(name: str, t: Tensor, like: Tensor) -> None:
    if t.device != like.device:
        raise RuntimeError(f"{name}: expected device {like.device}, got {t.device}")


@inline
def check_same_dtype(name: str, t: Tensor, like: Tensor) -> None:
    if t.dtype != like.dtype:
        raise TypeError(f"{name}: expected dtype {like.dtype}, got {t.dtype}")


@inline
def check_lr_value(lr: float) -> None:
    """The scalar learning rate: finite, any sign (Meta-SGD's learned steps have no sign
    constraint). Tensor rates are checked for shape only: reading their values would synchronise
    with the device, and non-finite rates propagate like any other non-finite input."""
    if not math.isfinite(lr):
        raise ValueError(f"lr: expected a finite value, got {lr}")


@compiled
def check_inner_update(
    params: Sequence[Tensor], grads: Sequence[Tensor], lrs: Sequence[Tensor], lr: float, step: int | None,
    in_place: bool,
) -> None:
    """Every input of inner_update / inner_update_."""
    if step is not None and step < 0:
        raise ValueError(f"step: expected None (no step dimension) or a step index >= 0, got {step}")
    if len(grads) != len(params):
        raise ValueError(f"grads: expected one gradient per parameter ({len(params)}), got {len(grads)}")
    if len(lrs) != 0 and len(lrs) != len(params):
        raise ValueError(
            f"lrs: expected an empty list (use lr) or one learning rate per parameter "
            f"({len(params)}), got {len(lrs)}"
        )
    check_lr_value(lr)
    tasks = -1
    for i in range(len(params)):
        p = params[i]
        g = grads[i]
        check_same_device(f"grads[{i}]", g, p)
        check_same_dtype(f"grads[{i}]", g, p)
        if not p.is_floating_point():
            raise TypeError(f"params[{i}]: expected a floating-point tensor, got {p.dtype}")
        same = g.shape == p.shape
        per_task = g.dim() == p.dim() + 1 and g.shape[1:] == p.shape
        if not (same or (per_task and not in_place)):
            raise ValueError(
                f"grads[{i}]: expected shape {list(p.shape)}"
                f"{'' if in_place else ' or [T, *that shape] for a shared parameter'}, got {list(g.shape)}"
            )
        if per_task:
            if tasks != -1 and tasks != g.shape[0]:
                raise ValueError(f"grads[{i}]: expected T={tasks} tasks like the other gradients, got {g.shape[0]}")
            tasks = g.shape[0]
        if len(lrs) != 0:
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
            # An elementwise rate has the parameter's shape, or its trailing dims for a per-task
            # parameter [T, ...] (shared by all tasks); never a task dimension of its own.
            trailing = a.dim() <= p.dim() and p.shape[p.dim() - a.dim():] == a.shape
            if a.numel() != 1 and not trailing:
                raise ValueError(
                    f"lrs[{i}]: expected a scalar or the parameter's shape {list(p.shape)}, got {list(a.shape)}"
                )


@compiled
def mlp_widths(params: Sequence[Tensor], task_dim: bool, tasks: int, loss: str) -> list[int]:
    """Checks [W1, b1, ..., WL, bL, (log_std)] and returns the layer widths [d0, ..., dL].
    ``task_dim``: the tensors carry a leading task dimension of size ``tasks``."""
    gaussian = loss == "gaussian_nll"
    extra = 1 if gaussian else 0
    n = len(params)
    if n < 2 + extra or (n - extra) % 2 != 0:
        raise ValueError(f"params: expected [W1, b1, ..., WL, bL{', log_std]' if gaussian else ']'}, got {n} tensors")
    ref = params[0]
    if ref.dtype not in FLOATS:
        raise TypeError(f"params[0]: expected float32 or float64, got {ref.dtype}")
    lead = 1 if task_dim else 0
    for i in range(n):
        p = params[i]
        check_same_dtype(f"params[{i}]", p, ref)
        check_same_device(f"params[{i}]", p, ref)
        if task_dim and (p.dim() < 1 or p.shape[0] != tasks):
            raise ValueError(
                f"params[{i}]: expected a leading task dimension of size {tasks}, got shape {list(p.shape)}"
            )
    layers = (n - extra) // 2
    widths: list[int] = []
    for layer in range(layers):
        w = params[2 * layer]
        b = params[2 * layer + 1]
        if w.dim() != 2 + lead:
            raise ValueError(
                f"params[{2 * layer}] (W{layer + 1}): expected {'[T, out, in]' if task_dim else '[out, in]'}, "
                f"got shape {list(w.shape)}"
            )
        if b.dim() != 1 + lead or b.shape[lead] != w.shape[lead]:
            raise ValueError(
                f"params[{2 * layer + 1}] (b{layer + 1}): expected {'[T, ' if task_dim else '['}{w.shape[lead]}], "
                f"got shape {list(b.shape)}"
            )
        if layer == 0:
            widths.append(w.shape[lead + 1])
        elif w.shape[lead + 1] != widths[layer]:
            raise ValueError(
                f"params[{2 * layer}] (W{layer + 1}): expected {widths[layer]} input features to match "
                f"W{layer}, got shape {list(w.shape)}"
            )
        widths.append(w.shape[lead])
        if widths[layer + 1] == 0 or widths[layer] == 0:
            raise ValueError(
                f"params[{2 * layer}] (W{layer + 1}): expected at least one input and one output "
                f"feature, got shape {list(w.shape)}"
            )
    if gaussian:
        s = params[n - 1]
        if s.dim() != 1 + lead or s.shape[lead] != widths[layers]:
            raise ValueError(
                f"params[{n - 1}] (log_std): expected {'[T, ' if task_dim else '['}{widths[layers]}], "
                f"got shape {list(s.shape)}"
            )
    return widths


@compiled
def check_batch(
    what: str, widths: Sequence[int], loss: str, x: Tensor, y: Tensor, weight: Tensor | None, tasks: int,
    like: Tensor,
) -> None:
    """x [T, K, d0], the targets and the optional weights of one example set against the widths."""
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
            raise ValueError(f"{what} y: expected [T={tasks}, K={k}, {widths[-1]}], got shape {list(y.shape)}")
    if weight is not None:
        check_same_device(f"{what} weight", weight, like)
        check_same_dtype(f"{what} weight", weight, like)
        if weight.dim() != 2 or weight.shape[0] != tasks or weight.shape[1] != k:
            raise ValueError(f"{what} weight: expected [T={tasks}, K={k}], got shape {list(weight.shape)}")


@compiled
def check_label_range(what: str, classes: int, lo: int, hi: int) -> None:
    """Class labels within [0, classes), given their smallest and largest value."""
    if lo < 0 or hi >= classes:
        raise ValueError(f"{what} y: class labels must lie in [0, {classes}), got values in [{lo}, {hi}]")


def check_labels(what: str, widths: Sequence[int], loss: str, y: Tensor) -> None:
    """Class labels within [0, classes): a value check, so not made on meta / fake tensors (the
    fake kernels check metadata only)."""
    if loss == "cross_entropy" and y.numel():
        check_label_range(what, widths[-1], int(y.min()), int(y.max()))


@compiled
def check_hvp(
    params: Sequence[Tensor], x: Tensor, y: Tensor, direction: Sequence[Tensor], weight: Tensor | None,
    activation: str, loss: str,
) -> list[int]:
    """Every input of mlp_hvp but the label values (check_labels); returns the layer widths."""
    check_choice("activation", activation, ACTIVATIONS)
    check_choice("loss", loss, LOSSES)
    if x.dim() != 3:
        raise ValueError(f"x: expected [T, K, in], got shape {list(x.shape)}")
    tasks = x.shape[0]
    widths = mlp_widths(params, True, tasks, loss)
    check_batch("support", widths, loss, x, y, weight, tasks, params[0])
    # An empty direction list asks for the loss and gradient only (no R-pass).
    if len(direction) != 0 and len(direction) != len(params):
        raise ValueError(f"direction: expected {len(params)} tensors like params (or none), got {len(direction)}")
    for i in range(len(direction)):
        v = direction[i]
        p = params[i]
        if v.shape != p.shape:
            raise ValueError(f"direction[{i}]: expected shape {list(p.shape)}, got {list(v.shape)}")
        check_same_dtype(f"direction[{i}]", v, p)
        check_same_device(f"direction[{i}]", v, p)
    return widths


@compiled
def check_lrs_for_params(lrs: Sequence[Tensor], params: Sequence[Tensor], per_step: bool, steps: int) -> None:
    """Each rate a scalar or exactly its parameter's shape (a right count in a wrong shape, e.g. a
    transposed W, is an error), after a leading [steps] when ``per_step``; none: the scalar lr."""
    if len(lrs) != 0 and len(lrs) != len(params):
        raise ValueError(f"lrs: expected one learning rate per parameter ({len(params)}), got {len(lrs)}")
    for i in range(len(lrs)):
        a = lrs[i]
        p = params[i]
        check_same_device(f"lrs[{i}]", a, p)
        check_same_dtype(f"lrs[{i}]", a, p)
        if per_step and (a.dim() < 1 or a.shape[0] != steps):
            raise ValueError(
                f"lrs[{i}]: per-step learning rates need a leading dimension of size steps={steps}, "
                f"got shape {list(a.shape)}"
            )
        rest = a.shape[1:] if per_step else a.shape
        if rest.numel() != 1 and rest != p.shape:
            raise ValueError(
                f"lrs[{i}]: expected a scalar or the shape {list(p.shape)} of its parameter"
                f"{' after the step dimension' if per_step else ''}, got shape {list(a.shape)}"
            )


@compiled
def check_task_batched(x_support: Tensor) -> None:
    if x_support.dim() != 3:
        raise ValueError(f"x_support: expected [T, K, in], got shape {list(x_support.shape)}")


@compiled
def check_maml(
    params: Sequence[Tensor], lrs: Sequence[Tensor], lr: float, per_step: bool, x_support: Tensor,
    y_support: Tensor, w_support: Tensor | None, x_query: Tensor | None, y_query: Tensor | None,
    w_query: Tensor | None, steps: int, activation: str, loss: str, checkpoint_every: int,
) -> list[int]:
    """Every input of mlp_maml / mlp_maml_grad and mlp_maml_backward (no query) but the label
    values (check_labels); returns the layer widths."""
    check_choice("activation", activation, ACTIVATIONS)
    check_choice("loss", loss, LOSSES)
    if steps < 1:
        raise ValueError(f"steps: expected >= 1, got {steps}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every: expected >= 1, got {checkpoint_every}")
    check_task_batched(x_support)
    tasks = x_support.shape[0]
    widths = mlp_widths(params, False, tasks, loss)
    check_batch("support", widths, loss, x_support, y_support, w_support, tasks, params[0])
    if x_query is not None and y_query is not None:
        check_batch("query", widths, loss, x_query, y_query, w_query, tasks, params[0])
    check_lrs_for_params(lrs, params, per_step, steps)
    check_lr_value(lr)
    return widths


@compiled
def check_backward(
    grad_loss: Tensor, grad_adapted: Sequence[Tensor], params: Sequence[Tensor], checkpoints: Tensor,
    query_grad: Tensor, tasks: int, steps: int, every: int,
) -> None:
    """The incoming gradients (grad_loss [T], grad_adapted: none or [T, *param] each) and the
    tensors mlp_maml saved for mlp_maml_backward match the call."""
    like = params[0]
    numel = 0
    for i in range(len(params)):
        numel += params[i].numel()
    n = (steps - 1) // every if steps > 1 else 0
    check_same_device("grad_loss", grad_loss, like)
    check_same_dtype("grad_loss", grad_loss, like)
    if grad_loss.dim() != 1 or grad_loss.shape[0] != tasks:
        raise ValueError(f"grad_loss: expected [T={tasks}], got shape {list(grad_loss.shape)}")
    if len(grad_adapted) != 0 and len(grad_adapted) != len(params):
        raise ValueError(
            f"grad_adapted: expected none or one tensor per parameter ({len(params)}), got {len(grad_adapted)}"
        )
    for i in range(len(grad_adapted)):
        g = grad_adapted[i]
        p = params[i]
        check_same_device(f"grad_adapted[{i}]", g, like)
        check_same_dtype(f"grad_adapted[{i}]", g, like)
        if g.dim() != p.dim() + 1 or g.shape[0] != tasks or g.shape[1:] != p.shape:
            raise ValueError(f"grad_adapted[{i}]: expected [T={tasks}, *{list(p.shape)}], got shape {list(g.shape)}")
    check_same_device("query_grad", query_grad, like)
    check_same_dtype("query_grad", query_grad, like)
    if query_grad.dim() != 2 or query_grad.shape[0] != tasks or query_grad.shape[1] != numel:
        raise ValueError(f"query_grad: expected [{tasks}, {numel}] saved by mlp_maml, got shape {list(query_grad.shape)}")
    check_same_device("checkpoints", checkpoints, like)
    check_same_dtype("checkpoints", checkpoints, like)
    if checkpoints.dim() != 3 or checkpoints.shape[0] != n or checkpoints.shape[1] != tasks \
            or checkpoints.shape[2] != numel:
        raise ValueError(
            f"checkpoints: expected [{n}, {tasks}, {numel}] saved by mlp_maml with the same steps and "
            f"checkpoint_every, got shape {list(checkpoints.shape)}"
        )


@compiled
def check_loss_weight(weight: Tensor, like: Tensor, tasks: int) -> None:
    """The per-task weights of the query losses in mlp_maml_grad: [T], like the parameters."""
    check_same_device("loss_weight", weight, like)
    check_same_dtype("loss_weight", weight, like)
    if weight.dim() != 1 or weight.shape[0] != tasks:
        raise ValueError(f"loss_weight: expected [T={tasks}], got shape {list(weight.shape)}")



@compiled
def check_adam(
    params: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    step_counts: Tensor,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    eps: float,
    clip_value: float,
) -> None:
    """The Adam state and settings of mlp_maml_adam_: the moments shaped like ``params``, one
    float32 step count per parameter (torch's fused-Adam ``state["step"]``), settings in the
    ranges ``torch.optim.Adam`` accepts, and ``clip_value`` > 0 (inf: no clipping)."""
    if len(exp_avgs) != len(params) or len(exp_avg_sqs) != len(params):
        raise ValueError(
            f"exp_avgs, exp_avg_sqs: expected {len(params)} tensors each (one per parameter), got "
            f"{len(exp_avgs)} and {len(exp_avg_sqs)}"
        )
    for i in range(len(params)):
        p = params[i]
        if exp_avgs[i].shape != p.shape or exp_avg_sqs[i].shape != p.shape:
            raise ValueError(
                f"exp_avgs[{i}], exp_avg_sqs[{i}]: expected shape {list(p.shape)} (that of params[{i}]), got "
                f"{list(exp_avgs[i].shape)} and {list(exp_avg_sqs[i].shape)}"
            )
        check_same_dtype(f"exp_avgs[{i}]", exp_avgs[i], p)
        check_same_dtype(f"exp_avg_sqs[{i}]", exp_avg_sqs[i], p)
        check_same_device(f"exp_avgs[{i}]", exp_avgs[i], p)
        check_same_device(f"exp_avg_sqs[{i}]", exp_avg_sqs[i], p)
    if step_counts.dim() != 1 or step_counts.shape[0] != len(params) or step_counts.dtype != torch.float32:
        raise ValueError(
            f"step_counts: expected float32 [{len(params)}] (one step count per parameter), got "
            f"{step_counts.dtype} of shape {list(step_counts.shape)}"
        )
    check_same_device("step_counts", step_counts, params[0])
    if not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"adam_lr: expected a finite value >= 0, got {lr}")
    if not (beta1 >= 0 and beta1 < 1 and beta2 >= 0 and beta2 < 1):
        raise ValueError(f"betas: expected each in [0, 1), got ({beta1}, {beta2})")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay: expected a finite value >= 0, got {weight_decay}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps: expected a finite value >= 0, got {eps}")
    if not (clip_value > 0):
        raise ValueError(f"clip_value: expected a value > 0 (inf: no clipping), got {clip_value}")


@compiled
def check_svgd_scalars(score_scale: float, step_size: float) -> None:
    """The scalars of svgd_step / svgd_step_backward: finite."""
    if not math.isfinite(score_scale):
        raise ValueError(f"score_scale: expected a finite number, got {score_scale}")
    if not math.isfinite(step_size):
        raise ValueError(f"step_size: expected a finite number, got {step_size}")


@compiled
def check_svgd(particles: Sequence[Tensor], others: Sequence[Tensor], name: str) -> None:
    """``particles``: one or more float32/float64 tensors [T, M, ...] with equal T, M, dtype and
    device; ``others`` (named ``name``) match them tensor by tensor in shape, dtype and device."""
    if len(particles) == 0:
        raise ValueError("particles: expected at least one tensor [T, M, ...], got none")
    if len(others) != len(particles):
        raise ValueError(f"{name}: expected {len(particles)} tensors (one per particles tensor), got {len(others)}")
    first = particles[0]
    if first.dim() < 2 or first.shape[1] < 1:
        raise ValueError(f"particles[0]: expected [T, M, ...] with M >= 1, got shape {list(first.shape)}")
    if first.dtype not in FLOATS:
        raise TypeError(f"particles[0]: expected dtype float32 or float64, got {first.dtype}")
    for i in range(len(particles)):
        p = particles[i]
        o = others[i]
        if p.dim() < 2 or p.shape[0] != first.shape[0] or p.shape[1] != first.shape[1]:
            raise ValueError(
                f"particles[{i}]: expected [T, M, ...] with T = {first.shape[0]}, M = {first.shape[1]} like "
                f"particles[0], got shape {list(p.shape)}"
            )
        check_same_dtype(f"particles[{i}]", p, first)
        check_same_device(f"particles[{i}]", p, first)
        if o.shape != p.shape:
            raise ValueError(f"{name}[{i}]: expected shape {list(p.shape)} (that of particles[{i}]), got {list(o.shape)}")
        check_same_dtype(f"{name}[{i}]", o, p)
        check_same_device(f"{name}[{i}]", o, p)


@compiled
def check_bmaml_chaser(
    params: Sequence[Tensor], x_support: Tensor, y_support: Tensor, x_query: Tensor, y_query: Tensor,
    steps: int, leader_steps: int, lr: float, activation: str, loss: str,
) -> list[int]:
    """Every input of mlp_bmaml_chaser but the label values (check_labels): ``params`` are the M
    initial particles, each MLP parameter with a leading particle dimension ``[M, ...]``;
    returns the layer widths."""
    check_choice("activation", activation, ACTIVATIONS)
    check_choice("loss", loss, LOSSES)
    if steps < 1:
        raise ValueError(f"steps: expected >= 1, got {steps}")
    if leader_steps < 1:
        raise ValueError(f"leader_steps: expected >= 1, got {leader_steps}")
    check_lr_value(lr)
    if len(params) == 0:
        raise ValueError("params: expected the particles' parameters [M, ...], got none")
    if params[0].dim() < 1 or params[0].shape[0] < 1:
        raise ValueError(
            f"params[0]: expected a leading particle dimension [M, ...] with M >= 1, got shape {list(params[0].shape)}"
        )
    particles = params[0].shape[0]
    for i in range(len(params)):
        if params[i].dim() < 1 or params[i].shape[0] != particles:
            raise ValueError(
                f"params[{i}]: expected a leading particle dimension of size M={particles} like params[0], "
                f"got shape {list(params[i].shape)}"
            )
    widths = mlp_widths(params, True, particles, loss)
    if x_support.dim() != 3:
        raise ValueError(f"x_support: expected [T, K, in], got shape {list(x_support.shape)}")
    tasks = x_support.shape[0]
    check_batch("support", widths, loss, x_support, y_support, None, tasks, params[0])
    check_batch("query", widths, loss, x_query, y_query, None, tasks, params[0])
    return widths


def loss_weight(weight: Tensor | None, like: Tensor, tasks: int) -> Tensor:
    """The per-task weights of the query losses: the given [T] tensor, or 1/T (the mean)."""
    if weight is None:
        return like.new_full((tasks,), 1.0 / max(tasks, 1))
    check_loss_weight(weight, like, tasks)
    return weight
