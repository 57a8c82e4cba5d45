"""The engine-level BMAML op (torch.ops.maml_ext.mlp_bmaml_chaser, issue 14.4): float64 agreement
with its pure-PyTorch twin over varied T, M, widths, K, steps, losses and orders; the twin against
the generic BMAML learner; gradcheck of the map whose vector-Jacobian product the op computes;
opcheck; thread-count determinism; bad input (same messages on both paths); the learner's use."""

import pytest
import torch

from _ops_helpers import assert_rel, gen, mlp_batch, mlp_params, requires_extension
from maml_ext import ops, reference
from maml_ext.algorithms import BMAML
from maml_ext.models.mlp import MLP
from maml_ext.reference import svgd as reference_svgd
from maml_ext.tasks.sinusoid import Sinusoid

TIGHT = 1e-10


def batch64(tasks, ks, kq, seed):
    b = Sinusoid().sample(tasks, ks, kq, gen(seed))
    return type(b)(b.x_support.double(), b.y_support.double(), b.x_query.double(), b.y_query.double(), b.info)


class Case:
    def __init__(self, tasks, m, widths, ks, kq, steps, leader_steps, activation="relu", loss="mse",
                 first_order=False, lr=0.1):
        self.tasks, self.m, self.widths, self.ks, self.kq = tasks, m, widths, ks, kq
        self.steps, self.leader_steps, self.activation, self.loss = steps, leader_steps, activation, loss
        self.first_order, self.lr = first_order, lr

    def inputs(self, seed):
        g = gen(seed)
        params = mlp_params(g, self.widths, self.loss, tasks=self.m)
        xs, ys = mlp_batch(g, self.widths, self.loss, self.tasks, self.ks)
        xq, yq = mlp_batch(g, self.widths, self.loss, self.tasks, self.kq)
        return params, xs, ys, xq, yq

    def kwargs(self):
        return dict(steps=self.steps, leader_steps=self.leader_steps, lr=self.lr, activation=self.activation,
                    loss=self.loss, first_order=self.first_order)

    def __repr__(self):
        return (f"T{self.tasks}-M{self.m}-{'x'.join(map(str, self.widths))}-K{self.ks},{self.kq}-S{self.steps},"
                f"{self.leader_steps}-{self.activation}-{self.loss}{'-fo' if self.first_order else ''}")


CASES = [
    Case(3, 5, [1, 8, 7, 1], 5, 6, 1, 1),
    Case(2, 4, [2, 9, 3], 4, 3, 2, 2, "tanh"),
    Case(4, 3, [3, 6, 5, 4, 2], 3, 5, 3, 1, "tanh", "cross_entropy"),
    Case(1, 2, [1, 5, 1], 6, 2, 1, 3, "relu", "gaussian_nll"),
    Case(3, 1, [1, 7, 1], 4, 4, 2, 1),  # M = 1: MAML's SGD steps, no repulsion
    Case(5, 6, [2, 4, 4, 2], 3, 3, 2, 1, "relu", "mse", True),
    Case(2, 3, [1, 40, 40, 1], 10, 10, 1, 1, "tanh", "mse", False, 0.01),  # the paper's sinusoid net
]


@requires_extension
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_op_equals_reference(case):
    args = case.inputs(seed=len(repr(case)))
    got = ops.mlp_bmaml_chaser(*args, **case.kwargs())
    want = reference.mlp_bmaml_chaser(*args, **case.kwargs())
    assert_rel(list(got[:2]), list(want[:2]), TIGHT, "chase, query losses")
    assert_rel(got[2], want[2], TIGHT, "d chase / d particles")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_op_under_each_cpu_capability(capability, dtype):
    # Every engine build (its own copy of the SVGD arithmetic, csrc/svgd/svgd_task.h), widths that
    # leave remainders for every vector length and the 64-wide blocks of the particle combinations.
    case = Case(3, 4, [2, 67, 9, 3], 5, 4, 2, 1, "tanh")
    args = case.inputs(seed=4)
    params, xs, ys, xq, yq = args
    got = ops.mlp_bmaml_chaser([p.to(dtype) for p in params], xs.to(dtype), ys.to(dtype), xq.to(dtype),
                               yq.to(dtype), **case.kwargs())
    want = reference.mlp_bmaml_chaser(*args, **case.kwargs())
    tol = TIGHT if dtype == torch.float64 else 1e-4
    assert_rel([got[0].double(), got[1].double()], list(want[:2]), tol, "chase, query losses")
    assert_rel([g.double() for g in got[2]], want[2], tol, "d chase / d particles")


