"""Bad input raises the same clear error, naming the argument, on the fused and reference paths."""

import math

import pytest
import torch

from _ops_helpers import cuda_usable, gen, mlp_batch, mlp_params, randn, requires_extension
from maml_ext import ops, reference

modules = pytest.mark.parametrize("mod", [ops, reference], ids=["fused", "reference"])

T = 3
WIDTHS = (2, 5, 3)


def elsewhere(t):
    """``t`` on another device: CUDA when usable, else the meta device."""
    return t.to("cuda") if cuda_usable() else torch.empty(t.shape, dtype=t.dtype, device="meta")


def check_rejects(mod, case, table):
    call, exc, match = table[case]
    if "device" in case and mod is ops and ops.extension_available() and not cuda_usable():
        # The dispatcher sends a CPU/meta mix to the fake (meta) kernels, never to the checks.
        pytest.skip("a device mix reaches the compiled kernels' checks only with CUDA")
    with pytest.raises(exc, match=match):
        call(mod)


# ---- inner_update -------------------------------------------------------------------------------


def update_inputs():
    g = gen(0)
    params = [randn(g, 3, 2), randn(g, 3)]
    grads = [randn(g, T, 3, 2), randn(g, T, 3)]
    lrs = [randn(g, 3, 2).abs(), randn(g).abs()]
    return params, grads, lrs


def with_item(items, i, value):
    items = list(items)
    items[i] = value
    return items


def update_call(**change):
    """Call inner_update with one argument replaced; `lr` defaults to valid per-parameter tensors."""
    def call(mod):
        params, grads, lrs = update_inputs()
        args = dict(params=params, grads=grads, lr=lrs, step=None)
        for key, fn in change.items():
            args[key] = fn(args[key])
        return mod.inner_update(args["params"], args["grads"], args["lr"], args["step"])
    return call


UPDATE_CASES = {
    "grads_count": (update_call(grads=lambda g: g[:1]), ValueError, r"grads"),
    "lrs_count": (update_call(lr=lambda a: a[:1]), ValueError, r"lrs"),
    "grads_shape": (update_call(grads=lambda g: with_item(g, 1, g[1][:, :2])), ValueError, r"grads\[1\]"),
    "grads_rank": (update_call(grads=lambda g: with_item(g, 0, g[0][None])), ValueError, r"grads\[0\]"),
    "tasks_mismatch": (update_call(grads=lambda g: with_item(g, 1, g[1][:2])), ValueError, r"grads\[1\]"),
    "grads_dtype": (update_call(grads=lambda g: with_item(g, 0, g[0].float())), TypeError, r"grads\[0\]"),
    "int_params": (
        update_call(params=lambda p: with_item(p, 0, p[0].long()),
                    grads=lambda g: with_item(g, 0, g[0].long()), lr=lambda a: 0.1),
        TypeError, r"params\[0\]",
    ),
    "lrs_dtype": (update_call(lr=lambda a: with_item(a, 0, a[0].float())), TypeError, r"lrs\[0\]"),
    "lrs_shape": (update_call(lr=lambda a: with_item(a, 0, a[0][:2])), ValueError, r"lrs\[0\]"),
    "lr_nan": (update_call(lr=lambda a: math.nan), ValueError, r"(^|\s)lr: "),
    "lr_inf": (update_call(lr=lambda a: math.inf), ValueError, r"(^|\s)lr: "),
    "lr_single_tensor": (update_call(lr=lambda a: a[1]), TypeError, r"lr"),
    # A per-step rate [T=3, 3, 2] without a step: the step dimension is not a task dimension.
    "per_step_lrs_without_step": (update_call(lr=lambda a: [x.expand(T, *x.shape) for x in a]),
                                  ValueError, r"lrs\[0\]"),
    "lrs_transposed": (update_call(lr=lambda a: with_item(a, 0, a[0].t())), ValueError, r"lrs\[0\]"),
    "step_without_step_dim": (update_call(step=lambda s: 1), ValueError, r"lrs\[1\]"),
    "step_out_of_range": (
        update_call(lr=lambda a: [x.expand(2, *x.shape) for x in a], step=lambda s: 2),
        ValueError, r"lrs\[0\]",
    ),
    "grads_device": (update_call(grads=lambda g: with_item(g, 1, elsewhere(g[1]))), RuntimeError, r"grads\[1\]"),
    "lrs_device": (update_call(lr=lambda a: with_item(a, 0, elsewhere(a[0]))), RuntimeError, r"lrs\[0\]"),
}


