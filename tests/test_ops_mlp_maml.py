"""ops.mlp_maml (the whole inner loop, exact meta-gradient) against the unrolled reference."""


import pytest
import torch

from _ops_helpers import (
    assert_rel,
    leaves,
    rel_err,
    requires_extension,
)
from _mlp_maml_cases import CASES, Case, cotangents, lr_list, meta_gradients, run
from maml_ext import ops, reference


cases = pytest.mark.parametrize("case", CASES, ids=str)


@requires_extension  # compares the compiled ops with the reference
@cases
def test_forward_matches_reference(case):
    params, lr, data = case.inputs()
    query_loss, adapted = run(ops.mlp_maml, case, params, lr, data)
    ref_loss, ref_adapted = run(reference.mlp_maml, case, params, lr, data)
    assert query_loss.shape == (case.tasks,)
    assert_rel(query_loss, ref_loss, what="query loss")
    assert_rel(adapted, ref_adapted, what="adapted params")


@requires_extension  # compares the compiled ops with the reference
@cases
def test_meta_gradients_match_reference(case):
    params, lr, data = case.inputs(seed=2)
    cot = cotangents(case, params)
    fused = meta_gradients(ops.mlp_maml, case, params, lr, data, cot)
    expected = meta_gradients(reference.mlp_maml, case, params, lr, data, cot)
    assert_rel(fused[0], expected[0], what="query loss")
    assert_rel(fused[1], expected[1], what="adapted params")
    n = len(params)
    assert_rel(fused[2][:n], expected[2][:n], what="d params")
    assert_rel(fused[2][n:], expected[2][n:], what="d lrs")


@pytest.mark.parametrize("first_order", [False, True], ids=["SO", "FO"])
@pytest.mark.parametrize("snapshots", [True, 1, 2, 3, 4, 9], ids=lambda c: f"snap{c}")
def test_fewer_snapshots_give_the_same_results(snapshots, first_order):
    case = Case(3, 5, (2, 7, 2), "tanh", "gaussian_nll", 9, "per_step", first_order, weighted=True)
    params, lr, data = case.inputs(seed=3)
    cot = cotangents(case, params)
    plain = meta_gradients(ops.mlp_maml, case, params, lr, data, cot)
    thinned = meta_gradients(ops.mlp_maml, case, params, lr, data, cot, snapshots=snapshots)
    for got, want, what in zip(thinned, plain, ("query loss", "adapted", "meta-gradients")):
        assert_rel(got, want, tol=1e-12, what=what)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "gaussian_nll"])
@pytest.mark.parametrize("lr_kind", ["float", "elementwise"])
def test_first_and_second_order_differ(loss, lr_kind):
    case = Case(3, 5, (2, 7, 3), "tanh", loss, 2, lr_kind)
    params, lr, data = case.inputs(seed=4)
    cot = cotangents(case, params)
    second = meta_gradients(ops.mlp_maml, case, params, lr, data, cot)
    first = meta_gradients(ops.mlp_maml, case, params, lr, data, cot, first_order=True)
    assert_rel(first[0], second[0], what="query loss")  # same forward
    assert_rel(first[1], second[1], what="adapted")
    for i, (f, s) in enumerate(zip(first[2], second[2])):
        assert rel_err(f, s) > 1e-4, f"meta-gradient {i}: first order equals second order"


GRADCHECK_CASES = [
    Case(2, 3, (1, 3, 1), "tanh", "mse", 2, "float"),
    Case(2, 3, (2, 3, 2), "tanh", "cross_entropy", 2, "elementwise", snapshots=True),
    Case(2, 3, (1, 3, 1), "tanh", "gaussian_nll", 3, "per_step_scalar", weighted=True),
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=str)
def test_gradcheck_second_order(case):
    params, lr, data = case.inputs(seed=5)
    n = len(params)

    def fn(*tensors):
        a = lr if isinstance(lr, float) else list(tensors[n:])
        query_loss, adapted = run(ops.mlp_maml, case, list(tensors[:n]), a, data)
        return (query_loss, *adapted)

    # fast_mode: checks uᵀJv for random u, v (the full Jacobian of the unrolled reference is slow).
    assert torch.autograd.gradcheck(fn, tuple(leaves([*params, *lr_list(lr)])), fast_mode=True)


