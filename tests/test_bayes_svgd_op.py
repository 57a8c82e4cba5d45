"""The fused SVGD step (torch.ops.maml_ext.svgd_step): float64 agreement with the reference
(value and vector-Jacobian product) over varied T, M and tensor shapes, gradcheck, opcheck,
thread-count determinism, bad input, and BMAML's meta-gradient through it."""

import pytest
import torch

from _ops_helpers import assert_rel, gen, randn, requires_extension
from maml_ext import ops, reference
from maml_ext.algorithms import BMAML, bmaml
from maml_ext.models.mlp import MLP
from maml_ext.tasks.sinusoid import Sinusoid

TIGHT = 1e-10
SCALE, STEP = -0.7, 0.3  # score_scale, step_size: neither 1, so both are exercised


def op(xs, gs):
    return ops.svgd_step(xs, gs, SCALE, STEP)


def ref(xs, gs):
    return reference.svgd_step(xs, gs, SCALE, STEP)

# (T, M, per-tensor particle shapes): odd and even pair counts (M = 3: 3 pairs, M = 4: 6),
# M = 1 (no repulsion), one and several tensors, multi-dimensional slices.
SHAPES = [
    (3, 5, [(4, 2), (4,)]),
    (2, 4, [(7,)]),
    (4, 3, [(2, 3, 2), (5,), (1,)]),
    (1, 1, [(3, 3)]),
    (5, 2, [(6,), (2,)]),
    (2, 8, [(40, 1), (40,), (1, 40), (1,)]),
]


def make(shapes, tasks, m, seed, dtype=torch.float64):
    g = gen(seed)
    xs = [randn(g, tasks, m, *s, dtype=dtype) for s in shapes]
    gs = [randn(g, tasks, m, *s, dtype=dtype) for s in shapes]
    return xs, gs


def vjp(fn, xs, gs, cotangent):
    xs = [x.detach().requires_grad_() for x in xs]
    gs = [g.detach().requires_grad_() for g in gs]
    out = fn(xs, gs)
    total = sum((o * c).sum() for o, c in zip(out, cotangent))
    return out, torch.autograd.grad(total, [*xs, *gs])


@requires_extension
@pytest.mark.parametrize("tasks,m,shapes", SHAPES)
def test_fused_equals_reference_value_and_vjp(tasks, m, shapes):
    xs, gs = make(shapes, tasks, m, seed=tasks * 10 + m)
    cot = [randn(gen(99), *x.shape) for x in xs]
    out, grads = vjp(op, xs, gs, cot)
    ref_out, ref_grads = vjp(ref, xs, gs, cot)
    assert_rel([o - x for o, x in zip(out, xs)], [o - x for o, x in zip(ref_out, xs)], TIGHT, "step")
    assert_rel(list(grads), list(ref_grads), TIGHT, "vjp")


@requires_extension
def test_kernel_and_bandwidth_outputs_are_the_references():
    xs, gs = make([(4, 2), (4,)], 3, 5, seed=1)
    _, kernel, bandwidth = torch.ops.maml_ext.svgd_step(xs, gs, SCALE, STEP)
    sq = reference.svgd.pairwise_sq_dists(xs)
    h = reference.svgd.median_bandwidth(sq)
    assert_rel(bandwidth, h, TIGHT, "bandwidth")
    assert_rel(kernel, reference.svgd.rbf_kernel(sq, h), TIGHT, "kernel")


@requires_extension
def test_float32_close_to_float64():
    xs, gs = make([(5, 3), (5,)], 2, 5, seed=2)
    out32 = op([x.float() for x in xs], [g.float() for g in gs])
    assert_rel([o.double() - x for o, x in zip(out32, xs)], [o - x for o, x in zip(op(xs, gs), xs)], 1e-5, "float32")


def test_gradcheck_in_the_scores():
    # The bandwidth (a median) is a constant of the step, so finite differences in the particles
    # would see it move; in the scores the direction is exactly linear and gradcheck applies.
    xs, gs = make([(3, 2), (3,)], 2, 4, seed=3)
    gs = [g.requires_grad_() for g in gs]
    assert torch.autograd.gradcheck(lambda *g: tuple(op(xs, list(g))), tuple(gs))


