"""ops.mlp_maml_grad (inner loop + exact meta-gradient in one call) against the reference and
against ops.mlp_maml + autograd, and its batched (CUDA-path) twin."""

import pytest
import torch

from _mlp_maml_cases import CASES
from _ops_helpers import assert_rel, gen, leaves, randn, requires_extension
from maml_ext import ops, reference
from maml_ext.reference import split_lr

cases = pytest.mark.parametrize("case", CASES, ids=str)


def grad_kwargs(case):
    kw = case.kwargs()
    kw.pop("snapshots")  # no saved steps to thin out: the walk keeps per-thread state only
    return kw


@requires_extension  # compares the compiled ops with the reference
@cases
def test_matches_reference(case):
    params, lr, data = case.inputs(seed=6)
    weight = randn(gen(7), case.tasks)
    fused = ops.mlp_maml_grad(params, lr=lr, **data, **grad_kwargs(case), loss_weight=weight)
    expected = reference.mlp_maml_grad(params, lr=lr, **data, **grad_kwargs(case), loss_weight=weight)
    assert_rel(fused[0], expected[0], what="query loss")
    assert_rel(fused[1], expected[1], what="d params")
    assert_rel(fused[2], expected[2], what="d lrs")
    assert len(fused[2]) == (0 if isinstance(lr, float) else len(params))


@cases
def test_equals_mlp_maml_with_autograd(case):
    """The default loss weight is the mean over tasks, as in mlp_maml(...)[0].mean().backward()."""
    params, lr, data = case.inputs(seed=8)
    query_loss, grads, lr_grads = ops.mlp_maml_grad(params, lr=lr, **data, **grad_kwargs(case))
    p = leaves(params)
    a = lr if isinstance(lr, float) else leaves(lr)
    loss, _ = ops.mlp_maml(p, lr=a, **data, **grad_kwargs(case))
    expected = torch.autograd.grad(loss.mean(), [*p, *([] if isinstance(a, float) else a)])
    assert_rel(query_loss, loss.detach(), what="query loss")
    assert_rel([*grads, *lr_grads], list(expected), what="meta-gradient")


@requires_extension
@pytest.mark.parametrize("case", CASES[:6], ids=str)
def test_batched_twin_matches(case):
    params, lr, data = case.inputs(seed=9)
    lrs, lr_value = split_lr(lr)
    weight = randn(gen(10), case.tasks)
    args = (params, lrs, lr_value, case.lr_kind.startswith("per_step"), data["x_support"],
            data["y_support"], data.get("w_support"), data["x_query"], data["y_query"],
            data.get("w_query"), case.steps, case.activation, case.loss, case.first_order, weight)
    for name, a, b in zip(("loss", "d params", "d lrs"), torch.ops.maml_ext.mlp_maml_grad(*args),
                          torch.ops.maml_ext._mlp_maml_grad_batched(*args)):
        assert_rel(b, a, what=name)


@requires_extension
def test_opcheck():
    params, lr, data = CASES[3].inputs(seed=11)
    args = (params, lr, 0.0, True, data["x_support"], data["y_support"], None, data["x_query"],
            data["y_query"], None, CASES[3].steps, CASES[3].activation, CASES[3].loss, False,
            torch.full((CASES[3].tasks,), 0.5, dtype=torch.float64))
    torch.library.opcheck(torch.ops.maml_ext.mlp_maml_grad.default, args,
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("impl", [ops, reference], ids=["fused", "reference"])
def test_bad_loss_weight_is_named(impl):
    params, lr, data = CASES[1].inputs()
    with pytest.raises(ValueError, match="loss_weight"):
        impl.mlp_maml_grad(params, lr=lr, **data, **grad_kwargs(CASES[1]),
                           loss_weight=torch.ones(CASES[1].tasks + 1, dtype=torch.float64))


@pytest.mark.parametrize("case", CASES[:6], ids=str)
def test_loss_backward_gives_the_meta_gradient(case):
    params, lr, data = case.inputs(seed=13)
    p, a = leaves(params), (lr if isinstance(lr, float) else leaves(lr))
    lrs = [] if isinstance(a, float) else a
    value = ops.mlp_maml_loss(p, lr=a, **data, **grad_kwargs(case))
    got = torch.autograd.grad(value, [*p, *lrs])
    q, _ = reference.mlp_maml(p, lr=a, **data, **grad_kwargs(case))
    expected = torch.autograd.grad(q.mean(), [*p, *lrs])
    assert_rel(value.detach(), q.mean().detach(), what="loss")
    assert_rel(list(got), list(expected), what="meta-gradient")


def test_loss_refuses_a_second_derivative():
    params, lr, data = CASES[1].inputs()
    p = leaves(params)
    value = ops.mlp_maml_loss(p, lr=lr, **data, **grad_kwargs(CASES[1]))
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(value, p, create_graph=True)


def test_reference_under_torch_compile_is_second_order():
    """AOT autograd tracing of the nested autograd.grad drops its create_graph terms (the result
    was the first-order meta-gradient): the reference runs eagerly under torch.compile."""
    case = next(c for c in CASES if not c.kwargs()["first_order"] and c.kwargs()["steps"] > 1)
    params, lr, data = case.inputs(seed=6)
    expected = reference.mlp_maml_grad(params, lr=lr, **data, **grad_kwargs(case))
    compiled = torch.compile(reference.mlp_maml_grad, backend="aot_eager")(params, lr=lr, **data, **grad_kwargs(case))
    for got, want in zip(compiled[1], expected[1], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)
