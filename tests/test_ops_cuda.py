"""CUDA twins: every fused op on a GPU against the reference on the same device (skipped without
a CUDA device and a CUDA build of the extension)."""

import pytest
import torch

import _inner_update_cases as iu
import _mlp_hvp_cases as hvp
import _mlp_maml_cases as maml
from _ops_helpers import as_double, assert_rel, dot, gen, leaves, like, randn
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


# Multi-tensor apply: more tensors than one launch's metadata holds (24), tensors of several
# chunks (65536 elements each), and one tensor of more chunks than a launch holds (320).
MANY_SHAPES = [(3, 2), (), (300, 300), (7,)] * 10 + [(70001,)]


@pytest.mark.parametrize("layout", iu.LAYOUTS)
@pytest.mark.parametrize("lr_kind", ["float", "elementwise", "per_step_scalar"])
def test_inner_update_multi_tensor_lists(layout, lr_kind):
    params, grads, lr, step = on_device(iu.make_case(layout, lr_kind, tasks=3, shapes=MANY_SHAPES))
    assert_rel(ops.inner_update(params, grads, lr, step), iu.closed_form(params, grads, lr, step))
    updated = [p.clone() for p in params] if layout == "per_task" else None
    if updated is not None:
        ops.inner_update_(updated, grads, lr, step)
        assert_rel(updated, iu.closed_form(params, grads, lr, step), what="in place")


def test_inner_update_multi_tensor_more_chunks_than_one_launch():
    g = torch.Generator(device=DEVICE).manual_seed(0)
    params = [torch.randn(4, 3, device=DEVICE), torch.randn(330 * 65536 + 5, device=DEVICE, generator=g)]
    grads = [torch.randn_like(p) for p in params]
    assert_rel(ops.inner_update(params, grads, 0.1, None), [p - 0.1 * d for p, d in zip(params, grads)],
               tol=1e-6)


def test_inner_update_does_not_sync():
    params, grads, lr, step = on_device(iu.make_case("per_task", "per_step", tasks=3))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = torch.ops.maml_ext.inner_update(params, grads, lr, 1.0, step)
        torch.ops.maml_ext.inner_update_(params, grads, lr, 1.0, step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(out) == len(params)


# The fused mlp_maml_grad kernel (one block per task, csrc/mlp/mlp_maml.h): every case of the
# emulated-kernel tests on the GPU, plus cases whose workspace exceeds shared memory (global-memory
# workspace) and whose parameters do (the batched path).
FUSED_CASES = maml.EXTRA + maml.CASES + [
    maml.Case(3, 2000, (1, 40, 40, 1), "tanh", "mse", 2, "elementwise"),  # workspace in global memory
    maml.Case(2, 5, (3, 200, 200, 2), "relu", "gaussian_nll", 2, "scalar"),  # parameters too wide
]


@pytest.mark.parametrize("case", FUSED_CASES, ids=str)
def test_fused_mlp_maml_grad(case):
    args = on_device(maml.grad_args(case, seed=31))
    got = torch.ops.maml_ext.mlp_maml_grad(*args)
    assert got[0].device.type == "cuda"
    expected = maml.reference_grad(args)
    assert_rel(got[0], expected[0], what="query loss")
    assert_rel(list(got[1]), list(expected[1]), what="d params")
    assert_rel(list(got[2]), list(expected[2]), what="d lrs")


def test_cross_entropy_labels_are_not_read_on_the_host():
    """Class labels are checked on the device (fused kernel) or by ATen's index asserts, never by
    reading them on the host: no synchronisation in the cross-entropy op either."""
    case = next(c for c in FUSED_CASES if c.loss == "cross_entropy")
    args = on_device(maml.grad_args(case, seed=37))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = torch.ops.maml_ext.mlp_maml_grad(*args)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_rel(got[0], maml.reference_grad(args)[0], what="query loss")


@pytest.mark.parametrize("case", [maml.EXTRA[0], maml.CASES[3]], ids=str)
def test_fused_mlp_maml_grad_float32(case):
    args = maml.grad_args(case, 32, torch.float32)
    got = torch.ops.maml_ext.mlp_maml_grad(*on_device(args))
    expected = maml.reference_grad(as_double(args))
    assert_rel(got[0].double(), expected[0], tol=1e-5, what="query loss")
    assert_rel([g.double() for g in got[1]], list(expected[1]), tol=1e-4, what="d params")


def meta_step(params, data, weight):
    """One meta-training step: the fused meta-gradient, then SGD on the shared initialisation."""
    _, grads, _ = torch.ops.maml_ext.mlp_maml_grad(
        params, [], 0.01, False, data["x_support"], data["y_support"], None, data["x_query"],
        data["y_query"], None, 3, "relu", "mse", False, weight)
    torch.ops.maml_ext.inner_update_(params, grads, [], 0.1, None)


def test_fused_meta_step_is_graph_capturable_and_does_not_sync():
    case = maml.EXTRA[0]
    params, _, data = on_device(case.inputs(seed=33))
    weight = torch.full((case.tasks,), 1.0 / case.tasks, device=DEVICE, dtype=torch.float64)
    eager = [p.clone() for p in params]
    for _ in range(2):
        meta_step(eager, data, weight)

    static = [p.clone() for p in params]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the graph, as torch.cuda.graphs asks
        meta_step([p.clone() for p in params], data, weight)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # (entering it synchronises: the sync check goes inside)
        torch.cuda.set_sync_debug_mode("error")
        try:
            meta_step(static, data, weight)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for p, p0 in zip(static, params):  # capture ran nothing: start from the initial parameters
        p.copy_(p0)
    graph.replay()
    graph.replay()
    assert_rel(static, eager, what="replayed meta-steps")
