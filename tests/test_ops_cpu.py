"""The compiled CPU kernels: loaded when expected, every CPU capability variant, the memory of fewer inner-loop snapshots."""

import os

import pytest
import torch

from _ops_helpers import (
    TOL,
    as_double,
    assert_rel,
    dot,
    gen,
    leaves,
    like,
    mlp_batch,
    mlp_params,
    randn,
    requires_extension,
)
from maml_ext import _extension, ops, reference


def test_extension_loaded_unless_disabled():
    """CI runs the suite with and without MAML_EXT_NO_EXTENSION: never only the fallback."""
    disabled = os.environ.get("MAML_EXT_NO_EXTENSION", "") not in ("", "0")
    assert ops.extension_available() is not disabled, _extension.STATUS


# ---- CPU capability variants --------------------------------------------------------------------


# Odd widths that leave remainders for every vector length, and one wide layer.
VARIANT_CASES = [
    ((3, 17, 9, 2), "relu", "mse", torch.float64),
    ((2, 67, 5), "tanh", "cross_entropy", torch.float64),
    ((4, 33, 3), "tanh", "gaussian_nll", torch.float64),
    ((3, 17, 9, 2), "relu", "mse", torch.float32),
    ((2, 67, 5), "tanh", "gaussian_nll", torch.float32),
]
variant_cases = pytest.mark.parametrize(
    "widths, activation, loss, dtype", VARIANT_CASES,
    ids=[f"{'-'.join(map(str, w))}-{a}-{l}-{str(d)[6:]}" for w, a, l, d in VARIANT_CASES],
)


@variant_cases
def test_mlp_hvp_under_each_capability(capability, widths, activation, loss, dtype):
    g = gen(10)
    params = mlp_params(g, widths, loss, tasks=5, dtype=dtype)
    x, y = mlp_batch(g, widths, loss, 5, 7, dtype)
    v = like(g, params)
    w = randn(g, 5, 7, dtype=dtype)
    kw = dict(activation=activation, loss=loss, sample_weight=w)
    got = ops.mlp_hvp(params, x, y, v, **kw)
    kw["sample_weight"] = w.double()
    expected = reference.mlp_hvp(as_double(params), x.double(), *as_double([y]), as_double(v), **kw)
    tol = TOL[dtype] * 10
    assert_rel(got[0].double(), expected[0], tol, "loss")
    assert_rel(as_double(got[1]), expected[1], tol, "grads")
    assert_rel(as_double(got[2]), expected[2], tol, "hvps")


@variant_cases
def test_mlp_maml_under_each_capability(capability, widths, activation, loss, dtype):
    g = gen(11)
    params = mlp_params(g, widths, loss, dtype=dtype)
    xs, ys = mlp_batch(g, widths, loss, 5, 7, dtype)
    xq, yq = mlp_batch(g, widths, loss, 5, 9, dtype)
    lrs = [0.02 * (1 + torch.rand((3, *p.shape), generator=g, dtype=dtype)) for p in params]
    c, u = randn(g, 5), [randn(g, 5, *p.shape) for p in params]

    def run(fn, cast):
        p, a = leaves(cast(params)), leaves(cast(lrs))
        query_loss, adapted = fn(p, *cast([xs, ys, xq, yq]), lr=a, steps=3, per_step_lr=True,
                                 activation=activation, loss=loss, snapshots=2)
        objective = (c * query_loss.double()).sum() + dot(u, as_double(adapted))
        return [query_loss, *adapted, *torch.autograd.grad(objective, [*p, *a])]

    got = run(ops.mlp_maml, list)
    expected = run(reference.mlp_maml, as_double)
    assert_rel(as_double(got), expected, TOL[dtype] * 10, "loss, adapted, meta-gradients")


# ---- snapshots of the inner loop--------------------------------------------------------------------


def long_loop(first_order=False):
    g = gen(12)
    widths = (1, 40, 40, 1)
    params = mlp_params(g, widths)
    data = dict(zip(("x_support", "y_support"), mlp_batch(g, widths, "mse", 4, 5)))
    data.update(zip(("x_query", "y_query"), mlp_batch(g, widths, "mse", 4, 5)))
    kw = dict(lr=0.002, steps=100, activation="tanh", loss="mse", first_order=first_order)
    return params, data, kw


def saved_bytes_and_results(params, data, kw, snapshots):
    """Bytes saved for backward by ops.mlp_maml, its outputs and meta-gradient."""
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    p = leaves(params)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        query_loss, adapted = ops.mlp_maml(p, **data, **kw, snapshots=snapshots)
    grads = torch.autograd.grad(query_loss.sum() + sum(a.sum() for a in adapted), p)
    return sum(saved), [query_loss.detach(), *[a.detach() for a in adapted]], grads


@requires_extension
def test_snapshots_of_a_long_inner_loop():
    """S = 100: snapshots=True stores ⌈√S⌉ times fewer parameter snapshots."""
    params, data, kw = long_loop()
    args = (params, [], kw["lr"], False, data["x_support"], data["y_support"], None,
            data["x_query"], data["y_query"], None, kw["steps"], kw["activation"], kw["loss"],
            False)
    every = reference.snapshot_interval(True, kw["steps"])
    assert every == 10
    full = torch.ops.maml_ext.mlp_maml(*args, 1, True)[2]
    sparse = torch.ops.maml_ext.mlp_maml(*args, every, True)[2]
    numel = sum(p.numel() for p in params)
    assert full.shape == (99, 4, numel)
    assert sparse.shape == (9, 4, numel)


@requires_extension
def test_fewer_snapshots_save_memory_with_identical_results():
    params, data, kw = long_loop()
    full_bytes, full_out, full_grads = saved_bytes_and_results(params, data, kw, snapshots=False)
    ckpt_bytes, ckpt_out, ckpt_grads = saved_bytes_and_results(params, data, kw, snapshots=True)
    # 9 snapshots of the 4 tasks' parameters instead of 99.
    assert ckpt_bytes < 0.15 * full_bytes, (ckpt_bytes, full_bytes)
    for got, want in zip(ckpt_out, full_out):
        assert torch.equal(got, want)
    assert_rel(ckpt_grads, full_grads, tol=1e-12, what="meta-gradient")
