"""Uncertainty evaluation: predictive mixtures, NLL, 90% coverage, ECE, the eval JSON and the
sampled-fit plots for BMAML / PLATIPUS (and MAML treated as a one-set mixture)."""

import math

import pytest
import torch
import torch.nn.functional as F

from maml_ext.algorithms.bayes import point_metrics
from maml_ext.train import config, evaluate, loop, plots

TINY = [
    "model.hidden=[8]", "train.iterations=3", "train.meta_batch=3", "train.log_every=1",
    "train.checkpoint_every=3", "eval.num_tasks=12", "eval.shots=[5]", "eval.k_query=8", "eval.steps=2",
    "eval.chunk=5",
]


def trained(tmp_path, name, *extra):
    cfg = config.load("sinusoid", [*TINY, f"algorithm.name={name}", *extra])
    loop.train(cfg, tmp_path / name, progress=False)
    run, _ = loop.restore(tmp_path / name / loop.CHECKPOINT)
    return run, cfg


# ----- regression mixtures ------------------------------------------------------------------
def test_one_set_mixture_is_a_gaussian():
    gen = torch.Generator().manual_seed(0)
    samples = torch.randn(2, 3, 1, 4, 1, generator=gen, dtype=torch.float64)
    y = torch.randn(3, 4, 1, generator=gen, dtype=torch.float64)
    noise = torch.tensor([0.5, 2.0], dtype=torch.float64)
    normal = torch.distributions.Normal(samples[:, :, 0], noise.view(2, 1, 1, 1))
    torch.testing.assert_close(evaluate.mixture_log_likelihood(samples, y, noise), normal.log_prob(y))
    torch.testing.assert_close(evaluate.mixture_cdf(samples, y, noise), normal.cdf(y))


def test_mixture_averages_component_densities():
    samples = torch.tensor([-1.0, 1.0], dtype=torch.float64).view(1, 1, 2, 1, 1)
    y = torch.zeros(1, 1, 1, dtype=torch.float64)
    noise = torch.tensor([1.0], dtype=torch.float64)
    expected = math.log(math.exp(-0.5) / math.sqrt(2 * math.pi))  # both components at distance 1
    assert evaluate.mixture_log_likelihood(samples, y, noise).item() == pytest.approx(expected)
    assert evaluate.mixture_cdf(samples, y, noise).item() == pytest.approx(0.5)


def test_fitted_noise_of_a_point_predictor_is_the_rms_residual():
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(50, 40, 1, generator=gen, dtype=torch.float64)
    samples = (y + 0.3 * torch.randn(y.shape, generator=gen, dtype=torch.float64)).view(1, 50, 1, 40, 1)
    rms = (samples[0, :, 0] - y).pow(2).mean().sqrt().item()
    sigma = evaluate.fit_noise(samples, y).item()
    assert sigma == pytest.approx(rms, rel=0.03)  # grid spacing is 5.9%


def test_coverage_of_a_calibrated_predictor_is_near_90_percent():
    gen = torch.Generator().manual_seed(1)
    mean = torch.randn(1, 200, 1, 50, 1, generator=gen, dtype=torch.float64)
    y = mean[0, :, 0] + 0.5 * torch.randn(200, 50, 1, generator=gen, dtype=torch.float64)
    found = evaluate.regression_metrics(mean, y, torch.tensor([0.5], dtype=torch.float64))
    assert found["coverage90"].mean().item() == pytest.approx(0.9, abs=0.01)
    too_sure = evaluate.regression_metrics(mean, y, torch.tensor([0.1], dtype=torch.float64))
    assert too_sure["coverage90"].mean().item() < 0.3
    assert too_sure["nll"].mean() > found["nll"].mean()