@modules
@pytest.mark.parametrize("case", list(UPDATE_CASES))
def test_inner_update_rejects(mod, case):
    check_rejects(mod, case, UPDATE_CASES)


@modules
def test_inner_update_in_place_rejects_non_finite_lr(mod):
    params, grads, _ = update_inputs()
    per_task = [g.clone() for g in grads]
    with pytest.raises(ValueError, match=r"(^|\s)lr: expected a finite value"):
        mod.inner_update_(per_task, grads, math.inf)


# ---- mlp_hvp ------------------------------------------------------------------------------------


def hvp_inputs(loss="mse"):
    g = gen(1)
    params = mlp_params(g, WIDTHS, loss, tasks=T)
    x, y = mlp_batch(g, WIDTHS, loss, T, 4)
    direction = [torch.ones_like(p) for p in params]
    return dict(params=params, x=x, y=y, direction=direction, activation="relu", loss=loss,
                sample_weight=None)


def hvp_call(base_loss="mse", **change):
    def call(mod):
        args = hvp_inputs(base_loss)
        for key, fn in change.items():
            args[key] = fn(args[key])
        return mod.mlp_hvp(args.pop("params"), args.pop("x"), args.pop("y"), args.pop("direction"), **args)
    return call


HVP_CASES = {
    "activation": (hvp_call(activation=lambda a: "gelu"), ValueError, r"activation"),
    "loss": (hvp_call(loss=lambda a: "hinge"), ValueError, r"loss"),
    "x_rank": (hvp_call(x=lambda x: x[0]), ValueError, r"(^|\s)x: "),
    "params_count": (hvp_call(params=lambda p: p[:3]), ValueError, r"params"),
    "params_tasks": (hvp_call(params=lambda p: with_item(p, 2, p[2][:2])), ValueError, r"params\[2\]"),
    "weight_rank": (hvp_call(params=lambda p: with_item(p, 0, p[0][:, 0])), ValueError, r"params\[0\]"),
    "bias_size": (hvp_call(params=lambda p: with_item(p, 1, p[1][:, :4])), ValueError, r"params\[1\]"),
    "layer_widths": (hvp_call(params=lambda p: with_item(p, 2, p[2][:, :, :4])), ValueError, r"params\[2\]"),
    "params_dtype": (hvp_call(params=lambda p: with_item(p, 1, p[1].float())), TypeError, r"params\[1\]"),
    "half_params": (hvp_call(params=lambda p: [t.half() for t in p], x=lambda x: x.half(),
                             y=lambda y: y.half(), direction=lambda d: [t.half() for t in d]),
                    TypeError, r"params\[0\]"),
    "x_features": (hvp_call(x=lambda x: x[:, :, :1]), ValueError, r"support x"),
    "no_tasks": (hvp_call(params=lambda p: [t[:0] for t in p], x=lambda x: x[:0], y=lambda y: y[:0],
                          direction=lambda d: [t[:0] for t in d]), ValueError, r"support x.*at least one task"),
    "no_examples": (hvp_call(x=lambda x: x[:, :0], y=lambda y: y[:, :0]), ValueError,
                    r"support x.*at least one example"),
    "zero_width_hidden": (hvp_call(params=lambda p: [p[0][:, :0], p[1][:, :0], p[2][:, :, :0], p[3]],
                                   direction=lambda d: [d[0][:, :0], d[1][:, :0], d[2][:, :, :0], d[3]]),
                          ValueError, r"params\[0\] \(W1\).*at least one input and one output"),
    "zero_inputs": (hvp_call(params=lambda p: with_item(p, 0, p[0][:, :, :0]), x=lambda x: x[:, :, :0],
                             direction=lambda d: with_item(d, 0, d[0][:, :, :0])),
                    ValueError, r"params\[0\] \(W1\).*at least one input and one output"),
    "x_dtype": (hvp_call(x=lambda x: x.float()), TypeError, r"support x"),
    "y_examples": (hvp_call(y=lambda y: y[:, :3]), ValueError, r"support y"),
    "y_tasks": (hvp_call(y=lambda y: y[:2]), ValueError, r"support y"),
    "y_outputs": (hvp_call(y=lambda y: y[:, :, :2]), ValueError, r"support y"),
    "y_dtype": (hvp_call(y=lambda y: y.float()), TypeError, r"support y"),
    "sample_weight_shape": (hvp_call(sample_weight=lambda w: torch.ones(T, 5, dtype=torch.float64)),
                            ValueError, r"support weight"),
    "sample_weight_dtype": (hvp_call(sample_weight=lambda w: torch.ones(T, 4)), TypeError, r"support weight"),
    "labels_too_large": (hvp_call("cross_entropy", y=lambda y: y + 3), ValueError, r"support y.*class labels"),
    "labels_negative": (hvp_call("cross_entropy", y=lambda y: y - 3), ValueError, r"support y.*class labels"),
    "labels_dtype": (hvp_call("cross_entropy", y=lambda y: y.double()), TypeError, r"support y"),
    "log_std_shape": (hvp_call("gaussian_nll", params=lambda p: with_item(p, 4, p[4][:, :2]),
                               direction=lambda d: with_item(d, 4, d[4][:, :2])),
                      ValueError, r"params\[4\] \(log_std\)"),
    "direction_count": (hvp_call(direction=lambda d: d[:3]), ValueError, r"direction"),
    "direction_shape": (hvp_call(direction=lambda d: with_item(d, 1, d[1][:, :2])), ValueError, r"direction\[1\]"),
    "direction_dtype": (hvp_call(direction=lambda d: with_item(d, 1, d[1].float())), TypeError, r"direction\[1\]"),
    "x_device": (hvp_call(x=elsewhere), RuntimeError, r"support"),
    "direction_device": (hvp_call(direction=lambda d: with_item(d, 1, elsewhere(d[1]))), RuntimeError,
                         r"direction\[1\]"),
    "params_device": (hvp_call(params=lambda p: with_item(p, 3, elsewhere(p[3]))), RuntimeError, r"params\[3\]"),
}