def test_particle_gradient_is_the_finite_difference_with_the_bandwidth_held(monkeypatch):
    # With h patched to a constant the reference is a smooth function of the particles, so
    # gradcheck applies; the op's derivative in the particles must be that function's.
    xs, gs = make([(4,), (2,)], 2, 3, seed=4)
    cot = [randn(gen(5), *x.shape) for x in xs]
    got = vjp(op, xs, gs, cot)[1][:2]
    h = reference.svgd.median_bandwidth(reference.svgd.pairwise_sq_dists(xs))
    monkeypatch.setattr(reference.svgd, "median_bandwidth", lambda sq: h)
    leaves = tuple(x.detach().requires_grad_() for x in xs)
    assert torch.autograd.gradcheck(lambda *x: tuple(ref(list(x), gs)), leaves)
    assert_rel(list(got), list(vjp(ref, xs, gs, cot)[1][:2]), TIGHT, "d step / d particles")


@requires_extension
def test_opcheck():
    xs, gs = make([(3, 2), (3,)], 2, 4, seed=6)
    args = ([x.requires_grad_() for x in xs], [g.requires_grad_() for g in gs], SCALE, STEP)
    torch.library.opcheck(torch.ops.maml_ext.svgd_step, args)
    xs, gs = make([(3, 2), (3,)], 2, 4, seed=7)
    _, kernel, bandwidth = torch.ops.maml_ext.svgd_step(xs, gs, SCALE, STEP)
    torch.library.opcheck(torch.ops.maml_ext.svgd_step_backward,
                          ([x.clone() for x in xs], xs, gs, SCALE, STEP, kernel, bandwidth),
                          test_utils=("test_schema", "test_faketensor"))


@requires_extension
def test_bitwise_identical_for_any_thread_count():
    xs, gs = make([(40, 1), (40,), (1, 40), (1,)], 25, 5, seed=8)
    cot = [randn(gen(9), *x.shape) for x in xs]
    before = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out, grads = vjp(op, xs, gs, cot)
            runs.append([*out, *grads])
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@requires_extension
def test_compiled_backward_refuses_a_second_derivative():
    xs, gs = make([(3,)], 1, 3, seed=10)
    xs = [x.requires_grad_() for x in xs]
    out = op(xs, gs)
    (d,) = torch.autograd.grad(out[0].sum(), xs, create_graph=True)
    with pytest.raises(RuntimeError, match="not itself differentiable"):
        d.sum().backward()


BAD = [
    (lambda x, g: ([], [], SCALE, STEP), ValueError, "particles: expected at least one tensor"),
    (lambda x, g: (x, g[:1], SCALE, STEP), ValueError, "scores: expected 2 tensors"),
    (lambda x, g: (x, g, float("nan"), STEP), ValueError, "score_scale: expected a finite number"),
    (lambda x, g: (x, g, SCALE, float("inf")), ValueError, "step_size: expected a finite number"),
    (lambda x, g: ([x[0][0, 0, :, 0]], [g[0][0, 0, :, 0]], SCALE, STEP), ValueError, r"particles\[0\]: expected \[T, M, \.\.\.\]"),
    (lambda x, g: (x, [g[0], g[1][:, :2]], SCALE, STEP), ValueError, r"scores\[1\]: expected shape"),
    (lambda x, g: ([x[0], x[1][:1]], g, SCALE, STEP), ValueError, r"particles\[1\]: expected \[T, M"),
    (lambda x, g: (x, [g[0], g[1].float()], SCALE, STEP), TypeError, r"scores\[1\]: expected dtype"),
    (lambda x, g: ([x[0].int(), x[1]], g, SCALE, STEP), TypeError, r"particles\[0\]: expected dtype float32 or float64"),
]


@pytest.mark.parametrize("case,error,message", BAD)
@pytest.mark.parametrize("impl", ["ops", "reference"])
def test_bad_input_is_named(case, error, message, impl):
    xs, gs = make([(3, 2), (3,)], 2, 4, seed=11)
    fn = ops.svgd_step if impl == "ops" else reference.svgd_step
    with pytest.raises(error, match=message):
        fn(*case(xs, gs))


def node_inputs(tasks, m, seed):
    """Rows [T·M, ...] of a 1-5-4-1 MLP (tanh: smooth for gradcheck) and support data."""
    g = gen(seed)
    shapes = [(5, 1), (5,), (4, 5), (4,), (1, 4), (1,)]
    rows = [0.5 * randn(g, tasks * m, *s) for s in shapes]
    x = randn(g, tasks, 6, 1).repeat_interleave(m, 0)
    y = randn(g, tasks, 6, 1).repeat_interleave(m, 0)
    return rows, x, y


