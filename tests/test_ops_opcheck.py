"""torch.library.opcheck on every torch.ops.maml_ext operator: schema, fake kernels, autograd
registration and AOT dispatch."""

import pytest
import torch

from _ops_helpers import gen, leaves, like, mlp_batch, mlp_params, randn, requires_extension

pytestmark = requires_extension

# test_aot_dispatch_dynamic traces with AOTAutograd (seconds per call): run it on the first variant
# of each operator, the cheaper checks on every variant.
CHEAP = ("test_schema", "test_autograd_registration", "test_faketensor")
ALL = (*CHEAP, "test_aot_dispatch_dynamic")


def opcheck(op, args, variant, variants):
    torch.library.opcheck(op, args, test_utils=ALL if variant == variants[0] else CHEAP)


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


UPDATE_VARIANTS = ["per_step", "float", "scalar", "elementwise"]


@pytest.mark.parametrize("lr_kind", UPDATE_VARIANTS)
def test_inner_update(lr_kind):
    g = gen(1)
    params = [randn(g, 3, 2), randn(g, 3), randn(g)]
    grads = [randn(g, 4, *p.shape) for p in params]
    step = None
    if lr_kind == "float":
        lrs, lr = [], 0.1
    elif lr_kind == "scalar":
        lrs, lr = [randn(g).abs() for _ in params], 0.0
    elif lr_kind == "elementwise":
        lrs, lr = [randn(g, *p.shape).abs() for p in params], 0.0
    else:
        lrs, lr, step = [randn(g, 2, *p.shape).abs() for p in params], 0.0, 1
    opcheck(torch.ops.maml_ext.inner_update.default,
            (leaves(params), leaves(grads), leaves(lrs), lr, step), lr_kind, UPDATE_VARIANTS)


def test_inner_update_in_place():
    g = gen(2)
    params = [randn(g, 4, 3, 2), randn(g, 4, 3)]
    torch.library.opcheck(torch.ops.maml_ext.inner_update_.default,
                          (params, like(g, params), [randn(g).abs() for _ in params], 0.0, None))


LOSSES = ["gaussian_nll", "mse", "cross_entropy"]


@pytest.mark.parametrize("with_direction", [True, False], ids=["hvp", "gradient-only"])
@pytest.mark.parametrize("loss", LOSSES)
def test_mlp_hvp(loss, with_direction):
    g = gen(3)
    widths = (2, 3, 3)
    params = mlp_params(g, widths, loss, tasks=2)
    x, y = mlp_batch(g, widths, loss, 2, 4)
    weight = randn(g, 2, 4) if loss == "gaussian_nll" else None
    direction = leaves(like(g, params)) if with_direction else []
    opcheck(torch.ops.maml_ext.mlp_hvp.default,
            (leaves(params), x, y, direction, weight, "relu", loss), loss, LOSSES)


MAML_VARIANTS = {
    "elementwise": dict(),
    "float": dict(lr_kind="float", loss="mse"),
    "scalar": dict(lr_kind="scalar", loss="mse"),
    "per_step": dict(lr_kind="per_step", loss="cross_entropy"),
    "no_save": dict(save=False),
}


@pytest.mark.parametrize("variant", list(MAML_VARIANTS))
def test_mlp_maml(variant):
    args = tuple(maml_args(**MAML_VARIANTS[variant]))
    opcheck(torch.ops.maml_ext.mlp_maml.default, args, variant, list(MAML_VARIANTS))


BACKWARD_VARIANTS = [("elementwise", False), ("elementwise", True), ("float", False), ("scalar", False),
                     ("per_step", False)]


@pytest.mark.parametrize("lr_kind, first_order", BACKWARD_VARIANTS,
                         ids=[f"{k}-{'FO' if fo else 'SO'}" for k, fo in BACKWARD_VARIANTS])
def test_mlp_maml_backward(lr_kind, first_order):
    args = maml_args(lr_kind=lr_kind)
    params, lrs = [p.detach() for p in args[0]], [a.detach() for a in args[1]]
    args[0], args[1] = params, lrs
    _, adapted, checkpoints, query_grad = torch.ops.maml_ext.mlp_maml(*args)
    g = gen(4)
    (_, _, lr, per_step, xs, ys, ws, _, _, _, steps, activation, loss, _, every, _) = args
    opcheck(
        torch.ops.maml_ext.mlp_maml_backward.default,
        (randn(g, 2), like(g, adapted), params, lrs, lr, per_step, xs, ys, ws, checkpoints,
         query_grad, steps, activation, loss, first_order, every, True),
        (lr_kind, first_order), BACKWARD_VARIANTS,
    )

