"""Fused MAML operators: typed wrappers over ``torch.ops.maml_ext``, their autograd formulas and
fake (meta) kernels.

Each public function here has a pure-PyTorch twin with the same signature in
:mod:`maml_ext.reference`, which is used automatically when the compiled kernels are not built,
cannot handle the tensors' device, or ``MAML_EXT_NO_EXTENSION=1`` is set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from maml_ext import _extension, reference
from maml_ext.reference import LearningRate, check_types, renamed_snapshots, snapshot_interval, split_lr

from maml_ext.ops._meta_loss import MetaLoss, as_meta_loss

if _extension.available():
    from maml_ext.ops import _registration  # fake kernels and autograd formulas of the ops

__all__ = [
    "MetaLoss",
    "extension_available",
    "inner_update",
    "inner_update_",
    "mlp_hvp",
    "mlp_maml",
    "mlp_maml_grad",
    "mlp_maml_adam_",
    "mlp_maml_eval",
    "mlp_maml_loss",
    "mlp_bmaml_chaser",
    "svgd_step",
]


def extension_available() -> bool:
    """True when the compiled kernels are loaded (else every op runs its reference twin)."""
    return _extension.available()


def _fused(*tensors: Tensor) -> bool:
    return bool(tensors) and _extension.supports(tensors[0].device)


def inner_update(
    params: Sequence[Tensor], grads: Sequence[Tensor], lr: LearningRate, step: int | None = None
) -> list[Tensor]:
    """One SGD step for every parameter tensor of every task at once: θ'_t = θ(_t) − α ⊙ g_t.

    Args:
        params: θ per tensor, shared (no task dimension: broadcast over tasks) or per task [T, ...].
        grads: g per tensor, [T, *θ shape] for shared θ, else θ's shape.
        lr: a float, or one tensor per parameter, a scalar (per layer) or θ-shaped (Meta-SGD).
        step: with per-step rates (MAML++ LSLR) each lr tensor has a leading step dimension and
            row ``step`` is used.

    Differentiable in params, grads and lr tensors, to any order (the backward is made of
    differentiable torch ops, which is what carries MAML's second-order term).
    """
    check_types({"step": step}, params=params, grads=grads)
    if not _fused(*params):
        return reference.inner_update(params, grads, lr, step)
    lrs, lr_value = split_lr(lr)
    return torch.ops.maml_ext.inner_update(list(params), list(grads), lrs, lr_value, step)


def inner_update_(
    params: Sequence[Tensor], grads: Sequence[Tensor], lr: LearningRate, step: int | None = None
) -> None:
    """In-place, non-differentiable :func:`inner_update` (first-order and outer-loop steps)."""
    check_types({"step": step}, params=params, grads=grads)
    if not _fused(*params):
        return reference.inner_update_(params, grads, lr, step)
    lrs, lr_value = split_lr(lr)
    torch.ops.maml_ext.inner_update_(list(params), list(grads), lrs, lr_value, step)
    return None


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
    """Per-task loss [T], gradient and Hessian-vector product of an MLP, analytically.

    Args:
        params: [W1 [T, d1, d0], b1 [T, d1], ..., WL, bL] (+ log_std [T, dL] for
            ``loss="gaussian_nll"``): each task's own parameters, nn.Linear layout.
        x: [T, K, d0] inputs. y: [T, K, dL] targets (mse, gaussian_nll) or [T, K] int64 labels.
        direction: v, shaped like params; None (or empty) for the loss and gradient only: the
            R-pass is skipped and the HVP list is empty (cheaper inner steps that stay exactly
            differentiable, e.g. SVGD or any hand-written inner loop).
        activation: "relu" or "tanh" (hidden layers; the output layer is linear).
        loss: "mse" (mean over K and outputs), "cross_entropy", or "gaussian_nll" (the
            policy-gradient surrogate: −log N(y | out, exp(log_std)²) weighted by sample_weight).
        sample_weight: optional [T, K] per-example weights (advantages for RL).

    Differentiable: the loss in params (gives the gradient), the gradient in params (gives H·u)
    and the HVP in ``direction`` (gives H·w). The HVP's own derivative w.r.t. params (a third
    derivative) is not formed.
    """
    check_types(params=params, direction=direction or [])
    if not _fused(*params):
        return reference.mlp_hvp(
            params, x, y, direction, activation=activation, loss=loss, sample_weight=sample_weight
        )
    loss_t, grads, hvps = torch.ops.maml_ext.mlp_hvp(
        list(params), x, y, list(direction or []), sample_weight, activation, loss
    )
    return loss_t, list(grads), list(hvps)


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
    """MAML's whole inner loop for an MLP and T tasks in one call.

    From the shared initialisation ``params`` ([W1 [d1, d0], b1, ..., WL, bL], + log_std for
    gaussian_nll), takes ``steps`` SGD steps on each task's support set (x_support [T, K, d0]),
    then returns each task's query loss [T] and the adapted parameters ([T, ...] per tensor).

    The backward gives the exact meta-gradient w.r.t. ``params`` and the learning-rate tensors:
    second order by reverse accumulation v ← v − H_k(α_k ⊙ v) with analytic Hessian-vector
    products (per-step parameters stored, activations recomputed, no autograd graph), or first
    order (``first_order=True``). Memory is O(T·S·P); ``snapshots=True`` stores only every
    ⌈√S⌉-th step's parameters (an int picks the interval) and recomputes the rest, for long inner
    loops (rematerialisation; ``checkpoint=`` is the deprecated old name of ``snapshots=``, which
    read like the training loop's checkpoints).

    ``lr``: a float, or one tensor per parameter (scalar or elementwise, Meta-SGD); with
    ``per_step_lr=True`` each has a leading [steps] dimension (MAML++ LSLR).

    The backward is not itself differentiable (no third derivatives): differentiating the
    meta-gradient again raises. Gradients w.r.t. the data (x, y, weights) are not computed.
    """
    check_types({"steps": steps}, params=params)
    snapshots = renamed_snapshots(snapshots, checkpoint)
    every = snapshot_interval(snapshots, steps)
    if not _fused(*params):
        return reference.mlp_maml(
            params, x_support, y_support, x_query, y_query, lr=lr, steps=steps,
            per_step_lr=per_step_lr, activation=activation, loss=loss, first_order=first_order,
            snapshots=snapshots, w_support=w_support, w_query=w_query,
        )
    lrs, lr_value = split_lr(lr)
    params = list(params)
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in (*params, *lrs))):
        query_loss, adapted, _, _ = torch.ops.maml_ext.mlp_maml(
            params, lrs, lr_value, per_step_lr, x_support, y_support, w_support, x_query, y_query,
            w_query, steps, activation, loss, first_order, every, False,
        )
        return query_loss, list(adapted)
    if first_order and not any(t.requires_grad for t in lrs):
        every = steps  # the first-order backward needs no intermediate parameters at all
    config = (len(params), lr_value, per_step_lr, steps, activation, loss, first_order, every)
    out = _MlpMaml.apply(config, x_support, y_support, w_support, x_query, y_query, w_query,
                         *params, *lrs)
    return out[0], list(out[1:])


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
    """:func:`mlp_maml` and its backward in one call, for training loops that only need the
    meta-gradient: returns the query losses [T] and the gradients of
    Σ_t loss_weight[t]·query_loss[t] (default: the mean over tasks) w.r.t. ``params`` and the
    lr tensors (empty list for a float lr). Arguments as in :func:`mlp_maml`.

    Faster than ``mlp_maml(...)[0].mean().backward()``: one kernel call, no autograd graph, and
    the reverse walk reuses each step's activations instead of recomputing them; memory is
    O(threads·S·P) instead of O(T·S·P).
    """
    check_types({"steps": steps}, params=params)
    if not _fused(*params):
        return reference.mlp_maml_grad(
            params, x_support, y_support, x_query, y_query, lr=lr, steps=steps,
            per_step_lr=per_step_lr, activation=activation, loss=loss, first_order=first_order,
            w_support=w_support, w_query=w_query, loss_weight=loss_weight,
        )
    lrs, lr_value = split_lr(lr)
    tasks = x_support.shape[0] if x_support.dim() == 3 else 0
    if loss_weight is None:
        loss_weight = params[0].new_full((tasks,), 1.0 / max(tasks, 1))
    with torch.no_grad():
        query_loss, grads, lr_grads = torch.ops.maml_ext.mlp_maml_grad(
            list(params), lrs, lr_value, per_step_lr, x_support, y_support, w_support, x_query,
            y_query, w_query, steps, activation, loss, first_order, loss_weight,
        )
    return query_loss, list(grads), list(lr_grads)


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
    """A whole meta-training step in one call: :func:`mlp_maml_grad` (float ``lr``) and, when the
    meta-loss and every gradient entry are finite, the gradient clipped to
    [-clip_value, clip_value] and ``torch.optim.Adam``'s update of ``params`` and its state
    (``exp_avgs``, ``exp_avg_sqs``, float32 ``step_counts`` [len(params)], torch's fused-Adam
    step counts) in place, while the gradient is still in cache: the training loop's
    meta-iteration without a second dispatch (benchmarks/RESULTS.md, issue 14.2, third pass).
    ``adam_lr``, ``betas``, ``weight_decay`` (L2, added to the gradient), ``eps`` and
    ``maximize`` as in ``torch.optim.Adam``; amsgrad and decoupled weight decay are not offered.

    Returns (the meta-loss Σ_t loss_weight[t]·query_loss[t], whether the step was applied, the
    clipped meta-gradients when ``return_grads`` else []). Nothing is modified when it was not
    applied. On the CPU one compiled call; elsewhere the reference.
    """
    check_types({"steps": steps}, params=params)
    if not (params and isinstance(lr, (int, float)) and params[0].device.type == "cpu" and _fused(*params)):
        return reference.mlp_maml_adam_(
            params, x_support, y_support, x_query, y_query, lr=lr, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs,
            step_counts=step_counts, adam_lr=adam_lr, betas=betas, weight_decay=weight_decay, eps=eps,
            maximize=maximize, clip_value=clip_value, steps=steps, activation=activation, loss=loss,
            first_order=first_order, w_support=w_support, w_query=w_query, loss_weight=loss_weight,
            return_grads=return_grads,
        )
    if loss_weight is None:
        tasks = x_support.shape[0] if x_support.dim() == 3 else 0
        loss_weight = params[0].new_full((tasks,), 1.0 / max(tasks, 1))
    with torch.no_grad():  # an optimizer step: no graph (the op bumps the version counters)
        value, applied, grads = torch.ops.maml_ext.mlp_maml_adam_(
            params, x_support, y_support, w_support, x_query, y_query, w_query, lr, steps, activation, loss,
            first_order, loss_weight, exp_avgs, exp_avg_sqs, step_counts, adam_lr, betas[0], betas[1],
            weight_decay, eps, maximize, math.inf if clip_value is None else clip_value, return_grads,
        )
    return value, bool(applied), list(grads)

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
    """Multi-step evaluation in one call: the query losses [steps + 1, T] before each of the
    ``steps`` SGD steps of :func:`mlp_maml`'s adaptation and after the last (row s: after s
    steps), and with ``outputs=True`` the query outputs [steps + 1, T, K_query, out] (else None).
    Arguments as in :func:`mlp_maml`; no gradients. On the CPU one kernel pass per task (the inner
    loop with the query forward at every step), elsewhere the reference."""
    check_types({"steps": steps}, params=params)
    if not (params and params[0].device.type == "cpu" and _fused(*params)):
        return reference.mlp_maml_eval(
            params, x_support, y_support, x_query, y_query, lr=lr, steps=steps, per_step_lr=per_step_lr,
            activation=activation, loss=loss, w_support=w_support, w_query=w_query, outputs=outputs,
        )
    lrs, lr_value = split_lr(lr)
    with torch.no_grad():
        losses, outs = torch.ops.maml_ext.mlp_maml_eval(
            list(params), lrs, lr_value, per_step_lr, x_support, y_support, w_support, x_query, y_query,
            w_query, steps, activation, loss, outputs,
        )
    return losses, outs if outputs else None


def mlp_maml_loss(
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
) -> Tensor:
    """The meta-objective Σ_t loss_weight[t]·query_loss[t] (default: the mean over tasks) as a
    scalar whose ``.backward()`` gives the exact meta-gradient: a drop-in for
    ``mlp_maml(...)[0].mean()`` in training loops, computed by :func:`mlp_maml_grad` in the same
    call (so the backward costs nothing). Differentiable once. With the compiled kernels the
    result is a :class:`MetaLoss`, whose plain ``.backward()`` stores the gradients without
    torch's autograd engine.
    """
    check_types({"steps": steps}, params=params)
    lrs, lr_value = split_lr(lr)
    tasks = x_support.shape[0] if x_support.dim() == 3 else 0
    differentiable = torch.is_grad_enabled() and any(t.requires_grad for t in (*params, *lrs))
    if differentiable and _fused(*params) and not torch.compiler.is_compiling():
        # One op whose autograd node is C++ (csrc/mlp/mlp_loss_autograd.cpp): the engine then
        # runs no Python, and the precomputed gradients become .grad without a copy (on a plain
        # backward stored by the node itself, without the engine's AccumulateGrad nodes).
        if loss_weight is None:
            loss_weight = params[0].new_full((tasks,), 1.0 / max(tasks, 1))
        return as_meta_loss(torch.ops.maml_ext.mlp_maml_loss.default(
            list(params), lrs, lr_value, per_step_lr, x_support, y_support, w_support, x_query, y_query,
            w_query, steps, activation, loss, first_order, loss_weight,
        ))
    kwargs = dict(lr=lr, steps=steps, per_step_lr=per_step_lr, activation=activation, loss=loss,
                  first_order=first_order, w_support=w_support, w_query=w_query)
    if not differentiable:
        query_loss, _ = mlp_maml(params, x_support, y_support, x_query, y_query, **kwargs)
        weight = reference._checks.loss_weight(loss_weight, query_loss, tasks)
        return (query_loss * weight).sum()
    query_loss, grads, lr_grads = mlp_maml_grad(params, x_support, y_support, x_query, y_query,
                                                **kwargs, loss_weight=loss_weight)
    weight = reference._checks.loss_weight(loss_weight, query_loss, tasks)
    value = (query_loss * weight).sum()
    return _PrecomputedGradient.apply(value, (*grads, *lr_grads), *params, *lrs)


class _PrecomputedGradient(torch.autograd.Function):
    """A scalar whose gradient w.r.t. ``inputs`` was computed already (by a fused kernel)."""

    @staticmethod
    def forward(ctx, value, grads, *inputs):
        # Saved as tensors: freed with the graph, so a second backward raises as for any graph.
        ctx.save_for_backward(*grads)
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "maml_ext.ops.mlp_maml_loss is differentiable once; for higher-order derivatives "
                "use maml_ext.ops.mlp_maml (second derivatives of the loss) or maml_ext.reference"
            )
        return (None, None, *(grad_output * g for g in ctx.saved_tensors))


class _MlpMaml(torch.autograd.Function):
    """Lean autograd node for ``torch.ops.maml_ext.mlp_maml``.

    The op also has a ``torch.library.register_autograd`` formula (for torch.compile and direct
    ``torch.ops`` users); both share ``_registration.maml_backward``. This class only avoids the
    generic wrapper's per-call pytree handling, which costs as much as the kernel on small models.
    """

    @staticmethod
    def forward(ctx, config, xs, ys, ws, xq, yq, wq, *tensors):
        n, lr, per_step, steps, activation, loss, first_order, every = config
        params, lrs = list(tensors[:n]), list(tensors[n:])
        query_loss, adapted, checkpoints, query_grad = torch.ops.maml_ext.mlp_maml(
            params, lrs, lr, per_step, xs, ys, ws, xq, yq, wq, steps, activation, loss,
            first_order, every, True,
        )
        _registration.save_maml_context(ctx, params, lrs, lr, per_step, xs, ys, ws, steps,
                                        activation, loss, first_order, every, True, checkpoints,
                                        query_grad)
        return (query_loss, *adapted)

    @staticmethod
    def backward(ctx, grad_loss, *grad_adapted):
        d_params, d_lrs = _registration.maml_backward(ctx, grad_loss, grad_adapted)
        return (None,) * 7 + (*d_params, *d_lrs)


def svgd_step(
    particles: Sequence[Tensor], scores: Sequence[Tensor], score_scale: float, step_size: float
) -> list[Tensor]:
    """One SVGD step of every task's particle set at once, per tensor ``[T, M, ...]``:

        θ_m ← θ_m + ε φ(θ_m),   φ(θ_m) = 1/M Σ_j k(θ_j, θ_m) [∇log p(θ_j) + (2/h)(θ_m − θ_j)],

    with ∇log p = ``score_scale`` · ``scores``, k = exp(−‖θ_j − θ_m‖²/h) and the median bandwidth
    h = med²/log M of each task's M(M−1)/2 pairwise distances (no gradient through h); a particle
    is the concatenation of its slices of all tensors, ε = ``step_size``. With M = 1 this is
    θ + ε s ∇: BMAML with scores = ∇L and s = −1 is then MAML's SGD step.

    Args:
        particles: float32/float64 tensors ``[T, M, ...]`` (equal T, M, dtype and device).
        scores: shaped like ``particles`` (e.g. the loss gradients).
        score_scale, step_size: finite floats.

    Differentiable in particles and scores (exact, so a meta-gradient through SVGD steps is
    second order); the compiled backward is not itself differentiable (use the reference for higher
    orders). CPU tensors use the fused kernel; other devices run the composed-op reference.
    """
    check_types(particles=particles, scores=scores)
    if not (_fused(*particles) and particles[0].device.type == "cpu"):
        return reference.svgd_step(particles, scores, score_scale, step_size)
    moved, _, _ = torch.ops.maml_ext.svgd_step(list(particles), list(scores), float(score_scale), float(step_size))
    return list(moved)


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
    """BMAML's Chaser loss of an MLP and its exact gradient w.r.t. the M initial particles in one
    call, no autograd graph (as :func:`mlp_maml_grad` for MAML): returns (chase, the chasers'
    query losses ``[T, M]``, d chase / d params). ``params``: the particles, each MLP parameter
    with a leading particle dimension ``[M, ...]``; x/y as in :func:`mlp_maml` (no sample
    weights). The formula is :func:`maml_ext.reference.mlp_bmaml_chaser`'s.

    On CPU one engine pass per task: each SVGD step's forward state is kept for its HVP, the
    particles are mixed by the SVGD kernel between the per-particle passes, and the walk back
    runs ``svgd_step``'s vector-Jacobian product and one HVP per particle and step. Other devices
    (no compiled kernel there) run the reference.
    """
    check_types({"steps": steps, "leader_steps": leader_steps}, params=params)
    if not (_fused(*params) and params[0].device.type == "cpu"):
        return reference.mlp_bmaml_chaser(
            params, x_support, y_support, x_query, y_query, steps=steps, leader_steps=leader_steps, lr=lr,
            activation=activation, loss=loss, first_order=first_order,
        )
    with torch.no_grad():
        chase, query_loss, grads = torch.ops.maml_ext.mlp_bmaml_chaser(
            list(params), x_support, y_support, x_query, y_query, steps, leader_steps, float(lr), activation, loss,
            first_order,
        )
    return chase, query_loss, list(grads)