# ----- classification -----------------------------------------------------------------------
def test_ece_by_hand():
    # Bins of width 0.1. Confidences 0.95, 0.95 (one right) -> bin 10: |0.5 − 0.95| · 2/5;
    # 0.55, 0.55, 0.55 (all right) -> bin 6: |1 − 0.55| · 3/5. ECE = 0.18 + 0.27 = 0.45.
    confidence = torch.tensor([[0.95, 0.95, 0.55, 0.55, 0.55]], dtype=torch.float64)
    correct = torch.tensor([[1.0, 0.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    assert evaluate.expected_calibration_error(confidence, correct).item() == pytest.approx(0.45)
    assert evaluate.expected_calibration_error(torch.ones(1, 4), torch.ones(1, 4)).item() == 0.0


def test_classification_averages_probabilities():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 6, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (3, 6), generator=gen)
    found, confidence, correct = evaluate.classification_metrics(logits, y)
    probs = torch.softmax(logits, -1).mean(2)
    nll = -probs.log().gather(-1, y.expand(2, 3, 6).unsqueeze(-1)).squeeze(-1).mean(2)
    torch.testing.assert_close(found["loss"], nll)
    torch.testing.assert_close(found["accuracy"], (probs.argmax(-1) == y).double().mean(2))
    torch.testing.assert_close(confidence, probs.max(-1).values.flatten(1))
    one = point_metrics(logits[:, :, :1], y, "cross_entropy")["loss"]
    by_torch = F.cross_entropy(logits[:, :, 0].flatten(0, 2), y.expand(2, 3, 6).flatten(), reduction="none")
    torch.testing.assert_close(one, by_torch.view(2, 3, 6).mean(2))


# ----- the evaluation of trained runs ----------------------------------------------------------
@pytest.mark.parametrize("name", ["maml", "bmaml", "platipus"])
def test_evaluate_reports_uncertainty_and_is_reproducible(tmp_path, name):
    run, cfg = trained(tmp_path, name)
    first = evaluate.evaluate(run, cfg)
    assert first == evaluate.evaluate(run, cfg)
    r = first["shots"]["5"]
    assert r["sets"] == (1 if name == "maml" else 5)
    assert len(r["nll"]["mean"]) == len(r["coverage90"]["mean"]) == len(r["noise_std"]) == 3
    assert all(0 <= c <= 1 for c in r["coverage90"]["mean"])
    table = evaluate.table(first, steps=(0, 2))
    assert "| NLL |" in table and "| 90% interval coverage |" in table
    if name == "maml":  # a point learner's loss is still its plain query MSE
        batch = evaluate.held_out(run, 5, cfg)
        plain = run.learner.evaluate_metrics(batch, 2)["loss"].double().mean(1)
        torch.testing.assert_close(torch.tensor(r["loss"]["mean"], dtype=torch.float64), plain)


def test_sinusoid_fits_draw_sets_and_ambiguous_tasks(tmp_path):
    run, cfg = trained(tmp_path, "bmaml", "algorithm.particles=3")
    out = plots.sinusoid_fits(run, cfg, tmp_path / "fits.png", shots=5)
    assert out.stat().st_size > 10_000
    tasks = plots.ambiguous_tasks(run.family, 5, 4, torch.Generator().manual_seed(0))
    width = tasks.x_support.amax(1) - tasks.x_support.amin(1)
    assert (width <= plots.AMBIGUOUS_WIDTH).all() and tasks.x_query.shape == (4, 200, 1)
    torch.testing.assert_close(tasks.y_support, run.family.curve(tasks.info, tasks.x_support))


@pytest.mark.parametrize(("last", "columns"), [(3, (0, 1, 2, 3)), (5, (0, 1, 2, 3, 4, 5)), (10, (0, 1, 2, 3, 5, 10)),
                                               (12, (0, 1, 2, 3, 5, 10, 12))])
def test_table_columns_follow_the_evaluated_steps(last, columns):
    values = {"loss": {"mean": [0.5] * (last + 1), "ci95": [0.1] * (last + 1)}}
    header = evaluate.table({"shots": {"5": values}}).splitlines()[0]
    steps = [f"{s} step" if s == 1 else f"{s} steps" for s in columns]
    assert header == "| shots | metric | " + " | ".join(steps) + " |"