@modules
@pytest.mark.parametrize("case", list(HVP_CASES))
def test_mlp_hvp_rejects(mod, case):
    check_rejects(mod, case, HVP_CASES)


# ---- mlp_maml -----------------------------------------------------------------------------------


def maml_inputs(loss="mse"):
    g = gen(2)
    params = mlp_params(g, WIDTHS, loss)
    xs, ys = mlp_batch(g, WIDTHS, loss, T, 4)
    xq, yq = mlp_batch(g, WIDTHS, loss, T, 6)
    lrs = [torch.full((), 0.1, dtype=torch.float64) for _ in params]
    return dict(params=params, x_support=xs, y_support=ys, x_query=xq, y_query=yq, lr=lrs, steps=2,
                per_step_lr=False, activation="tanh", loss=loss, first_order=False,
                snapshots=False, w_support=None, w_query=None)


def maml_call(base_loss="mse", **change):
    def call(mod):
        args = maml_inputs(base_loss)
        for key, fn in change.items():
            args[key] = fn(args[key])
        pos = [args.pop(k) for k in ("params", "x_support", "y_support", "x_query", "y_query")]
        return mod.mlp_maml(*pos, **args)
    return call


def per_step(lrs, steps=2):
    return [a.expand(steps, *a.shape).clone() for a in lrs]


