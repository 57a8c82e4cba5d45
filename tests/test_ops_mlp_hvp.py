"""ops.mlp_hvp (loss, gradient, Hessian-vector product) against the reference, finite differences
and gradcheck."""


import pytest
import torch

from _ops_helpers import (
    TOL, assert_rel, dot, gen, leaves, like, randn, requires_extension,
)
from _mlp_hvp_cases import CASES, Case
from maml_ext import ops, reference


cases = pytest.mark.parametrize("case", CASES, ids=str)


@requires_extension  # compares the compiled ops with the reference
@cases
def test_outputs_match_reference(case):
    params, x, y, v, w = case.inputs()
    loss, grads, hvps = ops.mlp_hvp(params, x, y, v, **case.kwargs(w))
    ref_loss, ref_grads, ref_hvps = reference.mlp_hvp(params, x, y, v, **case.kwargs(w))
    assert loss.shape == (case.tasks,)
    assert_rel(loss, ref_loss, what="loss")
    assert_rel(grads, ref_grads, what="grads")
    assert_rel(hvps, ref_hvps, what="hvps")


@cases
def test_hvp_matches_finite_difference_of_gradient(case):
    """Independent of the reference: H v ≈ (∇L(θ + εv) − ∇L(θ − εv)) / 2ε."""
    params, x, y, v, w = case.inputs(seed=1)
    _, _, hvps = ops.mlp_hvp(params, x, y, v, **case.kwargs(w))
    eps = 1e-5

    def grads_at(sign):
        shifted = [p + sign * eps * d for p, d in zip(params, v)]
        return ops.mlp_hvp(shifted, x, y, v, **case.kwargs(w))[1]

    fd = [(a - b) / (2 * eps) for a, b in zip(grads_at(1), grads_at(-1))]
    assert_rel(hvps, fd, tol=1e-6, what="H v")


@requires_extension  # compares the compiled ops with the reference
@cases
def test_autograd_matches_reference(case):
    """loss → gradient, gradients → H·u (w.r.t. params), HVPs → H·w (w.r.t. the direction)."""
    params, x, y, v, w = case.inputs(seed=2)
    g = gen(3)
    c, u, hw = randn(g, case.tasks), like(g, params), like(g, params)

    def derivatives(fn):
        p, d = leaves(params), leaves(v)
        loss, grads, hvps = fn(p, x, y, d, **case.kwargs(w))
        d_params = torch.autograd.grad((c * loss).sum() + dot(u, grads), p, retain_graph=True)
        d_direction = torch.autograd.grad(dot(hw, hvps), d)
        return d_params, d_direction

    fused_p, fused_d = derivatives(ops.mlp_hvp)
    ref_p, ref_d = derivatives(reference.mlp_hvp)
    assert_rel(fused_p, ref_p, what="d/dθ (c·loss + <u, grad>)")
    assert_rel(fused_d, ref_d, what="d/dv <w, H v>")


@cases
@pytest.mark.parametrize("direction", [None, []], ids=["none", "empty"])
def test_gradient_only_mode_matches_the_full_op(case, direction):
    """No direction: the same loss and gradient, no HVP, and the gradient still differentiable
    (d/dθ <u, ∇L> = H u, checked against the reference's double backward)."""
    params, x, y, v, w = case.inputs(seed=5)
    g = gen(6)
    c, u = randn(g, case.tasks), like(g, params)

    def derivatives(fn, direction):
        p = leaves(params)
        loss, grads, hvps = fn(p, x, y, direction, **case.kwargs(w))
        d_params = torch.autograd.grad((c * loss).sum() + dot(u, grads), p)
        return loss, grads, hvps, d_params

    loss, grads, hvps, d_params = derivatives(ops.mlp_hvp, direction)
    full_loss, full_grads, _, _ = derivatives(ops.mlp_hvp, v)
    ref = derivatives(reference.mlp_hvp, direction)
    assert hvps == [] and ref[2] == []
    assert_rel(loss, full_loss, what="loss")
    assert_rel(grads, full_grads, what="grads")
    assert_rel(d_params, ref[3], what="d/dθ (c·loss + <u, grad>)")


