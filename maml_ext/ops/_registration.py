"""Fake kernels (for torch.compile / opcheck) and autograd formulas of ``torch.ops.maml_ext``.

Imported only when the compiled extension is loaded; importing ``maml_ext._C`` defines the ops.
"""

from __future__ import annotations

import torch
from torch import Tensor

from maml_ext.reference import _checks

_LIB = "maml_ext::"
# The fake kernels run the reference's metadata checks (the same rules as the C++ checks), so a
# traced or meta-tensor call rejects what the compiled op rejects; they never read values.


# ---- inner_update -------------------------------------------------------------------------------


@torch.library.register_fake(_LIB + "inner_update")
def _inner_update_fake(params, grads, lrs, lr, step):
    _checks.check_inner_update(params, grads, lrs, lr, step, in_place=False)
    return [torch.empty_like(g) for g in grads]


@torch.library.register_fake(_LIB + "inner_update_")
def _inner_update_inplace_fake(params, grads, lrs, lr, step):
    _checks.check_inner_update(params, grads, lrs, lr, step, in_place=True)
    return None


def _inner_update_setup(ctx, inputs, output):
    params, grads, lrs, lr, step = inputs
    ctx.shared = [g.dim() == p.dim() + 1 for p, g in zip(params, grads)]
    ctx.lr, ctx.step, ctx.n_lrs = lr, step, len(lrs)
    ctx.save_for_backward(*grads, *lrs)


def _reduce_to(t: Tensor, shape: torch.Size) -> Tensor:
    """Sum a broadcast product back to the shape of the operand that was broadcast."""
    if t.shape == shape:
        return t
    if len(shape) == 0 or torch.Size(shape).numel() == 1:
        return t.sum().reshape(shape)
    return t.sum(dim=tuple(range(t.dim() - len(shape))))


def _inner_update_backward(ctx, grad_outs):
    saved = ctx.saved_tensors
    n = len(ctx.shared)
    grads, lrs = saved[:n], saved[n:]
    d_params, d_grads, d_lrs = [], [], []
    for i, go in enumerate(grad_outs):
        d_params.append(go.sum(0) if ctx.shared[i] else go)
        if not lrs:
            d_grads.append(-ctx.lr * go)
            continue
        a = lrs[i] if ctx.step is None else lrs[i][ctx.step]
        d_grads.append(-a * go)
        d_a = _reduce_to(-(go * grads[i]), a.shape)
        d_lrs.append(d_a if ctx.step is None else torch.zeros_like(lrs[i]).select_scatter(d_a, 0, ctx.step))
    return d_params, d_grads, d_lrs, None, None


torch.library.register_autograd(
    _LIB + "inner_update", _inner_update_backward, setup_context=_inner_update_setup
)


# ---- mlp_hvp ------------------------------------------------------------------------------------


@torch.library.register_fake(_LIB + "mlp_hvp")
def _mlp_hvp_fake(params, x, y, direction, sample_weight, activation, loss):
    _checks.check_hvp(params, x, y, direction, sample_weight, activation, loss)
    return (
        params[0].new_empty(x.shape[0]),
        [torch.empty_like(p) for p in params],
        [torch.empty_like(p) for p in params] if direction else [],
    )


def _mlp_hvp_setup(ctx, inputs, output):
    params, x, y, direction, weight, activation, loss = inputs
    ctx.n, ctx.n_direction = len(params), len(direction)
    ctx.activation, ctx.loss = activation, loss
    ctx.has_weight = weight is not None
    grads = output[1]
    ctx.save_for_backward(*params, *grads, x, y, *( [weight] if weight is not None else []))


def _mlp_hvp_backward(ctx, grad_loss, grad_grads, grad_hvps):
    saved = ctx.saved_tensors
    n = ctx.n
    params, grads = list(saved[:n]), saved[n : 2 * n]
    x, y = saved[2 * n], saved[2 * n + 1]
    weight = saved[2 * n + 2] if ctx.has_weight else None
    hvp = torch.ops.maml_ext.mlp_hvp
    # d/dθ <u, ∇L> = H u (H symmetric); d/dv <w, H v> = H w. Each HVP only when its input needs it.
    # Gradients are returned in the inputs' structure (a list per tensor-list input).
    d_params, h_w = [None] * n, [None] * ctx.n_direction
    if ctx.needs_input_grad[0]:
        _, _, h_u = hvp(params, x, y, list(grad_grads), weight, ctx.activation, ctx.loss)
        d_params = [
            g * grad_loss.reshape(-1, *([1] * (g.dim() - 1))) + hu for g, hu in zip(grads, h_u)
        ]
    if ctx.needs_input_grad[3] and grad_hvps:
        _, _, h_w = hvp(params, x, y, list(grad_hvps), weight, ctx.activation, ctx.loss)
    return d_params, None, None, h_w, None, None, None


torch.library.register_autograd(_LIB + "mlp_hvp", _mlp_hvp_backward, setup_context=_mlp_hvp_setup)