def composed_step(rows, x, y, m, lr):
    """The node's definition in pure PyTorch: reference mlp_hvp gradients, reference SVGD step."""
    _, grads, _ = reference.mlp_hvp(rows, x, y, activation="tanh")
    t = rows[0].shape[0] // m
    sets = [r.view(t, m, *r.shape[1:]) for r in rows]
    moved = reference.svgd_step(sets, [g.view(s.shape) for g, s in zip(grads, sets)], -1.0, lr)
    return [o.reshape(r.shape) for o, r in zip(moved, rows)]


def node_step(rows, x, y, m, lr, first_order=False):
    return list(bmaml._MLPSVGDStep.apply(x, y, m, lr, first_order, "tanh", "mse", *rows))


@requires_extension
def test_step_node_gradcheck_with_one_particle():
    # M = 1: no bandwidth (h = 1), so the node is a smooth function of the rows and gradcheck
    # applies; its backward is then θ̄ − α H θ̄, the mlp_hvp half of the node.
    rows, x, y = node_inputs(3, 1, seed=20)
    leaves = tuple(r.requires_grad_() for r in rows)
    assert torch.autograd.gradcheck(lambda *r: tuple(node_step(list(r), x, y, 1, 0.3)), leaves)


@requires_extension
@pytest.mark.parametrize("tasks,m", [(2, 3), (3, 4), (1, 2)])
def test_step_node_equals_the_composed_reference(tasks, m):
    # M > 1: value and VJP against the pure-PyTorch composition (whose particle derivative with
    # the bandwidth held is gradchecked above): the node's svgd_step_backward + one HVP.
    rows, x, y = node_inputs(tasks, m, seed=21 + m)
    cot = [randn(gen(22), *r.shape) for r in rows]
    results = []
    for fn in (node_step, composed_step):
        leaves = [r.detach().requires_grad_() for r in rows]
        out = fn(leaves, x, y, m, 0.3)
        total = sum((o * c).sum() for o, c in zip(out, cot))
        results.append(([o - r for o, r in zip(out, rows)], torch.autograd.grad(total, leaves)))
    assert_rel(results[0][0], results[1][0], TIGHT, "step")
    assert_rel(list(results[0][1]), list(results[1][1]), TIGHT, "vjp")
    leaves = [r.detach().requires_grad_() for r in rows]
    out = node_step(leaves, x, y, m, 0.3, first_order=True)  # first order: the identity Jacobian
    assert all(torch.equal(g, c) for g, c in zip(torch.autograd.grad(out, leaves, cot), cot))


@requires_extension
@pytest.mark.parametrize("objective,first_order", [("chaser", False), ("likelihood", False), ("chaser", True)])
def test_bmaml_meta_gradient_equals_the_pure_pytorch_reference(monkeypatch, objective, first_order):
    # The fused learner (SVGD steps as _MLPSVGDStep nodes), the same ops composed through autograd
    # and the pure-PyTorch learner (generic path, reference SVGD): loss and meta-gradient.
    b = Sinusoid().sample(3, 6, 6, gen(0))
    batch = type(b)(b.x_support.double(), b.y_support.double(), b.x_query.double(), b.y_query.double(), b.info)

    def meta_grad(fused):
        torch.manual_seed(0)
        learner = BMAML(MLP(1, 1, hidden=(8, 8)).double(), lr=0.05, steps=2, particles=4, objective=objective,
                        first_order=first_order, init_noise=0.3, leader_steps=2, fused=fused)
        loss = learner.meta_loss(batch)
        loss.backward()
        return [loss, *(p.grad for p in learner.parameters())]

    nodes = []
    monkeypatch.setattr(bmaml.BMAML, "_chaser_node_available", lambda self, t: False)  # see test_bayes_nodes
    monkeypatch.setattr(bmaml._MLPSVGDStep, "apply", spy(bmaml._MLPSVGDStep.apply, nodes))
    fused = meta_grad(True)
    assert len(nodes) == 2 + (2 if objective == "chaser" else 0)  # inner steps (+ leader steps)
    monkeypatch.setattr(bmaml, "step_node_available", lambda t: False)
    composed = meta_grad(True)
    monkeypatch.setattr(ops, "svgd_step", reference.svgd_step)
    pure = meta_grad(False)
    assert len(nodes) == 2 + (2 if objective == "chaser" else 0)
    assert_rel(fused, pure, TIGHT, "loss and meta-gradient vs pure PyTorch")
    assert_rel(composed, pure, TIGHT, "composed ops vs pure PyTorch")


def spy(fn, calls):
    def wrapped(*args):
        calls.append(1)
        return fn(*args)

    return wrapped