GRADCHECK_CASES = [
    Case(2, 3, (2, 3, 2), "tanh", "mse", weighted=True),
    Case(2, 3, (2, 3, 3), "relu", "cross_entropy"),
    Case(2, 3, (1, 3, 2, 1), "tanh", "gaussian_nll", weighted=True),
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=str)
def test_gradcheck(case):
    params, x, y, v, w = case.inputs(seed=4)
    kw = case.kwargs(w)

    def loss_and_grads(*p):
        loss, grads, _ = ops.mlp_hvp(list(p), x, y, v, **kw)
        return (loss, *grads)

    def loss_only(*p):
        return ops.mlp_hvp(list(p), x, y, v, **kw)[0]

    def gradient_only_mode(*p):
        loss, grads, _ = ops.mlp_hvp(list(p), x, y, **kw)
        return (loss, *grads)

    assert torch.autograd.gradcheck(loss_and_grads, tuple(leaves(params)))
    assert torch.autograd.gradgradcheck(loss_only, tuple(leaves(params)))
    assert torch.autograd.gradcheck(gradient_only_mode, tuple(leaves(params)))


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=str)
def test_gradcheck_in_direction(case):
    """H v is linear in v; its derivative needs only the direction to require grad."""
    params, x, y, v, w = case.inputs(seed=4)

    def hvps(*d):
        return tuple(ops.mlp_hvp(params, x, y, list(d), **case.kwargs(w))[2])

    assert torch.autograd.gradcheck(hvps, tuple(leaves(v)))


@requires_extension  # compares the compiled ops with the reference
def test_hvp_tracks_direction_when_params_do_not_require_grad():
    case = CASES[1]
    params, x, y, v, w = case.inputs(seed=6)
    d = leaves(v)
    _, _, hvps = ops.mlp_hvp(params, x, y, d, **case.kwargs(w))
    assert all(h.requires_grad for h in hvps)
    hw = like(gen(7), params)
    (h_w,) = torch.autograd.grad(dot(hw, hvps), d[:1])
    expected = reference.mlp_hvp(params, x, y, hw, **case.kwargs(w))[2][0]
    assert_rel(h_w, expected, what="H w")


@requires_extension  # compares the compiled ops with the reference
@pytest.mark.parametrize("case", [CASES[1], CASES[4], CASES[7]], ids=str)
def test_float32(case):
    params, x, y, v, w = case.inputs(seed=5, dtype=torch.float32)
    out = ops.mlp_hvp(params, x, y, v, **case.kwargs(w))
    y64 = y if case.loss == "cross_entropy" else y.double()
    w64 = None if w is None else w.double()
    expected = reference.mlp_hvp([p.double() for p in params], x.double(), y64,
                                 [d.double() for d in v], **case.kwargs(w64))
    assert out[0].dtype == torch.float32
    for got, want, what in zip(out, expected, ("loss", "grads", "hvps")):
        got = [got] if torch.is_tensor(got) else got
        want = [want] if torch.is_tensor(want) else want
        assert_rel([t.double() for t in got], want, tol=TOL[torch.float32], what=what)


def test_no_graph_without_requires_grad():
    params, x, y, v, w = CASES[1].inputs()
    loss, grads, hvps = ops.mlp_hvp(params, x, y, v, **CASES[1].kwargs(w))
    assert not any(t.requires_grad for t in (loss, *grads, *hvps))


def test_no_grad_mode_builds_no_graph():
    case = CASES[4]
    params, x, y, v, w = case.inputs()
    with torch.no_grad():
        loss, grads, hvps = ops.mlp_hvp(leaves(params), x, y, leaves(v), **case.kwargs(w))
    assert not any(t.requires_grad for t in (loss, *grads, *hvps))
    assert_rel(hvps, reference.mlp_hvp(params, x, y, v, **case.kwargs(w))[2], what="hvps")