@pytest.mark.parametrize("first_order", [False, True])
def test_reference_equals_the_generic_learner(first_order):
    # The twin's chase and gradient against BMAML's generic path (batched forward, ops.svgd_step:
    # the compiled step with the extension, its reference twin without).
    batch = batch64(3, 5, 4, seed=1)
    torch.manual_seed(0)
    learner = BMAML(MLP(1, 1, hidden=(8, 6), activation="tanh").double(), lr=0.05, steps=2, leader_steps=2,
                    particles=4, init_noise=0.3, first_order=first_order, fused=False)
    loss = learner.meta_loss(batch)
    loss.backward()
    init = learner.initial_particles()
    names = learner.adapt_names  # the MLP's [W1, b1, ..., WL, bL] in order
    chase, query, grads = reference.mlp_bmaml_chaser(
        [init[n].detach() for n in names], batch.x_support, batch.y_support, batch.x_query, batch.y_query, steps=2,
        leader_steps=2, lr=0.05, activation="tanh", first_order=first_order)
    assert_rel(query.mean(), loss.detach(), TIGHT, "query loss")
    named = dict(learner.model.named_parameters())
    learner_grads = {n: torch.cat([named[n].grad.unsqueeze(0), e.grad]) for n, e in zip(learner.adapt_names,
                                                                                      learner.extra)}
    assert_rel(grads, [learner_grads[n] for n in names], TIGHT, "d chase / d particles")


def test_gradcheck_of_the_steps_the_op_differentiates(monkeypatch):
    # The op's gradient is J^T (2 (chaser − leader) / T), J the Jacobian of the SVGD steps from the
    # initial particles (the leader is a stop-gradient, so the chase itself is not gradchecked).
    # gradcheck that map in the twin, with the bandwidth held fixed as the formulas treat it; the op
    # matches the twin to 1e-10 above.
    monkeypatch.setattr(reference_svgd, "median_bandwidth", lambda sq: sq.new_full((sq.shape[0],), 0.7))
    g = gen(3)
    widths, tasks, m = [1, 3, 2], 2, 3
    params = mlp_params(g, widths, tasks=m)
    x, y = mlp_batch(g, widths, "mse", tasks, 4)
    rows_x = x.unsqueeze(1).expand(tasks, m, 4, 1).reshape(tasks * m, 4, 1)
    rows_y = y.unsqueeze(1).expand(tasks, m, 4, 2).reshape(tasks * m, 4, 2)

    def chaser(*init):
        sets = [p.unsqueeze(0).expand(tasks, *p.shape) for p in init]
        return tuple(reference.bmaml_svgd_steps(sets, rows_x, rows_y, 2, 0.2, "tanh", "mse", False))

    assert torch.autograd.gradcheck(chaser, tuple(p.requires_grad_() for p in params))


@requires_extension
def test_opcheck():
    case = CASES[1]
    params, xs, ys, xq, yq = case.inputs(seed=5)
    args = (params, xs, ys, xq, yq, case.steps, case.leader_steps, case.lr, case.activation, case.loss, False)
    torch.library.opcheck(torch.ops.maml_ext.mlp_bmaml_chaser.default, args,
                          test_utils=("test_schema", "test_faketensor"))