MAML_CASES = {
    "activation": (maml_call(activation=lambda a: "sigmoid"), ValueError, r"activation"),
    "loss": (maml_call(loss=lambda a: "l1"), ValueError, r"loss"),
    "steps": (maml_call(steps=lambda s: 0), ValueError, r"steps"),
    "snapshots_zero": (maml_call(snapshots=lambda c: 0), ValueError, r"snapshots"),
    "snapshots_negative": (maml_call(snapshots=lambda c: -2), ValueError, r"snapshots"),
    "params_with_task_dim": (maml_call(params=lambda p: [t.expand(T, *t.shape) for t in p]),
                             ValueError, r"params\[0\]"),
    "params_count": (maml_call(params=lambda p: p[:3], lr=lambda a: 0.1), ValueError, r"params"),
    "x_support_rank": (maml_call(x_support=lambda x: x[0]), ValueError, r"x_support"),
    "y_support_examples": (maml_call(y_support=lambda y: y[:, :2]), ValueError, r"support y"),
    "x_query_features": (maml_call(x_query=lambda x: x[:, :, :1]), ValueError, r"query x"),
    "x_query_tasks": (maml_call(x_query=lambda x: x[:2], y_query=lambda y: y[:2]), ValueError, r"query x"),
    "y_query_outputs": (maml_call(y_query=lambda y: y[:, :, :1]), ValueError, r"query y"),
    "x_query_dtype": (maml_call(x_query=lambda x: x.float()), TypeError, r"query x"),
    "w_support_shape": (maml_call(w_support=lambda w: torch.ones(T, 6, dtype=torch.float64)),
                        ValueError, r"support weight"),
    "w_query_shape": (maml_call(w_query=lambda w: torch.ones(T, 4, dtype=torch.float64)),
                      ValueError, r"query weight"),
    "query_labels": (maml_call("cross_entropy", y_query=lambda y: y + 3), ValueError, r"query y.*class labels"),
    "support_labels": (maml_call("cross_entropy", y_support=lambda y: -y - 1), ValueError,
                       r"support y.*class labels"),
    "lr_nan": (maml_call(lr=lambda a: math.nan), ValueError, r"(^|\s)lr: "),
    "lr_inf": (maml_call(lr=lambda a: -math.inf), ValueError, r"(^|\s)lr: expected a finite value"),
    # W1 is [5, 2]: ten entries in the shape [2, 5] are not its shape.
    "lrs_right_numel_wrong_shape": (maml_call(lr=lambda a: with_item(a, 0, torch.full((2, 5), 0.1, dtype=torch.float64))),
                                    ValueError, r"lrs\[0\]"),
    "per_step_lrs_wrong_shape": (maml_call(per_step_lr=lambda p: True,
                                           lr=lambda a: with_item(per_step(a), 0, torch.full((2, 2, 5), 0.1, dtype=torch.float64))),
                                 ValueError, r"lrs\[0\]"),
    "lr_single_tensor": (maml_call(lr=lambda a: a[0]), TypeError, r"lr"),
    "lrs_count": (maml_call(lr=lambda a: a[:3]), ValueError, r"lrs"),
    "lrs_shape": (maml_call(lr=lambda a: with_item(a, 0, torch.full((5,), 0.1, dtype=torch.float64))),
                  ValueError, r"lrs\[0\]"),
    "lrs_dtype": (maml_call(lr=lambda a: with_item(a, 3, a[3].float())), TypeError, r"lrs\[3\]"),
    "per_step_without_step_dim": (maml_call(per_step_lr=lambda p: True), ValueError, r"lrs\[0\]"),
    "per_step_wrong_steps": (maml_call(per_step_lr=lambda p: True, lr=lambda a: per_step(a, 3)),
                             ValueError, r"lrs\[0\]"),
    "x_query_device": (maml_call(x_query=elsewhere), RuntimeError, r"query"),
    "lrs_device": (maml_call(lr=lambda a: with_item(a, 1, elsewhere(a[1]))), RuntimeError, r"lrs\[1\]"),
}


@modules
@pytest.mark.parametrize("case", list(MAML_CASES))
def test_mlp_maml_rejects(mod, case):
    check_rejects(mod, case, MAML_CASES)


def first_line_of_error(call, mod):
    with pytest.raises(Exception) as info:
        call(mod)
    return type(info.value), str(info.value).splitlines()[0]


SAME_MESSAGE_CASES = [
    pytest.param(table, case, id=f"{name}-{case}")
    for name, table in (("update", UPDATE_CASES), ("hvp", HVP_CASES), ("maml", MAML_CASES))
    for case in table if "device" not in case
]


@requires_extension  # compares the compiled ops' messages with the reference's
@pytest.mark.parametrize("table, case", SAME_MESSAGE_CASES)
def test_both_paths_give_the_same_message(table, case):
    call = table[case][0]
    assert first_line_of_error(call, ops) == first_line_of_error(call, reference)


@modules
def test_valid_inputs_pass(mod):
    """The unmodified inputs of the tables above are accepted (so each case tests one change)."""
    update_call()(mod)
    update_call(lr=lambda a: 0.1)(mod)
    update_call(lr=lambda a: [x.expand(2, *x.shape) for x in a], step=lambda s: 1)(mod)
    for loss in ("mse", "cross_entropy", "gaussian_nll"):
        hvp_call(loss, sample_weight=lambda w: torch.ones(T, 4, dtype=torch.float64))(mod)
        maml_call(loss, w_query=lambda w: torch.ones(T, 6, dtype=torch.float64))(mod)
    maml_call(per_step_lr=lambda p: True, lr=per_step)(mod)


