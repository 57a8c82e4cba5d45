"""BMAML's Chaser loss as one autograd node over the compiled ops (bmaml._MLPChaser): loss and
meta-gradient in float64 against the pure-PyTorch learner (generic path, reference SVGD) and
against the per-step nodes, over M, T, inner and leader steps, first and second order."""

import pytest
import torch

from _ops_helpers import assert_rel, gen, requires_extension
from maml_ext import ops, reference
from maml_ext.algorithms import BMAML, bmaml
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
