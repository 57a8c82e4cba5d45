"""The learners' front-end checks (issue 12, defect 4): one rule per argument, a ValueError naming
it, on the fused and the generic path alike; and the learned-rate parameterisations (defect 1)."""

import math
import re

import pytest
import torch

from maml_ext.algorithms import MAML, build_algorithm
from maml_ext.models.mlp import build as build_mlp
from maml_ext.tasks import TaskBatch
from maml_ext.tasks.sinusoid import Sinusoid


def small_mlp(seed=0):
    torch.manual_seed(seed)
    return build_mlp(1, 1, hidden=(8, 8))


def batch(tasks=3, k=4):
    return Sinusoid().sample(tasks, k, k, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("lr, shown", [("0.1", "'0.1' (str)"), (True, "True (bool)"), (math.inf, "inf"),
                                       (math.nan, "nan"), (0.0, "0.0"), (-0.1, "-0.1"), (None, "None")])
def test_fixed_lr_must_be_a_finite_positive_number(lr, shown):
    with pytest.raises(ValueError, match=re.escape(f"lr must be > 0 and finite, got {shown}")):
        MAML(small_mlp(), lr=lr)


@pytest.mark.parametrize("steps", [0, -1, 1.7, "2", True])
def test_steps_must_be_a_positive_int(steps):
    with pytest.raises(ValueError, match=r"steps must be an int >= 1"):
        MAML(small_mlp(), steps=steps)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "generic"])
def test_adapt_with_zero_steps_returns_the_initialisation(fused):
    learner = MAML(small_mlp(), lr=0.1, steps=2, fused=fused)
    b = batch()
    params = learner.adapt(b.x_support, b.y_support, steps=0)
    assert params.step == 0
    for name, p in learner.model.named_parameters():
        a = params.adapted[name]
        assert torch.equal(a, p.detach().expand_as(a))


@pytest.mark.parametrize("steps", [1.7, -1, "1"])
def test_adapt_rejects_non_integral_or_negative_steps(steps):
    learner = MAML(small_mlp(), lr=0.1)
    b = batch()
    with pytest.raises(ValueError, match=r"steps must be an int >= 0"):
        learner.adapt(b.x_support, b.y_support, steps=steps)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "generic"])
@pytest.mark.parametrize("tasks, k, match", [(0, 4, r"at least one task"), (3, 0, r"at least one example")])
def test_empty_meta_batches_are_rejected(fused, tasks, k, match):
    learner = MAML(small_mlp(), lr=0.1, fused=fused)
    b = batch(max(tasks, 1), max(k, 1))
    empty = TaskBatch(b.x_support[:tasks, :k], b.y_support[:tasks, :k], b.x_query[:tasks], b.y_query[:tasks])
    with pytest.raises(ValueError, match=match):
        learner.meta_loss(empty)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "generic"])
@pytest.mark.parametrize("cut, message", [
    (lambda x, y: (x[0, :, 0], y), "x_support: expected [T=4, K, ...] with the K of x_support, got shape (4,)"),
    (lambda x, y: (x[:0], y[:0]), "x_support: expected at least one task (T >= 1), got shape (0, 4, 1)"),
    (lambda x, y: (x[:, :0], y[:, :0]), "x_support: expected at least one example per task (K >= 1), got shape (3, 0, 1)"),
    (lambda x, y: (x, y[:, :2]), "y_support: expected [T=3, K, ...] with the K of x_support, got shape (3, 2, 1)"),
    (lambda x, y: (x, y[:2]), "y_support: expected [T=3, K, ...] with the K of x_support, got shape (2, 4, 1)"),
])
def test_adapt_and_meta_loss_state_one_support_rule(fused, cut, message):
    """One rule, one message for a support set, whether it is adapted to or meta-trained on."""
    learner = MAML(small_mlp(), lr=0.1, fused=fused)
    b = batch()
    x, y = cut(b.x_support, b.y_support)
    for call in (lambda: learner.adapt(x, y), lambda: learner.meta_loss(TaskBatch(x, y, b.x_query, b.y_query))):
        with pytest.raises(ValueError, match=re.escape(message)):
            call()


def test_unknown_lr_parameterisation_is_named():
    with pytest.raises(ValueError, match=r"lr_parameterisation must be one of"):
        build_algorithm("metasgd", small_mlp(), lr_parameterisation="square")


@pytest.mark.parametrize("parameterisation", ["identity", "softplus", "exp"])
@pytest.mark.parametrize("name", ["metasgd", "maml++"])
def test_parameterisations_start_at_lr_and_train(name, parameterisation):
    learner = build_algorithm(name, small_mlp(), lr=0.03, steps=2, lr_parameterisation=parameterisation)
    for a in learner.learned_lrs():
        torch.testing.assert_close(a, torch.full_like(a, 0.03))
    learner.meta_loss(batch(), 0).backward()
    assert all(r.grad is not None and torch.isfinite(r.grad).all() for r in learner.lrs)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "generic"])
def test_softplus_meta_gradient_is_the_chain_rule_of_the_identity_one(fused):
    """d loss / d r = d loss / d α · sigmoid(r): the transform sits inside the graph on both paths."""
    def grads(parameterisation):
        learner = build_algorithm("metasgd", small_mlp().double(), lr=0.03,
                                  lr_parameterisation=parameterisation, fused=fused)
        b = batch()
        b = TaskBatch(*(t.double() for t in (b.x_support, b.y_support, b.x_query, b.y_query)))
        learner.meta_loss(b).backward()
        return learner, [r.grad for r in learner.lrs]

    _, d_alpha = grads("identity")
    soft, d_raw = grads("softplus")
    for g_a, g_r, r in zip(d_alpha, d_raw, soft.lrs):
        torch.testing.assert_close(g_r, g_a * torch.sigmoid(r.detach()), rtol=1e-10, atol=1e-14)