# ---- mlp_maml_backward: incoming gradients and saved tensors (issue 12, defect 3) ---------------


def backward_call(tasks=T, **change):
    """mlp_maml_backward with synthetic inputs of the right sizes for ``tasks`` tasks, steps=3
    (two saved snapshots), one argument replaced; on ``device`` (meta: the fake kernel)."""
    def call(op, device="cpu"):
        g = gen(3)
        params = mlp_params(g, WIDTHS)
        numel = sum(p.numel() for p in params)
        xs, ys = mlp_batch(g, WIDTHS, "mse", tasks, 2)
        args = dict(
            grad_loss=torch.ones(tasks, dtype=torch.float64),
            grad_adapted=[torch.zeros(tasks, *p.shape, dtype=torch.float64) for p in params],
            checkpoints=torch.zeros(2, tasks, numel, dtype=torch.float64),
            query_grad=torch.zeros(tasks, numel, dtype=torch.float64),
        )
        for key, fn in change.items():
            args[key] = fn(args[key])
        params, xs, ys, args = torch.utils._pytree.tree_map(lambda t: t.to(device), (params, xs, ys, args))
        return op(args["grad_loss"], args["grad_adapted"], params, [], 0.1, False, xs, ys, None,
                  args["checkpoints"], args["query_grad"], 3, "tanh", "mse", False, 1, False)
    return call


BACKWARD_CASES = {
    "grad_loss_shape": (backward_call(grad_loss=lambda t: t[:2]), r"grad_loss"),
    "grad_loss_dtype": (backward_call(grad_loss=lambda t: t.float()), r"grad_loss"),
    "grad_adapted_count": (backward_call(grad_adapted=lambda a: a[:3]), r"grad_adapted"),
    "grad_adapted_tasks": (backward_call(grad_adapted=lambda a: with_item(a, 2, a[2][:2])), r"grad_adapted\[2\]"),
    "grad_adapted_shape": (backward_call(grad_adapted=lambda a: with_item(a, 0, a[0][:, :, :1])),
                           r"grad_adapted\[0\]"),
    "grad_adapted_dtype": (backward_call(grad_adapted=lambda a: with_item(a, 1, a[1].float())),
                           r"grad_adapted\[1\]"),
    "checkpoints_count": (backward_call(checkpoints=lambda c: c[:1]), r"checkpoints"),
    "checkpoints_tasks": (backward_call(checkpoints=lambda c: c[:, :2]), r"checkpoints"),
    "checkpoints_numel": (backward_call(checkpoints=lambda c: c[:, :, :-1]), r"checkpoints"),
    "query_grad_shape": (backward_call(query_grad=lambda q: q[:, :-1]), r"query_grad"),
    # The reported out-of-bounds reads: many tasks, gradients and snapshots for only 4 of them.
    "large_T_grad_adapted": (backward_call(20000, grad_adapted=lambda a: [t[:4] for t in a]),
                             r"grad_adapted\[0\]"),
    "large_T_checkpoints": (backward_call(20000, checkpoints=lambda c: c[:, :4]), r"checkpoints"),
}
BACKWARD_OPS = pytest.mark.parametrize("op_name", ["mlp_maml_backward", "_mlp_maml_backward_batched"])


@requires_extension  # a compiled op (its autograd formula calls it; no reference twin)
@BACKWARD_OPS
@pytest.mark.parametrize("device", ["cpu", "meta"], ids=["kernel", "fake"])
@pytest.mark.parametrize("case", list(BACKWARD_CASES))
def test_mlp_maml_backward_rejects(op_name, device, case):
    call, match = BACKWARD_CASES[case]
    with pytest.raises((ValueError, TypeError), match=match):
        call(getattr(torch.ops.maml_ext, op_name), device)


@requires_extension
@BACKWARD_OPS
@pytest.mark.parametrize("device", ["cpu", "meta"], ids=["kernel", "fake"])
def test_mlp_maml_backward_valid_sizes_pass(op_name, device):
    d_params, _ = backward_call()(getattr(torch.ops.maml_ext, op_name), device)
    assert [d.shape for d in d_params] == [p.shape for p in mlp_params(gen(3), WIDTHS)]


def to_meta(tree):
    return torch.utils._pytree.tree_map(
        lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t, tree)


