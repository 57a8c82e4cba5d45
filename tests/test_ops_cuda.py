"""CUDA twins: every fused op on a GPU against the reference on the same device (skipped without
a CUDA device and a CUDA build of the extension)."""

import pytest
import torch

import test_ops_inner_update as iu
import test_ops_mlp_hvp as hvp
import test_ops_mlp_maml as maml
from _ops_helpers import assert_rel, dot, gen, leaves, like, randn
from maml_ext import ops, reference

pytestmark = pytest.mark.cuda
DEVICE = "cuda"


def on_device(obj):
    if isinstance(obj, torch.Tensor):
        return obj.to(DEVICE)
    if isinstance(obj, (list, tuple)):
        return type(obj)(on_device(o) for o in obj)
    if isinstance(obj, dict):
        return {k: on_device(v) for k, v in obj.items()}
    return obj


@pytest.mark.parametrize("layout", iu.LAYOUTS)
@pytest.mark.parametrize("lr_kind", iu.LR_KINDS)
def test_inner_update(layout, lr_kind):
    params, grads, lr, step = on_device(iu.make_case(layout, lr_kind, tasks=25))
    cot = [torch.randn_like(g) for g in grads]

    def run(fn):
        p, g = leaves(params), leaves(grads)
        a = lr if isinstance(lr, float) else leaves(lr)
        out = fn(p, g, a, step)
        return out, torch.autograd.grad(dot(cot, out), [*p, *g, *iu.lr_tensors(a)])

    out, grads_fused = run(ops.inner_update)
    assert all(o.device.type == "cuda" for o in out)
    ref_out, grads_ref = run(reference.inner_update)
    assert_rel(out, ref_out, what="outputs")
    assert_rel(grads_fused, grads_ref, what="gradients")


@pytest.mark.parametrize("lr_kind", iu.LR_KINDS)
def test_inner_update_in_place(lr_kind):
    params, grads, lr, step = on_device(iu.make_case("per_task", lr_kind, tasks=3))
    updated = [p.clone() for p in params]
    ops.inner_update_(updated, grads, lr, step)
    assert_rel(updated, reference.inner_update(params, grads, lr, step))


@pytest.mark.parametrize("case", hvp.CASES, ids=str)
def test_mlp_hvp(case):
    params, x, y, v, w = on_device(case.inputs())
    g = gen(3)
    c, u, hw = on_device([randn(g, case.tasks), like(g, params), like(g, params)])

    def run(fn):
        p, d = leaves(params), leaves(v)
        loss, grads, hvps = fn(p, x, y, d, **case.kwargs(w))
        d_params = torch.autograd.grad((c * loss).sum() + dot(u, grads), p, retain_graph=True)
        d_direction = torch.autograd.grad(dot(hw, hvps), d)
        return [loss, grads, hvps, d_params, d_direction]

    got = run(ops.mlp_hvp)
    assert got[0].device.type == "cuda"
    expected = run(reference.mlp_hvp)
    for g, e, what in zip(got, expected, ("loss", "grads", "hvps", "d params", "d direction")):
        assert_rel(g, e, what=what)


@pytest.mark.parametrize("case", maml.CASES, ids=str)
def test_mlp_maml(case):
    params, lr, data = on_device(case.inputs(seed=2))
    cot = on_device(maml.cotangents(case, params))
    got = maml.meta_gradients(ops.mlp_maml, case, params, lr, data, cot)
    assert got[0].device.type == "cuda"
    expected = maml.meta_gradients(reference.mlp_maml, case, params, lr, data, cot)
    for g, e, what in zip(got, expected, ("query loss", "adapted", "meta-gradients")):
        assert_rel(g, e, what=what)
