"""Pure-PyTorch twins of the fused ops in :mod:`maml_ext.ops`, with the same signatures.

They are the test oracle, the benchmark baseline and the fallback when the compiled extension is
not built (or ``MAML_EXT_NO_EXTENSION=1``). Everything is plain autograd with ``create_graph``, so
the reference is differentiable to any order.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from maml_ext.reference import _checks
from maml_ext.reference.svgd import svgd_step

Fn = TypeVar("Fn", bound=Callable[..., Any])

__all__ = [
    "inner_update",
    "inner_update_",
    "mlp_forward",
    "mlp_task_losses",
    "mlp_hvp",
    "mlp_maml",
    "mlp_maml_grad",
    "mlp_maml_adam_",
    "mlp_maml_eval",
    "mlp_bmaml_chaser",
    "bmaml_svgd_steps",
    "svgd_step",
]

LearningRate = float | Sequence[Tensor]


def split_lr(lr: LearningRate) -> tuple[list[Tensor], float]:
    """A float learning rate or a list of per-parameter tensors, as (tensors, float)."""
    if isinstance(lr, Tensor):
        raise TypeError("lr: expected a float or a list with one tensor per parameter, got a single tensor")
    if isinstance(lr, (int, float)) and not isinstance(lr, bool):
        return [], float(lr)
    if isinstance(lr, (str, bytes, bool)) or not isinstance(lr, (Sequence, Iterator)):
        raise TypeError(f"lr: expected a float or a list with one tensor per parameter, got {type(lr).__name__}")
    lrs = list(lr)
    check_types(lrs=lrs)
    return lrs, 0.0


def check_types(ints: dict[str, object] | None = None, **lists: Sequence[object]) -> None:
    """The Python types of an op's arguments, before any work: every entry of each named list a
    Tensor, and each of ``ints`` an int (None allowed). The public ops check them first, so both
    paths say the same (the dispatcher's own message and the reference's Python errors differ)."""
    for name, values in lists.items():
        # Lists and tuples first: the abstract-class checks cost more than the rest (every op call).
        if type(values) not in _LISTS and (isinstance(values, Tensor) or not isinstance(values, (Sequence, Iterator))):
            raise TypeError(f"{name}: expected a list of tensors, got {type(values).__name__}")
        if not all(isinstance(t, Tensor) for t in values):
            i = next(i for i, t in enumerate(values) if not isinstance(t, Tensor))
            raise TypeError(f"{name}[{i}]: expected a Tensor, got {type(values[i]).__name__}")
    if ints:
        for name, value in ints.items():
            if value is not None and type(value) is not int and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"{name}: expected an int, got {value!r} ({type(value).__name__})")


_LISTS = (list, tuple)


def _lr_for(lrs: Sequence[Tensor], lr: float, i: int, step: int | None) -> float | Tensor:
    if not lrs:
        return lr
    return lrs[i] if step is None else lrs[i][step]


def inner_update(
    params: Sequence[Tensor], grads: Sequence[Tensor], lr: LearningRate, step: int | None = None
) -> list[Tensor]:
    """theta' = theta - alpha * g per tensor; shared params broadcast over the task dim of g."""
    lrs, lr_value = split_lr(lr)
    _checks.check_inner_update(params, grads, lrs, lr_value, step, in_place=False)
    return [p - _lr_for(lrs, lr_value, i, step) * g for i, (p, g) in enumerate(zip(params, grads))]


def inner_update_(
    params: Sequence[Tensor], grads: Sequence[Tensor], lr: LearningRate, step: int | None = None
) -> None:
    """In-place, non-differentiable inner_update."""
    lrs, lr_value = split_lr(lr)
    _checks.check_inner_update(params, grads, lrs, lr_value, step, in_place=True)
    with torch.no_grad():
        for i, (p, g) in enumerate(zip(params, grads)):
            p.sub_(_lr_for(lrs, lr_value, i, step) * g)


def mlp_forward(params: Sequence[Tensor], x: Tensor, activation: str, loss: str = "mse") -> Tensor:
    """Output of the MLP [W1, b1, ..., WL, bL(, log_std)] on x [T, K, in]; params shared or [T, ...]."""
    layers = (len(params) - (loss == "gaussian_nll")) // 2
    act = torch.relu if activation == "relu" else torch.tanh
    h = x
    for layer in range(layers):
        w, b = params[2 * layer], params[2 * layer + 1]
        if w.dim() == 2:
            h = h @ w.transpose(0, 1) + b
        else:
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        if layer < layers - 1:
            h = act(h)
    return h