@requires_extension
def test_fake_kernels_check_metadata_and_read_no_values():
    """On meta tensors (torch.compile's fake tensors alike) the registered ops run their fake
    kernels: cross-entropy labels (values) are not read, shapes are checked as the kernels do."""
    args = to_meta(maml_inputs("cross_entropy"))
    op_args = (args["params"], args["lr"], 0.0, False, args["x_support"], args["y_support"], None,
               args["x_query"], args["y_query"], None, 2, "tanh", "cross_entropy", False)
    loss, grads, lr_grads = torch.ops.maml_ext.mlp_maml_grad(*op_args, torch.ones(T, device="meta", dtype=torch.float64))
    assert loss.device.type == "meta" and loss.shape == (T,)
    assert [g.shape for g in grads] == [p.shape for p in args["params"]]
    bad_lrs = with_item(args["lr"], 0, torch.full((2, 5), 0.1, dtype=torch.float64, device="meta"))
    with pytest.raises(ValueError, match=r"lrs\[0\]"):
        torch.ops.maml_ext.mlp_maml(*op_args[:1], bad_lrs, *op_args[2:], 1, True)
    with pytest.raises(ValueError, match=r"lrs\[0\]"):  # [3] is not a trailing shape of [3, 2]
        torch.ops.maml_ext.inner_update(to_meta(update_inputs()[0]), to_meta(update_inputs()[1]),
                                        [torch.ones(3, device="meta", dtype=torch.float64)] * 2, 0.0, None)


@modules
def test_meta_tensors_through_the_public_ops(mod):
    """ops.* on meta tensors (no compiled kernels for meta: the reference runs) reads no values."""
    hvp = hvp_inputs("cross_entropy")
    loss, grads, hvps = mod.mlp_hvp(*to_meta([hvp["params"], hvp["x"], hvp["y"], hvp["direction"]]),
                                    activation="relu", loss="cross_entropy")
    assert loss.device.type == "meta" and [h.shape for h in hvps] == [p.shape for p in hvp["params"]]


# ---- learning rates of any sign, non-contiguous in-place updates (issue 12, defects 1 and 4) ----


@modules
def test_negative_learning_rates_follow_the_closed_form(mod):
    """Meta-SGD's learned α has no sign constraint: a negative α steps up the gradient."""
    params, grads, lrs = update_inputs()
    lrs = [-a for a in lrs]
    out = mod.inner_update(params, grads, lrs)
    for p, g, a, o in zip(params, grads, lrs, out):
        torch.testing.assert_close(o, p - a * g, rtol=0, atol=0)
    out = mod.inner_update(params, grads, -0.25)
    for p, g, o in zip(params, grads, out):
        torch.testing.assert_close(o, p + 0.25 * g, rtol=0, atol=0)


@modules
def test_mlp_maml_accepts_negative_learning_rates(mod):
    query_loss, _ = maml_call(lr=lambda a: [-x for x in a])(mod)
    assert torch.isfinite(query_loss).all() and query_loss.shape == (T,)
    query_loss, _ = maml_call(lr=lambda a: -0.05)(mod)
    assert torch.isfinite(query_loss).all()


@modules
def test_in_place_update_of_non_contiguous_parameters(mod):
    g = gen(4)
    base = randn(g, 4, 6)
    params = [base.t(), randn(g, 6, 2)[:, 0]]  # a transposed and a strided view
    assert not any(p.is_contiguous() for p in params)
    grads = [randn(g, *p.shape) for p in params]
    lrs = [torch.full((), 0.3, dtype=torch.float64), randn(g, 6).abs()]
    expected = [p - a * gr for p, a, gr in zip(params, lrs, grads)]
    mod.inner_update_(params, grads, lrs)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p, e, rtol=0, atol=1e-15)
    torch.testing.assert_close(base.t(), expected[0], rtol=0, atol=1e-15)  # written through the view


@modules
def test_mlp_maml_grad_names_an_unbatched_x_support_before_its_loss_weight(mod):
    """A task without its task dimension: the error names x_support (MAML.meta_loss passes a
    loss_weight of the batch's first size, which is then no task count)."""
    args = maml_inputs()
    weight = torch.full((T,), 1.0 / T, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"x_support: expected \[T, K, in\], got shape \[4, 2\]"):
        mod.mlp_maml_grad(args["params"], args["x_support"][0], args["y_support"][0], args["x_query"][0],
                          args["y_query"][0], lr=0.1, steps=2, activation="tanh", loss_weight=weight)
