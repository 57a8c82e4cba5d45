"""Bad input raises the same clear error, naming the argument, on the fused and reference paths."""

import math

import pytest
import torch

from _ops_helpers import cuda_usable, gen, mlp_batch, mlp_params, randn
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
    "lr_negative": (update_call(lr=lambda a: -0.1), ValueError, r"(^|\s)lr: "),
    "lr_nan": (update_call(lr=lambda a: math.nan), ValueError, r"(^|\s)lr: "),
    "lr_inf": (update_call(lr=lambda a: math.inf), ValueError, r"(^|\s)lr: "),
    "lrs_negative": (update_call(lr=lambda a: with_item(a, 1, -a[1])), ValueError, r"lrs\[1\]"),
    "lrs_nan": (update_call(lr=lambda a: with_item(a, 0, a[0].clone().fill_(math.nan))), ValueError, r"lrs\[0\]"),
    "lrs_inf": (update_call(lr=lambda a: with_item(a, 1, a[1] + math.inf)), ValueError, r"lrs\[1\]"),
    "lr_single_tensor": (update_call(lr=lambda a: a[1]), TypeError, r"lr"),
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
def test_inner_update_in_place_rejects_negative_lr(mod):
    params, grads, _ = update_inputs()
    per_task = [g.clone() for g in grads]
    with pytest.raises(ValueError, match=r"(^|\s)lr: "):
        mod.inner_update_(per_task, grads, -1.0)


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
                checkpoint=False, w_support=None, w_query=None)


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
    "checkpoint_zero": (maml_call(checkpoint=lambda c: 0), ValueError, r"checkpoint"),
    "checkpoint_negative": (maml_call(checkpoint=lambda c: -2), ValueError, r"checkpoint"),
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
    "lr_negative": (maml_call(lr=lambda a: -0.01), ValueError, r"(^|\s)lr: "),
    "lr_nan": (maml_call(lr=lambda a: math.nan), ValueError, r"(^|\s)lr: "),
    "lr_single_tensor": (maml_call(lr=lambda a: a[0]), TypeError, r"lr"),
    "lrs_count": (maml_call(lr=lambda a: a[:3]), ValueError, r"lrs"),
    "lrs_negative": (maml_call(lr=lambda a: with_item(a, 2, -a[2])), ValueError, r"lrs\[2\]"),
    "lrs_inf": (maml_call(lr=lambda a: with_item(a, 1, a[1] + math.inf)), ValueError, r"lrs\[1\]"),
    "lrs_shape": (maml_call(lr=lambda a: with_item(a, 0, torch.full((5,), 0.1, dtype=torch.float64))),
                  ValueError, r"lrs\[0\]"),
    "lrs_dtype": (maml_call(lr=lambda a: with_item(a, 3, a[3].float())), TypeError, r"lrs\[3\]"),
    "per_step_without_step_dim": (maml_call(per_step_lr=lambda p: True), ValueError, r"lrs\[0\]"),
    "per_step_wrong_steps": (maml_call(per_step_lr=lambda p: True, lr=lambda a: per_step(a, 3)),
                             ValueError, r"lrs\[0\]"),
    "per_step_negative": (maml_call(per_step_lr=lambda p: True,
                                    lr=lambda a: with_item(per_step(a), 1, -per_step(a)[1])),
                          ValueError, r"lrs\[1\]"),
    "x_query_device": (maml_call(x_query=elsewhere), RuntimeError, r"query"),
    "lrs_device": (maml_call(lr=lambda a: with_item(a, 1, elsewhere(a[1]))), RuntimeError, r"lrs\[1\]"),
}


@modules
@pytest.mark.parametrize("case", list(MAML_CASES))
def test_mlp_maml_rejects(mod, case):
    check_rejects(mod, case, MAML_CASES)


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
