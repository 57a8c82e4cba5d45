"""ops.inner_update / inner_update_ against the closed form, the reference and finite differences."""

import pytest
import torch

from _ops_helpers import TOL, assert_rel, dot, gen, leaves, like, randn, requires_extension
from _inner_update_cases import LAYOUTS, LR_KINDS, SHAPES, SMALL_SHAPES, closed_form, lr_tensors, make_case
from maml_ext import ops, reference

case_ids = pytest.mark.parametrize("layout", LAYOUTS)
lr_ids = pytest.mark.parametrize("lr_kind", LR_KINDS)


@case_ids
@lr_ids
@pytest.mark.parametrize("tasks", [1, 3, 25], ids=lambda t: f"T{t}")
def test_outputs_match_closed_form_and_reference(layout, lr_kind, tasks):
    params, grads, lr, step = make_case(layout, lr_kind, tasks)
    out = ops.inner_update(params, grads, lr, step)
    for o, g in zip(out, grads):
        assert o.shape == g.shape
    assert_rel(out, closed_form(params, grads, lr, step), what="closed form")
    assert_rel(out, reference.inner_update(params, grads, lr, step), what="reference")


@requires_extension  # compares the compiled ops with the reference
@case_ids
@lr_ids
@pytest.mark.parametrize("tasks", [1, 3, 25], ids=lambda t: f"T{t}")
def test_gradients_match_reference(layout, lr_kind, tasks):
    params, grads, lr, step = make_case(layout, lr_kind, tasks, seed=1)
    cot = like(gen(2), grads)

    def grads_of(fn):
        p, g = leaves(params), leaves(grads)
        a = lr if isinstance(lr, float) else leaves(lr)
        inputs = [*p, *g, *lr_tensors(a)]
        return torch.autograd.grad(dot(cot, fn(p, g, a, step)), inputs)

    fused = grads_of(ops.inner_update)
    expected = grads_of(reference.inner_update)
    assert_rel(fused, expected, what="d(params, grads, lrs)")
    # Shared θ: its gradient is the sum over tasks of the cotangent.
    d_params = fused[: len(SHAPES)]
    for d, c in zip(d_params, cot):
        assert_rel(d, c.sum(0) if layout == "shared" else c, what="d params")


@case_ids
@pytest.mark.parametrize("lr_kind", ["scalar", "elementwise", "per_step"])
def test_gradcheck_and_gradgradcheck(layout, lr_kind):
    params, grads, lr, step = make_case(layout, lr_kind, tasks=2, seed=3, shapes=SMALL_SHAPES)
    n = len(params)

    def fn(*tensors):
        return tuple(ops.inner_update(tensors[:n], tensors[n : 2 * n], list(tensors[2 * n :]), step))

    inputs = tuple(leaves([*params, *grads, *lr]))
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_gradgradcheck_with_float_lr():
    params, grads, lr, step = make_case("shared", "float", tasks=3, seed=4, shapes=SMALL_SHAPES)
    n = len(params)

    def fn(*tensors):
        return tuple(ops.inner_update(tensors[:n], tensors[n:], lr, step))

    inputs = tuple(leaves([*params, *grads]))
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_double_backward_carries_the_second_order_term():
    """d/dθ of L(θ − α ∇L(θ)) through a gradient computed with create_graph (MAML's use)."""
    g = gen(5)
    theta = randn(g, 4).requires_grad_()
    a_mat = randn(g, 3, 4, 4)
    a_mat = a_mat @ a_mat.transpose(1, 2)  # per-task quadratic losses ½ θᵀ A_t θ
    alpha = 0.05

    def meta_loss(update):
        theta_t = theta.expand(3, 4)
        inner = 0.5 * torch.einsum("ti,tij,tj->t", theta_t, a_mat, theta_t).sum()
        (grad,) = torch.autograd.grad(inner, theta_t, create_graph=True)
        (adapted,) = update([theta], [grad], alpha)
        return 0.5 * torch.einsum("ti,tij,tj->t", adapted, a_mat, adapted).sum()

    (fused,) = torch.autograd.grad(meta_loss(ops.inner_update), theta)
    # Closed form: Σ_t (I − α A_t) A_t (I − α A_t) θ.
    eye = torch.eye(4, dtype=torch.float64)
    m = eye - alpha * a_mat
    expected = (m @ a_mat @ m @ theta.detach()).sum(0)
    assert_rel(fused, expected)


@lr_ids
def test_in_place_equals_functional(lr_kind):
    params, grads, lr, step = make_case("per_task", lr_kind, tasks=3, seed=6)
    expected = ops.inner_update(params, grads, lr, step)
    updated = [p.clone() for p in params]
    assert ops.inner_update_(updated, grads, lr, step) is None
    assert_rel(updated, expected, what="in place")


def test_in_place_rejects_broadcast_grads():
    params, grads, lr, step = make_case("shared", "float", tasks=3)
    with pytest.raises(ValueError, match=r"grads\[0\]"):
        ops.inner_update_(params, grads, lr, step)


@case_ids
@lr_ids
def test_float32(layout, lr_kind):
    params, grads, lr, step = make_case(layout, lr_kind, tasks=5, seed=7, dtype=torch.float32)
    out = ops.inner_update(params, grads, lr, step)
    assert all(o.dtype == torch.float32 for o in out)
    expected = closed_form([p.double() for p in params], [g.double() for g in grads],
                           lr if isinstance(lr, float) else [a.double() for a in lr], step)
    assert_rel(out, [e.float() for e in expected], tol=TOL[torch.float32])