def mlp_task_losses(
    params: Sequence[Tensor], out: Tensor, y: Tensor, loss: str, weight: Tensor | None = None
) -> Tensor:
    """Per-task loss [T]: the mean over the K examples of the (weighted) per-example loss."""
    if loss == "mse":
        per_example = (out - y).pow(2).mean(-1)
    elif loss == "cross_entropy":
        t, k, d = out.shape
        per_example = F.cross_entropy(out.reshape(t * k, d), y.reshape(t * k), reduction="none").view(t, k)
    else:
        log_std = params[-1]
        log_std = log_std.unsqueeze(-2)  # broadcast over examples, shared or per task
        inv_var = torch.exp(-2 * log_std)
        nll = 0.5 * (out - y).pow(2) * inv_var + log_std + 0.5 * math.log(2 * math.pi)
        per_example = nll.sum(-1)
    if weight is not None:
        per_example = per_example * weight
    return per_example.mean(-1)


def _leaves(tensors: Sequence[Tensor]) -> tuple[list[Tensor], bool]:
    """Tensors usable with autograd.grad, and whether the caller's inputs carried a graph."""
    tracked = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return [t if t.requires_grad else t.detach().requires_grad_() for t in tensors], tracked


def _eager(fn: Fn) -> Fn:
    """``fn`` run eagerly under torch.compile, also when it is the function compiled (torch.compile
    of a ``torch.compiler.disable``-d function traces it anyway; here it meets the disabled call)."""
    disabled: list[Fn] = []  # made at the first call: torch.compiler.disable imports torch._dynamo (~1 s)

    @functools.wraps(fn)
    def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if not disabled:
            disabled.append(torch.compiler.disable(fn))
        return disabled[0](*args, **kwargs)

    return call  # type: ignore[return-value]