# ---- mlp_maml -----------------------------------------------------------------------------------


def _num_checkpoints(steps: int, every: int) -> int:
    return (steps - 1) // every if steps > 1 else 0


@torch.library.register_fake(_LIB + "mlp_maml")
def _mlp_maml_fake(params, lrs, lr, per_step, xs, ys, ws, xq, yq, wq, steps, activation, loss,
                   first_order, checkpoint_every, save_for_backward):
    _checks.check_maml(params, lrs, lr, per_step, xs, ys, ws, xq, yq, wq, steps, activation, loss, checkpoint_every)
    tasks = xs.shape[0]
    numel = sum(p.numel() for p in params)
    ref = params[0]
    return (
        ref.new_empty(tasks),
        [ref.new_empty((tasks, *p.shape)) for p in params],
        ref.new_empty(_num_checkpoints(steps, checkpoint_every) if save_for_backward else 0, tasks, numel),
        ref.new_empty(tasks if save_for_backward else 0, numel),
    )


def _mlp_maml_setup(ctx, inputs, output):
    (params, lrs, lr, per_step, xs, ys, ws, xq, yq, wq, steps, activation, loss, first_order,
     every, save) = inputs
    _, _, checkpoints, query_grad = output
    save_maml_context(ctx, params, lrs, lr, per_step, xs, ys, ws, steps, activation, loss,
                      first_order, every, save, checkpoints, query_grad)


def save_maml_context(ctx, params, lrs, lr, per_step, xs, ys, ws, steps, activation, loss,
                      first_order, every, save, checkpoints, query_grad) -> None:
    """What mlp_maml's backward needs (shared by the registered formula and ops._MlpMaml)."""
    ctx.args = (lr, per_step, steps, activation, loss, first_order, every)
    ctx.save = save
    ctx.n_params, ctx.n_lrs = len(params), len(lrs)
    ctx.has_weight = ws is not None
    ctx.save_for_backward(*params, *lrs, xs, ys, checkpoints, query_grad,
                          *([ws] if ws is not None else []))


def maml_backward(ctx, grad_loss, grad_adapted) -> tuple[list[Tensor], list[Tensor | None]]:
    """Meta-gradients w.r.t. params and the lr tensors (None where not needed)."""
    if not ctx.save:
        raise RuntimeError(
            "mlp_maml was called with save_for_backward=False; call maml_ext.ops.mlp_maml with "
            "grad enabled and params (or lr tensors) requiring grad"
        )
    saved = ctx.saved_tensors
    n, m = ctx.n_params, ctx.n_lrs
    params, lrs = list(saved[:n]), list(saved[n : n + m])
    xs, ys, checkpoints, query_grad = saved[n + m : n + m + 4]
    ws = saved[n + m + 4] if ctx.has_weight else None
    lr, per_step, steps, activation, loss, first_order, every = ctx.args
    need_lr_grad = m > 0 and any(t.requires_grad for t in lrs)
    d_params, d_lrs = torch.ops.maml_ext.mlp_maml_backward(
        grad_loss, list(grad_adapted), params, lrs, lr, per_step, xs, ys, ws, checkpoints,
        query_grad, steps, activation, loss, first_order, every, need_lr_grad,
    )
    # Tensor[] inputs need a list of the same length back (None where there is no gradient).
    return list(d_params), (list(d_lrs) if d_lrs else [None] * m)


def _mlp_maml_backward(ctx, grad_loss, grad_adapted, grad_checkpoints, grad_query_grad):
    d_params, d_lrs = maml_backward(ctx, grad_loss, grad_adapted)
    return (d_params, d_lrs) + (None,) * 14


torch.library.register_autograd(_LIB + "mlp_maml", _mlp_maml_backward, setup_context=_mlp_maml_setup)


@torch.library.register_fake(_LIB + "mlp_maml_backward")
def _mlp_maml_backward_fake(grad_loss, grad_adapted, params, lrs, lr, per_step, xs, ys, ws,
                            checkpoints, query_grad, steps, activation, loss, first_order,
                            checkpoint_every, need_lr_grad):
    _checks.check_maml(params, lrs, lr, per_step, xs, ys, ws, None, None, None, steps, activation, loss,
                       checkpoint_every)
    _checks.check_backward(grad_loss, grad_adapted, params, checkpoints, query_grad, xs.shape[0],
                           steps, checkpoint_every)
    lr_grads = [torch.empty_like(a) for a in lrs] if need_lr_grad and lrs else []
    return [torch.empty_like(p) for p in params], lr_grads


@torch.library.register_fake(_LIB + "mlp_maml_grad")
def _mlp_maml_grad_fake(params, lrs, lr, per_step, xs, ys, ws, xq, yq, wq, steps, activation, loss,
                        first_order, loss_weight):
    _checks.check_maml(params, lrs, lr, per_step, xs, ys, ws, xq, yq, wq, steps, activation, loss, 1)
    _checks.check_loss_weight(loss_weight, params[0], xs.shape[0])
    return (params[0].new_empty(xs.shape[0]), [torch.empty_like(p) for p in params],
            [torch.empty_like(a) for a in lrs])



