"""NaN and ±inf in parameters or data propagate through the compiled kernels exactly as through
the reference (issue 12, defect 2: the compiled ReLU used to map NaN to 0, hiding it)."""

import math

import pytest
import torch

from _ops_helpers import gen, mlp_batch, mlp_params, requires_extension
from maml_ext import ops, reference

T, K, WIDTHS = 2, 3, (2, 4, 3)
SPECIALS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
# Where the special value goes (one element of that tensor).
PLACES = ["W1", "b1", "W2", "log_std", "x", "y", "weight"]
LOSSES = ["mse", "cross_entropy", "gaussian_nll"]
ACTIVATIONS = ["relu", "tanh"]


def inputs(loss: str, place: str, value: float, tasks_dim: bool):
    g = gen(7)
    params = mlp_params(g, WIDTHS, loss, tasks=T if tasks_dim else None)
    xs, ys = mlp_batch(g, WIDTHS, loss, T, K)
    xq, yq = mlp_batch(g, WIDTHS, loss, T, K)
    weight = torch.ones(T, K, dtype=torch.float64)
    index = {"W1": 0, "b1": 1, "W2": 2, "log_std": 4}
    if place in index:
        params[index[place]].view(-1)[1] = value
    elif place == "x":
        xs.view(-1)[1] = value
    elif place == "y":
        ys.view(-1)[1] = value
    else:
        weight[0, 1] = value
    return params, (xs, ys), (xq, yq), weight


def cases():
    for loss in LOSSES:
        for place in PLACES:
            if place == "log_std" and loss != "gaussian_nll":
                continue
            if place == "y" and loss == "cross_entropy":
                continue  # integer labels
            for name in SPECIALS:
                for act in ACTIVATIONS:
                    yield pytest.param(loss, place, name, act, id=f"{loss}-{place}-{name}-{act}")


def assert_same(actual, expected, what, exact=True):
    """Equal values where the reference is finite, and non-finite exactly where it is not.
    ``exact``: also the same kind (NaN, +inf, -inf). Derivatives are compared without it: with an
    infinite sample weight w, the kernels form w·(a − b) = ±inf where autograd, which
    differentiates w·a − w·b term by term, gets inf − inf = NaN."""
    if isinstance(expected, (list, tuple)):
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{what}[{i}]", exact)
        return
    if exact:
        torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12, equal_nan=True,
                                   msg=lambda m: f"{what}: {m}")
        return
    finite = torch.isfinite(expected)
    assert torch.equal(torch.isfinite(actual), finite), f"{what}: finite at other places than the reference"
    torch.testing.assert_close(actual[finite], expected[finite], rtol=1e-9, atol=1e-12, msg=lambda m: f"{what}: {m}")


def assert_like_reference(actual, expected, what):
    """Losses exactly (value, NaN, ±inf); gradients and HVPs by finiteness and finite values."""
    assert_same(actual[0], expected[0], f"{what} loss")
    assert_same(list(actual[1:]), list(expected[1:]), f"{what} derivatives", exact=False)


@requires_extension  # compares the compiled kernels with the reference
@pytest.mark.parametrize("loss, place, name, act", list(cases()))
def test_mlp_hvp_propagates_like_reference(loss, place, name, act):
    params, (x, y), _, weight = inputs(loss, place, SPECIALS[name], tasks_dim=True)
    direction = [torch.ones_like(p) for p in params]
    kw = dict(activation=act, loss=loss, sample_weight=weight)
    expected = reference.mlp_hvp(params, x, y, direction, **kw)
    for op in (torch.ops.maml_ext.mlp_hvp, torch.ops.maml_ext._mlp_hvp_batched):
        got = op(params, x, y, direction, weight, act, loss)
        assert_like_reference(list(got), list(expected), f"{op}")


@requires_extension  # compares the compiled kernels with the reference
@pytest.mark.parametrize("loss, place, name, act", list(cases()))
def test_mlp_maml_grad_propagates_like_reference(loss, place, name, act):
    params, (xs, ys), (xq, yq), weight = inputs(loss, place, SPECIALS[name], tasks_dim=False)
    kw = dict(lr=0.05, steps=2, activation=act, loss=loss, w_support=weight)
    expected = reference.mlp_maml_grad(params, xs, ys, xq, yq, **kw)
    got = ops.mlp_maml_grad(params, xs, ys, xq, yq, **kw)
    assert_like_reference(list(got), list(expected), "mlp_maml_grad")
    lw = params[0].new_full((T,), 1.0 / T)
    batched = torch.ops.maml_ext._mlp_maml_grad_batched(
        params, [], 0.05, False, xs, ys, weight, xq, yq, None, 2, act, loss, False, lw)
    assert_like_reference(list(batched), list(expected), "_mlp_maml_grad_batched")
    # The forward op with its autograd backward (mlp_maml_backward).
    leaves = [p.clone().requires_grad_() for p in params]
    query_loss, _ = ops.mlp_maml(leaves, xs, ys, xq, yq, **kw)
    query_loss.mean().backward()
    assert_like_reference([query_loss.detach(), [p.grad for p in leaves]], [expected[0], expected[1]], "mlp_maml")


@requires_extension
@pytest.mark.parametrize("name", list(SPECIALS))
def test_relu_keeps_nan_in_a_hidden_unit(name):
    """The case the old kernel got wrong: a non-finite pre-activation of a ReLU unit."""
    params, (x, y), _, _ = inputs("mse", "b1", SPECIALS[name], tasks_dim=True)
    loss, _, _ = ops.mlp_hvp(params, x, y, activation="relu")
    expected, _, _ = reference.mlp_hvp(params, x, y, activation="relu")
    assert_same(loss, expected, "loss")
    if name != "-inf":  # relu(-inf) = 0: finite, correctly
        assert not torch.isfinite(loss).all()


@pytest.mark.parametrize("mod", [ops, reference], ids=["fused", "reference"])
def test_inner_update_propagates(mod):
    p = torch.tensor([1.0, math.nan, 2.0, 3.0], dtype=torch.float64)
    g = torch.tensor([math.inf, 1.0, 0.0, 1.0], dtype=torch.float64)
    a = torch.tensor([0.1, 0.1, math.inf, math.nan], dtype=torch.float64)
    (out,) = mod.inner_update([p], [g], [a])
    torch.testing.assert_close(out, p - a * g, equal_nan=True)