@requires_extension
def test_backward_is_not_differentiable_twice():
    """A penalty on the meta-gradient must raise, not silently drop its second-order term."""
    case = CASES[1]
    params, lr, data = case.inputs()
    p = leaves(params)
    query_loss, _ = run(ops.mlp_maml, case, p, lr, data)
    grads = torch.autograd.grad(query_loss.sum(), p, create_graph=True)
    penalty = sum((g**2).sum() for g in grads) + sum((t**2).sum() for t in p)
    with pytest.raises(RuntimeError, match="not itself differentiable"):
        torch.autograd.grad(penalty, p)


@requires_extension
def test_registered_backward_is_not_differentiable_twice():
    """Direct torch.ops users get the registered formula, whose own backward raises."""
    case = CASES[1]
    params, lr, data = case.inputs()
    p, a = leaves(params), leaves(lr)
    query_loss, *_ = torch.ops.maml_ext.mlp_maml(
        p, a, 0.0, False, data["x_support"], data["y_support"], None, data["x_query"],
        data["y_query"], None, case.steps, case.activation, case.loss, False, 1, True,
    )
    grads = torch.autograd.grad(query_loss.sum(), p, create_graph=True)
    with pytest.raises(RuntimeError, match="not itself differentiable"):
        torch.autograd.grad(sum(g.sum() for g in grads), p)


@pytest.mark.parametrize("case", [CASES[2], CASES[5]], ids=str)
def test_no_grad_call_builds_no_graph(case):
    params, lr, data = case.inputs(seed=6)
    with_grad = run(ops.mlp_maml, case, leaves(params), lr, data)
    with torch.no_grad():
        query_loss, adapted = run(ops.mlp_maml, case, leaves(params), lr, data)
    for t in (query_loss, *adapted):
        assert not t.requires_grad and t.grad_fn is None
    assert_rel(query_loss, with_grad[0], what="query loss")
    assert_rel(adapted, with_grad[1], what="adapted")


@requires_extension  # compares the compiled ops with the reference
@pytest.mark.parametrize("case", [CASES[3], CASES[8]], ids=str)
def test_float32(case):
    params, lr, data = case.inputs(seed=7)
    cot = cotangents(case, params)
    as32 = {k: v if v.dtype == torch.int64 else v.float() for k, v in data.items()}
    lr32 = lr if isinstance(lr, float) else [a.float() for a in lr]
    got = meta_gradients(ops.mlp_maml, case, [p.float() for p in params], lr32, as32,
                         (cot[0].float(), [u.float() for u in cot[1]]))
    expected = meta_gradients(reference.mlp_maml, case, params, lr, data, cot)
    assert got[0].dtype == torch.float32
    for g, e, what in zip(got, expected, ("query loss", "adapted", "meta-gradients")):
        g = [g] if torch.is_tensor(g) else g
        e = [e] if torch.is_tensor(e) else e
        assert_rel([t.double() for t in g], e, tol=1e-4, what=what)


@pytest.mark.parametrize("module", [ops, reference], ids=["ops", "reference"])
def test_old_checkpoint_keyword_still_works_with_a_deprecation_warning(module):
    """``checkpoint=`` read like the training checkpoints: it is ``snapshots=`` now, the old name kept."""
    case = CASES[5]
    params, lr, data = case.inputs()
    kw = case.kwargs()
    kw.pop("snapshots")
    new = module.mlp_maml(params, lr=lr, **data, **kw, snapshots=2)
    with pytest.warns(DeprecationWarning, match=r"checkpoint=.*snapshots="):
        old = module.mlp_maml(params, lr=lr, **data, **kw, checkpoint=2)
    assert torch.equal(old[0], new[0]) and all(torch.equal(a, b) for a, b in zip(old[1], new[1], strict=True))
    with pytest.raises(TypeError, match="not both"):
        module.mlp_maml(params, lr=lr, **data, **kw, snapshots=2, checkpoint=2)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="snapshots: expected"):
        module.mlp_maml(params, lr=lr, **data, **kw, checkpoint=0)