@torch.library.register_fake(_LIB + "mlp_maml_adam_")
def _mlp_maml_adam_fake(params, xs, ys, ws, xq, yq, wq, lr, steps, activation, loss, first_order, loss_weight,
                        exp_avgs, exp_avg_sqs, step_counts, adam_lr, beta1, beta2, weight_decay, eps, maximize,
                        clip_value, return_grads):
    _checks.check_maml(params, [], lr, False, xs, ys, ws, xq, yq, wq, steps, activation, loss, 1)
    _checks.check_loss_weight(loss_weight, params[0], xs.shape[0])
    _checks.check_adam(params, exp_avgs, exp_avg_sqs, step_counts, adam_lr, beta1, beta2, weight_decay, eps,
                       clip_value)
    return (params[0].new_empty(()), params[0].new_empty((), dtype=torch.bool),
            [torch.empty_like(p) for p in params] if return_grads else [])

@torch.library.register_fake(_LIB + "mlp_maml_eval")
def _mlp_maml_eval_fake(params, lrs, lr, per_step, xs, ys, ws, xq, yq, wq, steps, activation, loss, outputs):
    widths = _checks.check_maml(params, lrs, lr, per_step, xs, ys, ws, xq, yq, wq, steps, activation, loss, 1)
    return (params[0].new_empty(steps + 1, xs.shape[0]),
            params[0].new_empty(steps + 1 if outputs else 0, xs.shape[0], xq.shape[1], widths[-1]))


@torch.library.register_fake(_LIB + "mlp_bmaml_chaser")
def _mlp_bmaml_chaser_fake(params, xs, ys, xq, yq, steps, leader_steps, lr, activation, loss, first_order):
    _checks.check_bmaml_chaser(params, xs, ys, xq, yq, steps, leader_steps, lr, activation, loss)
    return (params[0].new_empty(()), params[0].new_empty(xs.shape[0], params[0].shape[0]),
            [torch.empty_like(p) for p in params])


def _not_differentiable(ctx, *grads):
    raise RuntimeError(
        "maml_ext.ops.mlp_maml: its backward (the exact meta-gradient) is not itself "
        "differentiable. For higher-order derivatives use maml_ext.reference.mlp_maml."
    )


torch.library.register_autograd(
    _LIB + "mlp_maml_backward", _not_differentiable, setup_context=lambda ctx, inputs, output: None
)


# ---- svgd_step ----------------------------------------------------------------------------------


@torch.library.register_fake(_LIB + "svgd_step")
def _svgd_step_fake(particles, scores, score_scale, step_size):
    _checks.check_svgd_scalars(score_scale, step_size)
    _checks.check_svgd(particles, scores, "scores")
    tasks, m = particles[0].shape[:2]
    ref = particles[0]
    return [torch.empty_like(p) for p in particles], ref.new_empty(tasks, m, m), ref.new_empty(tasks)


def _svgd_step_setup(ctx, inputs, output):
    particles, scores, score_scale, step_size = inputs
    _, kernel, bandwidth = output
    ctx.n, ctx.scales = len(particles), (score_scale, step_size)
    ctx.mark_non_differentiable(kernel, bandwidth)  # diagnostics, not part of the step
    ctx.save_for_backward(*particles, *scores, kernel, bandwidth)


def _svgd_step_backward(ctx, grad_out, grad_kernel, grad_bandwidth):
    saved = ctx.saved_tensors
    n = ctx.n
    particles, scores = list(saved[:n]), list(saved[n : 2 * n])
    grad_out = [torch.zeros_like(p) if g is None else g for g, p in zip(grad_out, particles)]
    d_particles, d_scores = torch.ops.maml_ext.svgd_step_backward(
        grad_out, particles, scores, *ctx.scales, saved[2 * n], saved[2 * n + 1]
    )
    return list(d_particles), list(d_scores), None, None


torch.library.register_autograd(_LIB + "svgd_step", _svgd_step_backward, setup_context=_svgd_step_setup)


@torch.library.register_fake(_LIB + "svgd_step_backward")
def _svgd_step_backward_fake(grad_out, particles, scores, score_scale, step_size, kernel, bandwidth):
    _checks.check_svgd_scalars(score_scale, step_size)
    _checks.check_svgd(particles, scores, "scores")
    _checks.check_svgd(particles, grad_out, "grad_out")
    return [torch.empty_like(p) for p in particles], [torch.empty_like(p) for p in particles]


def _svgd_backward_not_differentiable(ctx, *grads):
    raise RuntimeError(
        "maml_ext.ops.svgd_step: its backward is not itself differentiable. For higher-order "
        "derivatives use maml_ext.reference.svgd_step."
    )


torch.library.register_autograd(
    _LIB + "svgd_step_backward", _svgd_backward_not_differentiable,
    setup_context=lambda ctx, inputs, output: None,
)