@requires_extension
def test_bitwise_identical_for_any_thread_count():
    case = Case(40, 5, [1, 40, 40, 1], 10, 10, 2, 1)
    args = case.inputs(seed=6)
    before = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            chase, query, grads = ops.mlp_bmaml_chaser(*args, **case.kwargs())
            runs.append([chase, query, *grads])
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def _bad(change):
    case = CASES[0]
    params, xs, ys, xq, yq = case.inputs(seed=7)
    call = dict(params=params, x_support=xs, y_support=ys, x_query=xq, y_query=yq, **case.kwargs())
    return {**call, **change(call)}


BAD = {
    "particle dims": (lambda c: {"params": [c["params"][0][:2], *c["params"][1:]]}, ValueError,
                      r"params\[1\]: expected a leading particle dimension of size M=2"),
    "no params": (lambda c: {"params": []}, ValueError, "params: expected the particles' parameters"),
    "steps": (lambda c: {"steps": 0}, ValueError, "steps: expected >= 1"),
    "leader steps": (lambda c: {"leader_steps": 0}, ValueError, "leader_steps: expected >= 1"),
    "lr": (lambda c: {"lr": float("nan")}, ValueError, "lr: expected a finite value"),
    "activation": (lambda c: {"activation": "gelu"}, ValueError, "activation: expected 'relu' or 'tanh'"),
    "query x": (lambda c: {"x_query": c["x_query"][:2]}, ValueError, r"query x: expected \[T=3"),
    "support dtype": (lambda c: {"y_support": c["y_support"].float()}, TypeError, "support y: expected dtype"),
    "x dims": (lambda c: {"x_support": c["x_support"][0]}, ValueError, r"x_support: expected \[T, K, in\]"),
}


@pytest.mark.parametrize("impl", [ops, reference], ids=["op", "reference"])
@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_named(impl, name):
    change, error, match = BAD[name]
    call = _bad(change)
    params = call.pop("params")
    with pytest.raises(error, match=match):
        impl.mlp_bmaml_chaser(params, **call)


@requires_extension
@pytest.mark.parametrize("name", list(BAD))
def test_both_paths_give_the_same_message(name):
    messages = []
    for impl in (ops, reference):
        call = _bad(BAD[name][0])
        params = call.pop("params")
        with pytest.raises(Exception) as err:
            impl.mlp_bmaml_chaser(params, **call)
        messages.append((type(err.value), str(err.value).splitlines()[0]))
    assert messages[0] == messages[1]


@requires_extension
def test_labels_out_of_range_are_refused():
    case = CASES[2]
    params, xs, ys, xq, yq = case.inputs(seed=8)
    yq[0, 0] = case.widths[-1]
    for impl in (ops, reference):
        with pytest.raises(ValueError, match=r"query y: class labels must lie in \[0, 2\)"):
            impl.mlp_bmaml_chaser(params, xs, ys, xq, yq, **case.kwargs())


@requires_extension
def test_the_learner_runs_the_op_for_a_fused_mlp_only(monkeypatch):
    calls = []
    op = torch.ops.maml_ext.mlp_bmaml_chaser
    monkeypatch.setattr(torch.ops.maml_ext, "mlp_bmaml_chaser", lambda *a: calls.append(1) or op(*a))
    batch = Sinusoid().sample(2, 5, 5, gen(9))
    for fused, expected in ((True, [1]), (False, [1])):
        torch.manual_seed(0)
        BMAML(MLP(1, 1, hidden=(8,)), particles=3, fused=fused).meta_loss(batch).backward()
        assert calls == expected  # the generic path (other models, fused=False) keeps its composed steps


@requires_extension
def test_learner_node_refuses_a_second_derivative():
    torch.manual_seed(0)
    learner = BMAML(MLP(1, 1, hidden=(4,)).double(), particles=2)
    batch = batch64(2, 3, 3, seed=10)
    loss = learner.meta_loss(batch)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(loss, list(learner.parameters()), create_graph=True)
