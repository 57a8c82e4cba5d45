"""Multi-step evaluation with the fused kernels equals the generic evaluation (float64)."""

from __future__ import annotations

import pytest
import torch

from maml_ext.algorithms import MAML
from maml_ext.models import mlp
from maml_ext.tasks import TaskBatch
from maml_ext.train import evaluate
from maml_ext.train.evaluate import predictive_samples
from maml_ext.train.fused_eval import fused_query_outputs

STEPS = 4


def _batch(loss: str, tasks: int = 5, k: int = 6, classes: int = 3) -> TaskBatch:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(tasks, 2 * k, 2, generator=g, dtype=torch.float64)
    if loss == "mse":
        y = torch.randn(tasks, 2 * k, 1, generator=g, dtype=torch.float64)
    else:
        y = torch.randint(0, classes, (tasks, 2 * k), generator=g)
    return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])


def _learners(activation: str, loss: str, **kw) -> tuple[MAML, MAML]:
    torch.manual_seed(0)
    out = 1 if loss == "mse" else 3
    model = mlp.build(2, out, hidden=(7, 5), activation=activation).double()
    twin = mlp.build(2, out, hidden=(7, 5), activation=activation).double()
    twin.load_state_dict(model.state_dict())
    fused = MAML(model, lr=0.3, steps=2, loss=loss, **kw)
    generic = MAML(twin, lr=0.3, steps=2, loss=loss, fused=False, **kw)
    assert fused.fused_spec is not None and generic.fused_spec is None
    if kw.get("learn_lr", "none") != "none":  # distinct learned rates, the same in both
        with torch.no_grad():
            for a, b in zip(fused.lrs, generic.lrs):
                a.uniform_(0.05, 0.4, generator=torch.Generator().manual_seed(a.numel()))
                b.copy_(a)
    return fused, generic


def _assert_equal_to_generic(fused: MAML, generic: MAML, batch: TaskBatch, lr: float | None) -> None:
    gen = torch.Generator()
    got = fused_query_outputs(fused, batch, STEPS, lr)
    want = predictive_samples(generic, batch, STEPS, lr, gen).squeeze(2)
    assert got is not None and got.shape == want.shape == (STEPS + 1, *batch.x_query.shape[:2], want.shape[-1])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_equals_generic_evaluation(activation, loss):
    fused, generic = _learners(activation, loss)
    _assert_equal_to_generic(fused, generic, _batch(loss), None)


@pytest.mark.parametrize("learn_lr", ["elementwise", "per_step"])
def test_learned_rates_and_lr_override(learn_lr):
    # per_step: evaluation runs more steps than training, the later steps reuse the last row.
    fused, generic = _learners("tanh", "mse", learn_lr=learn_lr)
    _assert_equal_to_generic(fused, generic, _batch("mse"), None)
    _assert_equal_to_generic(fused, generic, _batch("mse"), 0.05)


def test_evaluator_takes_the_fused_path(monkeypatch):
    fused, _ = _learners("relu", "mse")

    def generic_inner_loop(*args, **kwargs):
        raise AssertionError("the evaluator ran the generic inner loop")

    monkeypatch.setattr(fused, "inner_loop", generic_inner_loop)
    samples = predictive_samples(fused, _batch("mse"), STEPS, None, torch.Generator())
    assert samples.shape[:3] == (STEPS + 1, 5, 1)


def test_other_learners_are_left_to_the_generic_path():
    _, generic = _learners("relu", "mse")
    assert fused_query_outputs(generic, _batch("mse"), STEPS, None) is None


@pytest.mark.parametrize("scale", [0.01, 0.3, 2.0])
def test_point_learner_noise_fit_equals_the_mixture_formula(scale):
    # One component: the closed form must pick the σ the grid search over the mixture picks.
    g = torch.Generator().manual_seed(1)
    samples = torch.randn(STEPS + 1, 6, 1, 9, 1, generator=g, dtype=torch.float64)
    y = samples[0, :, 0] + scale * torch.randn(6, 9, 1, generator=g, dtype=torch.float64)
    samples[1:] += scale * torch.randn(STEPS, 6, 1, 9, 1, generator=g, dtype=torch.float64)
    grid = evaluate.NOISE_GRID
    scores = torch.stack([evaluate.mixture_log_likelihood(samples, y, s).flatten(1).mean(1) for s in grid], 1)
    torch.testing.assert_close(evaluate.fit_noise(samples, y), grid[scores.argmax(1)], rtol=0, atol=0)
