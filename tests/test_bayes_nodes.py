"""The fused-MLP autograd nodes of the row learners, in float64: BMAML's Chaser loss as one node
(bmaml._MLPChaser, over the engine op mlp_bmaml_chaser), loss and meta-gradient against the
pure-PyTorch learner (generic path, reference SVGD) and the per-step nodes over M, T, inner and leader steps, first and second order; the per-row
loss node (bayes._MLPRowLoss) against the generic forward, and the learners that use it."""

import pytest
import torch

from _ops_helpers import assert_rel, gen, requires_extension
from maml_ext import ops, reference
from maml_ext.algorithms import BMAML, PLATIPUS, bayes, bmaml
from maml_ext.algorithms.base import task_loss
from maml_ext.models.mlp import MLP
from maml_ext.tasks.sinusoid import Sinusoid

TIGHT = 1e-10


def batch64(tasks, seed):
    b = Sinusoid().sample(tasks, 6, 5, gen(seed))  # K_support != K_query: both data sets matter
    return type(b)(b.x_support.double(), b.y_support.double(), b.x_query.double(), b.y_query.double(), b.info)


def meta_grad(batch, fused, **options):
    torch.manual_seed(0)
    learner = BMAML(MLP(1, 1, hidden=(8, 6), activation=options.pop("activation", "relu")).double(), lr=0.05,
                    init_noise=0.3, fused=fused, **options)
    loss = learner.meta_loss(batch)
    loss.backward()
    return [loss, *(p.grad for p in learner.parameters())]


CASES = [  # (tasks, options)
    (3, {"particles": 4, "steps": 2, "leader_steps": 2}),
    (2, {"particles": 5, "steps": 1, "leader_steps": 1}),
    (4, {"particles": 3, "steps": 3, "leader_steps": 1, "activation": "tanh"}),
    (1, {"particles": 2, "steps": 1, "leader_steps": 3}),
    (3, {"particles": 1, "steps": 2, "leader_steps": 1}),
    (3, {"particles": 4, "steps": 2, "leader_steps": 2, "first_order": True}),
    (2, {"particles": 3, "steps": 1, "leader_steps": 2, "first_order": True, "activation": "tanh"}),
]


@requires_extension
@pytest.mark.parametrize("tasks,options", CASES)
def test_chaser_node_equals_pure_pytorch_and_the_step_nodes(monkeypatch, tasks, options):
    batch = batch64(tasks, seed=tasks + options["particles"])
    calls = []
    apply = bmaml._MLPChaser.apply
    monkeypatch.setattr(bmaml._MLPChaser, "apply", lambda *a: calls.append(1) or apply(*a))
    node = meta_grad(batch, True, **options)
    assert calls == [1]  # the Chaser loss ran as the node
    with monkeypatch.context() as patch:  # the previous fused path: one _MLPSVGDStep per step
        patch.setattr(bmaml.BMAML, "_chaser_node_available", lambda self, t: False)
        steps = meta_grad(batch, True, **dict(options))
    monkeypatch.setattr(ops, "svgd_step", reference.svgd_step)
    pure = meta_grad(batch, False, **dict(options))
    assert calls == [1]
    assert_rel(node, pure, TIGHT, "Chaser node vs pure PyTorch")
    assert_rel(node, steps, TIGHT, "Chaser node vs step nodes")


@requires_extension
def test_chaser_node_is_not_used_off_its_configuration(monkeypatch):
    # Likelihood objective, the generic path: the node does not apply.
    calls = []
    apply = bmaml._MLPChaser.apply
    monkeypatch.setattr(bmaml._MLPChaser, "apply", lambda *a: calls.append(1) or apply(*a))
    batch = batch64(2, seed=3)
    meta_grad(batch, True, particles=3, objective="likelihood")
    meta_grad(batch, False, particles=3)
    assert calls == []


@requires_extension
def test_chaser_node_backward_scales_with_the_loss_cotangent():
    # The node's backward multiplies by the incoming cotangent (a caller may weight the loss).
    batch = batch64(2, seed=5)
    grads = []
    for weight in (1.0, -2.5):
        torch.manual_seed(0)
        learner = BMAML(MLP(1, 1, hidden=(8, 6)).double(), lr=0.05, particles=3, init_noise=0.3)
        (weight * learner.meta_loss(batch)).backward()
        grads.append([p.grad for p in learner.parameters()])
    assert_rel([-2.5 * g for g in grads[0]], grads[1], TIGHT, "cotangent")


@requires_extension
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_row_loss_node_equals_the_generic_forward(activation):
    learner = BMAML(MLP(1, 1, hidden=(8, 6), activation=activation).double(), particles=3, fused=True)
    batch = batch64(4, seed=7)
    rows = {n: (p + 0.1 * torch.randn(12, *p.shape[1:], generator=gen(8), dtype=p.dtype)).requires_grad_()
            for n, p in learner._task_rows(4).items()}
    x, y = bayes.expand_rows(batch.x_query, 3), bayes.expand_rows(batch.y_query, 3)
    cot = torch.randn(12, generator=gen(9), dtype=torch.float64)
    results = []
    for losses_of in (learner.row_losses, lambda r, x, y: task_loss(learner.row_predict(r, x), y, learner.loss)):
        losses = losses_of(rows, x, y)
        results.append([losses, *torch.autograd.grad((losses * cot).sum(), list(rows.values()))])
    assert results[0][0].grad_fn.name() == "_MLPRowLossBackward"
    assert_rel(results[0], results[1], TIGHT, "row-loss node vs generic forward")


@requires_extension
def test_row_loss_node_refuses_a_second_derivative():
    learner = BMAML(MLP(1, 1, hidden=(4,)).double(), particles=2, fused=True)
    batch = batch64(2, seed=10)
    rows = {n: p.detach().clone().requires_grad_() for n, p in learner._task_rows(2).items()}
    losses = learner.row_losses(rows, bayes.expand_rows(batch.x_query, 2), bayes.expand_rows(batch.y_query, 2))
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(losses.sum(), list(rows.values()), create_graph=True)


@requires_extension
@pytest.mark.parametrize("first_order", [False, True])
def test_platipus_with_the_row_loss_node_equals_the_generic_path(first_order):
    batch = batch64(3, seed=11)

    def meta_grad(fused):
        torch.manual_seed(0)
        learner = PLATIPUS(MLP(1, 1, hidden=(8, 6)).double(), samples=3, first_order=first_order, fused=fused)
        loss = learner.meta_loss(batch)
        loss.backward()
        return [loss, *(p.grad for p in learner.parameters())]

    assert_rel(meta_grad(True), meta_grad(False), TIGHT, "PLATIPUS fused vs generic")


@requires_extension
def test_row_loss_node_gradcheck():
    learner = BMAML(MLP(1, 1, hidden=(3, 2), activation="tanh").double(), particles=2, fused=True)
    batch = batch64(2, seed=12)
    names = learner.fused_spec.param_names
    x, y = bayes.expand_rows(batch.x_query, 2), bayes.expand_rows(batch.y_query, 2)
    leaves = tuple((0.5 * torch.randn(4, *p.shape[1:], generator=gen(13), dtype=torch.float64)).requires_grad_()
                   for p in (learner._task_rows(2)[n] for n in names))
    assert torch.autograd.gradcheck(lambda *r: learner.row_losses(dict(zip(names, r)), x, y), leaves)