# Every op below that calls torch.autograd.grad inside is run eagerly under torch.compile (one
# graph break each): traced, the nested autograd.grad either fails (mlp_hvp: "the differentiated
# Tensor ... appears to not have been used in the graph") or, worse, AOT autograd drops its
# create_graph terms and the second-order derivatives silently vanish (mlp_maml's, mlp_maml_grad's
# and the SVGD steps' meta-gradients, the BMAML chase). tests/test_qa5_reference_compile.py.
@_eager
def mlp_hvp(
    params: Sequence[Tensor],
    x: Tensor,
    y: Tensor,
    direction: Sequence[Tensor] | None = None,
    *,
    activation: str = "relu",
    loss: str = "mse",
    sample_weight: Tensor | None = None,
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Per-task support loss [T], its gradient and its Hessian-vector product with ``direction``
    (no direction, or an empty one: loss and gradient only, and an empty HVP list)."""
    direction = list(direction or [])
    widths = _checks.check_hvp(params, x, y, direction, sample_weight, activation, loss)
    if x.device.type != "meta":  # meta tensors have no values to check
        _checks.check_labels("support", widths, loss, y)
    leaves, tracked = _leaves(params)
    steered = torch.is_grad_enabled() and any(d.requires_grad for d in direction)
    with torch.enable_grad():
        losses = mlp_task_losses(leaves, mlp_forward(leaves, x, activation, loss), y, loss, sample_weight)
        grads = torch.autograd.grad(losses.sum(), leaves, create_graph=tracked or bool(direction))
        hvps = torch.autograd.grad(grads, leaves, grad_outputs=direction, create_graph=tracked or steered) if direction else []
    if not tracked:
        return losses.detach(), [g.detach() for g in grads], [h if steered else h.detach() for h in hvps]
    return losses, list(grads), list(hvps)


@_eager
def mlp_maml(
    params: Sequence[Tensor],
    x_support: Tensor,
    y_support: Tensor,
    x_query: Tensor,
    y_query: Tensor,
    *,
    lr: LearningRate,
    steps: int = 1,
    per_step_lr: bool = False,
    activation: str = "relu",
    loss: str = "mse",
    first_order: bool = False,
    snapshots: bool | int = False,
    w_support: Tensor | None = None,
    w_query: Tensor | None = None,
    checkpoint: bool | int | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """``steps`` SGD steps from the shared ``params`` on each task's support set, then the query loss.

    Returns (query_loss [T], adapted params [T, ...]). Unrolled with autograd; ``snapshots``
    (``checkpoint``: its deprecated name) is accepted for signature parity and has no effect here.
    """
    snapshots = renamed_snapshots(snapshots, checkpoint)
    lrs, lr_value = split_lr(lr)
    widths = _checks.check_maml(
        params, lrs, lr_value, per_step_lr, x_support, y_support, w_support, x_query, y_query, w_query,
        steps, activation, loss, snapshot_interval(snapshots, max(steps, 1)),
    )
    _check_task_labels(widths, loss, y_support, y_query)
    leaves, tracked = _leaves(params)
    with torch.enable_grad():
        for theta in _adapted(leaves, x_support, y_support, w_support, lr, steps, per_step_lr, activation, loss,
                              create_graph=not first_order):
            pass
        query_out = mlp_forward(theta, x_query, activation, loss)
        query_loss = mlp_task_losses(theta, query_out, y_query, loss, w_query)
    if not (tracked or (torch.is_grad_enabled() and any(a.requires_grad for a in lrs))):
        return query_loss.detach(), [t.detach() for t in theta]
    return query_loss, theta


def _check_task_labels(widths: list[int], loss: str, y_support: Tensor, y_query: Tensor) -> None:
    """The label values of both sets (meta tensors have no values to check)."""
    if y_support.device.type != "meta":
        for what, labels in (("support", y_support), ("query", y_query)):
            _checks.check_labels(what, widths, loss, labels)


def _adapted(
    params: Sequence[Tensor], x: Tensor, y: Tensor, weight: Tensor | None, lr: LearningRate, steps: int,
    per_step_lr: bool, activation: str, loss: str, create_graph: bool,
) -> Iterator[list[Tensor]]:
    """The per-task parameters [T, ...] before the first of ``steps`` SGD steps on (x, y) and
    after each (autograd must be enabled)."""
    theta = [p.unsqueeze(0).expand(x.shape[0], *p.shape) for p in params]
    yield theta
    for step in range(steps):
        losses = mlp_task_losses(theta, mlp_forward(theta, x, activation, loss), y, loss, weight)
        grads = torch.autograd.grad(losses.sum(), theta, create_graph=create_graph)
        theta = inner_update(theta, grads, lr, step if per_step_lr else None)
        yield theta


@_eager
def mlp_maml_eval(
    params: Sequence[Tensor],
    x_support: Tensor,
    y_support: Tensor,
    x_query: Tensor,
    y_query: Tensor,
    *,
    lr: LearningRate,
    steps: int = 1,
    per_step_lr: bool = False,
    activation: str = "relu",
    loss: str = "mse",
    w_support: Tensor | None = None,
    w_query: Tensor | None = None,
    outputs: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Evaluation of :func:`mlp_maml`'s adaptation: the query losses [steps + 1, T] before each of
    the ``steps`` SGD steps and after the last, and (``outputs=True``) the query outputs
    [steps + 1, T, K_query, out], else None. No graph is returned."""
    lrs, lr_value = split_lr(lr)
    widths = _checks.check_maml(
        params, lrs, lr_value, per_step_lr, x_support, y_support, w_support, x_query, y_query, w_query,
        steps, activation, loss, 1,
    )
    _check_task_labels(widths, loss, y_support, y_query)
    losses, outs = [], []
    leaves = [p.detach().requires_grad_() for p in params]
    with torch.enable_grad():
        for theta in _adapted(leaves, x_support, y_support, w_support, [a.detach() for a in lrs] or lr_value,
                              steps, per_step_lr, activation, loss, create_graph=False):
            out = mlp_forward(theta, x_query, activation, loss).detach()
            losses.append(mlp_task_losses(theta, out, y_query, loss, w_query).detach())
            outs.append(out)
    return torch.stack(losses), torch.stack(outs) if outputs else None


@_eager
def mlp_maml_grad(
    params: Sequence[Tensor],
    x_support: Tensor,
    y_support: Tensor,
    x_query: Tensor,
    y_query: Tensor,
    *,
    lr: LearningRate,
    steps: int = 1,
    per_step_lr: bool = False,
    activation: str = "relu",
    loss: str = "mse",
    first_order: bool = False,
    w_support: Tensor | None = None,
    w_query: Tensor | None = None,
    loss_weight: Tensor | None = None,
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Query losses [T] and the meta-gradient of sum_t loss_weight[t] * query_loss[t] (default:
    the mean over tasks) w.r.t. ``params`` and the lr tensors, without returning a graph."""
    _checks.check_task_batched(x_support)  # before loss_weight, whose expected size it gives
    tasks = x_support.shape[0]
    _checks.mlp_widths(params, False, tasks, loss)  # named before requires_grad_ (which fails on ints)
    weight = _checks.loss_weight(loss_weight, params[0], tasks)
    lrs, _ = split_lr(lr)
    with torch.enable_grad():
        p = [t.detach().requires_grad_() for t in params]
        a = [t.detach().requires_grad_() for t in lrs]
        query_loss, _ = mlp_maml(
            p, x_support, y_support, x_query, y_query, lr=a if lrs else lr, steps=steps,
            per_step_lr=per_step_lr, activation=activation, loss=loss, first_order=first_order,
            w_support=w_support, w_query=w_query,
        )
        grads = torch.autograd.grad((query_loss * weight).sum(), [*p, *a])
    return query_loss.detach(), list(grads[: len(p)]), list(grads[len(p):])


def mlp_maml_adam_(
    params: Sequence[Tensor],
    x_support: Tensor,
    y_support: Tensor,
    x_query: Tensor,
    y_query: Tensor,
    *,
    lr: float,
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    step_counts: Tensor,
    adam_lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    eps: float = 1e-8,
    maximize: bool = False,
    clip_value: float | None = None,
    steps: int = 1,
    activation: str = "relu",
    loss: str = "mse",
    first_order: bool = False,
    w_support: Tensor | None = None,
    w_query: Tensor | None = None,
    loss_weight: Tensor | None = None,
    return_grads: bool = False,
) -> tuple[Tensor, bool, list[Tensor]]:
    """A whole meta-training step: :func:`mlp_maml_grad`'s meta-gradient (float ``lr``), and when
    the meta-loss and every gradient entry are finite, the gradient clipped to
    [-clip_value, clip_value] and ``torch.optim.Adam``'s update (L2 ``weight_decay`` added to the
    gradient, ``maximize``) of ``params``, ``exp_avgs``, ``exp_avg_sqs`` and the float32
    ``step_counts`` [len(params)], all in place. Returns (the meta-loss
    Σ_t loss_weight[t]·query_loss[t], whether the step was applied, the clipped gradients when
    ``return_grads`` else [])."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise TypeError(f"lr: expected a float (learned step sizes: use mlp_maml_grad and an optimizer), got {type(lr).__name__}")
    tasks = x_support.shape[0] if x_support.dim() == 3 else 0
    _checks.check_maml(params, [], float(lr), False, x_support, y_support, w_support, x_query, y_query, w_query,
                       steps, activation, loss, 1)
    weight = _checks.loss_weight(loss_weight, params[0], tasks)
    clip = math.inf if clip_value is None else float(clip_value)
    beta1, beta2 = betas
    _checks.check_adam(params, exp_avgs, exp_avg_sqs, step_counts, adam_lr, beta1, beta2, weight_decay, eps, clip)
    query_loss, grads, _ = mlp_maml_grad(params, x_support, y_support, x_query, y_query, lr=float(lr), steps=steps,
                                         activation=activation, loss=loss, first_order=first_order,
                                         w_support=w_support, w_query=w_query, loss_weight=weight)
    value = (query_loss * weight).sum()
    if not (math.isfinite(value.item()) and all(bool(g.isfinite().all()) for g in grads)):
        return value, False, []
    with torch.no_grad():
        grads = [g.clamp(-clip, clip) for g in grads] if clip_value is not None else grads
        for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
            # torch.optim.Adam's single-tensor arithmetic, the step counted in float32 as there.
            step_counts[i] += 1
            step = step_counts[i].item()
            g = -g if maximize else g
            if weight_decay != 0:
                g = g.add(p, alpha=weight_decay)
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
            p.addcdiv_(m, denom, value=-adam_lr / (1 - beta1**step))
    return value, True, list(grads) if return_grads else []


@_eager
def bmaml_svgd_steps(
    sets: Sequence[Tensor], x: Tensor, y: Tensor, steps: int, lr: float, activation: str, loss: str,
    first_order: bool,
) -> list[Tensor]:
    """``steps`` SVGD steps (log p = −L, step size ``lr``) of every task's particles ``[T, M, ...]``
    (one tensor per MLP parameter) on the examples ``x``, ``y`` of their rows ``[T·M, K, ...]``;
    ``first_order``: each step's Jacobian is taken as the identity (the path is followed)."""
    sets = list(sets)
    rows = sets[0].shape[0] * sets[0].shape[1]
    for _ in range(steps):
        flat = [s.reshape(rows, *s.shape[2:]) for s in sets]
        losses = mlp_task_losses(flat, mlp_forward(flat, x, activation, loss), y, loss)
        grads = torch.autograd.grad(losses.sum(), flat, create_graph=not first_order)
        scores = [g.view(s.shape) for g, s in zip(grads, sets)]
        if first_order:
            fixed = [s.detach() for s in sets]
            sets = [s + (t - f).detach() for s, t, f in zip(sets, svgd_step(fixed, scores, -1.0, lr), fixed)]
        else:
            sets = svgd_step(sets, scores, -1.0, lr)
    return sets


@_eager
def mlp_bmaml_chaser(
    params: Sequence[Tensor],
    x_support: Tensor,
    y_support: Tensor,
    x_query: Tensor,
    y_query: Tensor,
    *,
    steps: int,
    leader_steps: int,
    lr: float,
    activation: str = "relu",
    loss: str = "mse",
    first_order: bool = False,
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """BMAML's Chaser loss of an MLP from M initial particles (each parameter ``[M, ...]``) shared
    by T tasks, and its gradient w.r.t. them, without returning a graph:

        chase = Σ_t Σ_m ‖θ^n_{t,m} − stopgrad(θ^{n+s}_{t,m})‖² / T,

    θ^n: ``steps`` SVGD steps (:func:`bmaml_svgd_steps`) of every task's copy of the particles on
    its support set; θ^{n+s}: ``leader_steps`` more on support + query. Returns (chase, the
    chasers' query losses ``[T, M]``, d chase / d params). ``first_order``: every SVGD step's
    Jacobian is taken as the identity."""
    widths = _checks.check_bmaml_chaser(params, x_support, y_support, x_query, y_query, steps, leader_steps, lr,
                                        activation, loss)
    if x_support.device.type != "meta":
        _check_task_labels(widths, loss, y_support, y_query)
    tasks, m = x_support.shape[0], params[0].shape[0]

    def rows(x: Tensor) -> Tensor:  # task t's examples for each of its M particles: [T·M, K, ...]
        return x.unsqueeze(1).expand(tasks, m, *x.shape[1:]).reshape(tasks * m, *x.shape[1:])

    with torch.enable_grad():
        init = [p.detach().requires_grad_() for p in params]
        sets = [p.unsqueeze(0).expand(tasks, *p.shape) for p in init]
        sets = bmaml_svgd_steps(sets, rows(x_support), rows(y_support), steps, lr, activation, loss, first_order)
        flat = [s.reshape(tasks * m, *s.shape[2:]) for s in sets]
        query = mlp_task_losses(flat, mlp_forward(flat, rows(x_query), activation, loss), rows(y_query), loss)
        x_all, y_all = rows(torch.cat([x_support, x_query], 1)), rows(torch.cat([y_support, y_query], 1))
        leader = bmaml_svgd_steps(sets, x_all, y_all, leader_steps, lr, activation, loss, True)
        chase = sum((s - lead.detach()).pow(2).sum() for s, lead in zip(sets, leader)) / tasks
        grads = torch.autograd.grad(chase, init)
    return chase.detach(), query.detach().view(tasks, m), list(grads)


def snapshot_interval(snapshots: bool | int, steps: int) -> int:
    """Inner steps between the stored parameter snapshots that mlp_maml's backward restarts from
    (the rest is recomputed): False = every step, True = ceil(sqrt(steps)), an int k = every k-th."""
    if snapshots is True:
        return max(1, math.ceil(math.sqrt(steps)))
    if snapshots is False:
        return 1
    if not isinstance(snapshots, int) or snapshots < 1:
        raise ValueError(f"snapshots: expected a bool or an int >= 1, got {snapshots!r}")
    return snapshots


def renamed_snapshots(snapshots: bool | int, checkpoint: bool | int | None) -> bool | int:
    """``snapshots``, or the value given under its old name ``checkpoint`` (renamed because it read
    like the training loop's checkpoints, ``train.checkpoint_every``), with a DeprecationWarning."""
    if checkpoint is None:
        return snapshots
    if snapshots is not False:
        raise TypeError("mlp_maml: give snapshots= only (checkpoint= is its deprecated old name), not both")
    warnings.warn("mlp_maml(checkpoint=...) is deprecated: it is now snapshots=... (the same values)",
                  DeprecationWarning, stacklevel=3)
    return checkpoint
