"""torch.library.opcheck on every torch.ops.maml_ext operator: schema, fake kernels, autograd
registration and AOT dispatch."""

import pytest
import torch

from _ops_helpers import gen, leaves, like, mlp_batch, mlp_params, randn, requires_extension

pytestmark = requires_extension


def maml_args(loss="gaussian_nll", lr_kind="elementwise", steps=3, every=2, save=True):
    """Positional arguments of torch.ops.maml_ext.mlp_maml (small MLP, 2 tasks)."""
    g = gen(0)
    widths = (2, 3, 2)
    params = mlp_params(g, widths, loss)
    xs, ys = mlp_batch(g, widths, loss, 2, 3)
    xq, yq = mlp_batch(g, widths, loss, 2, 4)
    per_step = lr_kind == "per_step"
    lead = (steps,) if per_step else ()

    def rate(p):
        shape = () if lr_kind == "scalar" else p.shape
        return 0.05 + 0.01 * torch.rand((*lead, *shape), generator=g, dtype=p.dtype)

    lrs = [] if lr_kind == "float" else [rate(p) for p in params]
    ws = 0.5 + torch.rand(2, 3, generator=g, dtype=torch.float64)
    wq = randn(g, 2, 4)
    # Without saved tensors the op has no backward: its inputs must not require grad then.
    track = leaves if save else list
    return [track(params), track(lrs), 0.05 if lr_kind == "float" else 0.0, per_step,
            xs, ys, ws, xq, yq, wq, steps, "tanh", loss, False, every, save]


@pytest.mark.parametrize("lr_kind", ["float", "scalar", "elementwise", "per_step"])
def test_inner_update(lr_kind):
    g = gen(1)
    params = [randn(g, 3, 2), randn(g, 3), randn(g)]
    grads = [randn(g, 4, *p.shape) for p in params]
    step = -1
    if lr_kind == "float":
        lrs, lr = [], 0.1
    elif lr_kind == "scalar":
        lrs, lr = [randn(g).abs() for _ in params], 0.0
    elif lr_kind == "elementwise":
        lrs, lr = [randn(g, *p.shape).abs() for p in params], 0.0
    else:
        lrs, lr, step = [randn(g, 2, *p.shape).abs() for p in params], 0.0, 1
    torch.library.opcheck(torch.ops.maml_ext.inner_update.default,
                          (leaves(params), leaves(grads), leaves(lrs), lr, step))


def test_inner_update_in_place():
    g = gen(2)
    params = [randn(g, 4, 3, 2), randn(g, 4, 3)]
    torch.library.opcheck(torch.ops.maml_ext.inner_update_.default,
                          (params, like(g, params), [randn(g).abs() for _ in params], 0.0, -1))


@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "gaussian_nll"])
def test_mlp_hvp(loss):
    g = gen(3)
    widths = (2, 3, 3)
    params = mlp_params(g, widths, loss, tasks=2)
    x, y = mlp_batch(g, widths, loss, 2, 4)
    weight = randn(g, 2, 4) if loss == "gaussian_nll" else None
    torch.library.opcheck(torch.ops.maml_ext.mlp_hvp.default,
                          (leaves(params), x, y, leaves(like(g, params)), weight, "relu", loss))


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(lr_kind="float", loss="mse"), dict(lr_kind="scalar", loss="mse"),
     dict(lr_kind="per_step", loss="cross_entropy"), dict(save=False)],
    ids=["elementwise", "float", "scalar", "per_step", "no_save"],
)
def test_mlp_maml(kwargs):
    torch.library.opcheck(torch.ops.maml_ext.mlp_maml.default, tuple(maml_args(**kwargs)))


@pytest.mark.parametrize(
    "lr_kind, first_order",
    [("float", False), ("scalar", False), ("elementwise", False), ("elementwise", True), ("per_step", False)],
    ids=["float-SO", "scalar-SO", "elementwise-SO", "elementwise-FO", "per_step-SO"],
)
def test_mlp_maml_backward(lr_kind, first_order):
    args = maml_args(lr_kind=lr_kind)
    params, lrs = [p.detach() for p in args[0]], [a.detach() for a in args[1]]
    args[0], args[1] = params, lrs
    _, adapted, checkpoints, query_grad = torch.ops.maml_ext.mlp_maml(*args)
    g = gen(4)
    (_, _, lr, per_step, xs, ys, ws, _, _, _, steps, activation, loss, _, every, _) = args
    torch.library.opcheck(
        torch.ops.maml_ext.mlp_maml_backward.default,
        (randn(g, 2), like(g, adapted), params, lrs, lr, per_step, xs, ys, ws, checkpoints,
         query_grad, steps, activation, loss, first_order, every, True),
    )
