"""The ambiguity benchmark's metrics on hand-made samples, its task sampler, and a tiny end-to-end
run (every learner trains and evaluates)."""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # scripts, not a package
import bayes_uncertainty as bu  # noqa: E402
from maml_ext.tasks import TaskBatch  # noqa: E402
from maml_ext.tasks.sinusoid import Sinusoid  # noqa: E402


def test_metrics_on_known_samples():
    # One task, grid x = 0..3, support at x = 0; truth 0; two samples ±1 except at x = 0 (both 0).
    x = torch.tensor([0.0, 0.4, 2.0, 3.0]).view(1, 4, 1)
    batch = TaskBatch(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), x, torch.zeros(1, 4, 1))
    s = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, -1.0, -1.0, -1.0]]).view(1, 2, 4, 1)
    m = bu.metrics(s, batch, sigma0=0.1)
    assert m["spread far"].item() == 1.0  # x = 2, 3
    assert m["spread near"].item() == 0.5  # x = 0 (0) and x = 0.4 (1)
    assert m["spread all"].item() == 0.75
    bins = bu.by_distance(s, batch)  # bins [0, .5): d = 0, 0.4 | [.5, 1) | [1, 2) | [2, 3): 2 | [3, inf): 3
    assert [b[0] for b in bins] == [0.5, 0.0, 0.0, 0.25, 0.25]
    assert bins[0][1:] == (0.5, 0.0) and bins[3][1:] == (1.0, 0.0) and bins[4][1:] == (1.0, 0.0)
    assert m["envelope coverage"].item() == 1.0
    assert m["coverage 90%"].item() == 1.0
    assert m["MSE"].item() == 0.0
    scale = torch.tensor([0.1, math.sqrt(1.01), math.sqrt(1.01), math.sqrt(1.01)])
    assert torch.allclose(m["NLL"], (scale.log() + 0.5 * math.log(2 * math.pi)).mean().view(1))
    # A point predictor that misses by 1 everywhere: outside every interval.
    m = bu.metrics(torch.ones(1, 1, 4, 1), batch, sigma0=0.1)
    assert m["spread far"].item() == 0.0 and m["envelope coverage"].item() == 0.0 and m["coverage 90%"].item() == 0.0


def test_spread_other_half_averages_the_half_opposite_the_support():
    # Support at x = -1 and -2 (mean -1.5): the other half is x > 0, i.e. x = 1 and 3 (spread 2 and
    # 4); x = -3 and 0 (spread 100) are not in it.
    x = torch.tensor([-3.0, 0.0, 1.0, 3.0]).view(1, 4, 1)
    xs = torch.tensor([-1.0, -2.0]).view(1, 2, 1)
    batch = TaskBatch(xs, torch.zeros(1, 2, 1), x, torch.zeros(1, 4, 1))
    half = torch.tensor([100.0, 100.0, 2.0, 4.0]).view(1, 1, 4, 1)
    m = bu.metrics(torch.cat([half, -half], 1), batch, sigma0=0.1)
    assert m["spread other half"].item() == 3.0
    # The sample mean is 0: its error on the half is the truth's, set to 3 and 4 there.
    truth = torch.tensor([50.0, -50.0, 3.0, 4.0]).view(1, 4, 1)
    m = bu.metrics(torch.cat([half, -half], 1), TaskBatch(xs, batch.y_support, x, truth), sigma0=0.1)
    assert m["RMSE other half"].item() == pytest.approx(math.sqrt(12.5), rel=1e-6)
    m = bu.metrics(torch.cat([half, -half], 1), TaskBatch(-xs, batch.y_support, x, batch.y_query), sigma0=0.1)
    assert m["spread other half"].item() == 100.0  # support mean +1.5: the half x < 0 (x = -3)


def test_ambiguous_support_lies_in_a_narrow_window():
    gen = torch.Generator().manual_seed(0)
    amb = bu.sample_tasks(Sinusoid(), 50, 5, 7, True, gen)
    width = amb.x_support.amax(1) - amb.x_support.amin(1)
    assert (width <= bu.WINDOW).all() and amb.x_query.shape == (50, 7, 1)
    spread = bu.sample_tasks(Sinusoid(), 50, 5, bu.GRID, False, gen)
    assert (spread.x_support.amax(1) - spread.x_support.amin(1)).mean() > 3 * bu.WINDOW
    assert torch.allclose(spread.y_query, Sinusoid.curve(spread.info, spread.x_query))


def test_every_learner_trains_and_evaluates(capsys):
    assert bu.main(["--iterations", "2", "--eval-tasks", "4", "--meta-batch", "4", "--eval-steps", "2"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "ambiguous" in line]
    metric_rows = [r for r in rows if " ± " in r]
    assert len(metric_rows) == 2 * len(bu.LEARNERS) and len(rows) == 4 * len(bu.LEARNERS)


def test_set_options_and_several_test_step_counts(capsys):
    # --set reaches the algorithm (its options are validated there); several --eval-steps give one
    # row per count and kind, read off one adaptation path (0 steps: before any SGD step).
    argv = ["--iterations", "2", "--eval-tasks", "4", "--meta-batch", "4", "--eval-steps", "0", "3",
            "--learners", "PLATIPUS (uncertainty)", "--set", "min_std=0.05", "samples=2", "--eval-seed", "7"]
    assert bu.main(argv) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if " ± " in line]
    assert [r.split(" | ")[:2] for r in rows] == [
        [f"| PLATIPUS (uncertainty), min_std=0.05, samples=2, {k} test steps", kind]
        for k in (0, 3) for kind in ("ambiguous", "non-ambiguous")]
    assert rows[0].split(" | ")[3:] != rows[2].split(" | ")[3:]  # 0 and 3 steps: different samples
    assert bu.parse_args(["--set", "a=0.1", "b=x", "c=True"]).set == [("a", 0.1), ("b", "x"), ("c", True)]
    with pytest.raises(ValueError, match="min_std must be a number >= 0"):
        bu.main(argv[:-4] + ["min_std=-1"])
    with pytest.raises(SystemExit):
        bu.parse_args(["--set", "0.1"])
    assert bu.eval_seed(bu.parse_args([])) == 1000 and bu.eval_seed(bu.parse_args(["--eval-seed", "3"])) == 3


@functools.lru_cache(maxsize=None)
def _small_run(name: str) -> dict:
    """A short meta-training (300 iterations) and evaluation (60 tasks of each kind, 10 steps)."""
    args = bu.parse_args(["--iterations", "300", "--eval-tasks", "60", "--eval-steps", "10"])
    learner, _ = bu.train(name, args)
    return bu.evaluate(learner, args)[10]


@pytest.mark.parametrize("name", ["BMAML (uncertainty)", "BMAML (uncertainty, temperature 0.5)", "PLATIPUS (uncertainty)"])
def test_sampled_functions_spread_more_on_ambiguous_tasks(name):
    # The documented settings: over the grid, the sampled functions disagree more on tasks whose
    # support lies in a narrow window than on tasks whose support covers [-5, 5] (the difference's
    # 95% CI excludes 0, ratio > 1.15; about 1.3 at 300 iterations), and they agree near the support.
    found = _small_run(name)
    amb, non = found["ambiguous"][0]["spread all"], found["non-ambiguous"][0]["spread all"]
    (a, ca), (n, cn) = bu.mean_ci(amb), bu.mean_ci(non)
    assert a - n > math.hypot(ca, cn) and a > 1.15 * n, (a, ca, n, cn)
    near, far = found["ambiguous"][1][0][1], found["ambiguous"][1][-1][1]  # spread at d <= 0.5 / d > 3
    assert near < 0.6 * far, (near, far)


def test_bmaml_spread_tracks_its_error_at_every_distance():
    # Calibration by distance to the support: in every bin the particles' spread is within a factor
    # 2 of the sample mean's RMSE (about 0.7x at 300 iterations; the defaults give about 0.1x).
    for kind, (_, bins) in _small_run("BMAML (uncertainty)").items():
        for (lo, hi), (_, spread, rmse) in zip(bu.BINS, bins):
            assert 0.5 * rmse < spread < 2.0 * rmse, (kind, lo, hi, spread, rmse)


def test_variance_lr_moves_platipus_scales_at_their_own_rate(capsys):
    # Adam's first step moves an entry by lr·|g|/(|g| + eps), i.e. by its lr where |g| >> eps: the
    # log-variances and log-step-sizes by --variance-lr, the prior mean by --meta-lr (largest step
    # per tensor; some KL gradients of the log-variances are near eps).
    args = bu.parse_args(["--iterations", "1", "--variance-lr", "0.01", "--meta-lr", "0.001", "--trace", "1"])
    algorithm, options = bu.LEARNERS["PLATIPUS (uncertainty)"]
    torch.manual_seed(args.seed)  # as bu.train: the same initial parameters
    before = bu.build_algorithm(algorithm, bu.MLP(1, 1), lr=args.inner_lr, **options).state_dict()
    learner, _ = bu.train("PLATIPUS (uncertainty)", args)
    scales = {id(p) for p in bu.scale_parameters(learner)}
    assert len(scales) == 4 * 6  # four lists, one tensor per MLP parameter
    for name, p in learner.named_parameters():
        step = (p.detach() - before[name]).abs().max().item()
        assert step == pytest.approx(0.01 if id(p) in scales else 0.001, rel=0.02), (name, step)
    trace = [line for line in capsys.readouterr().out.splitlines() if "iteration" in line]
    assert len(trace) == 2 and "sigma_theta [0.1000 0.1000" in trace[0] and "gamma_p [0.0100" in trace[0]


@pytest.mark.parametrize("min_std", [0.0, 0.15])
def test_platipus_prior_log_variance_gradient_is_the_kl_closed_form(min_std):
    # σ²_θ enters PLATIPUS's objective only through kl_weight · mean_t KL(q_t ‖ p_t), so its
    # gradient is kl_weight · mean_t ½ [1 − (v_q + Δ_t²) / σ²_θ] · e^{log σ²_θ} / σ²_θ with
    # Δ_t = μ_q,t − μ_p,t and the floored variances σ²_θ = e^{log σ²_θ} + min_std², v_q likewise:
    # it is learned, and its fixed point is σ²_θ = v_q + mean_t Δ_t² (float64, 1e-10 relative).
    from maml_ext.algorithms import PLATIPUS

    torch.manual_seed(0)
    learner = PLATIPUS(bu.MLP(1, 1, hidden=(8, 6)).double(), lr=0.05, samples=2, kl_weight=0.3, init_std=0.2, gamma=0.1,
                       min_std=min_std)
    with torch.no_grad():
        for lq, lp in zip(learner.q_logvar, learner.prior_logvar):
            lq.normal_(-3, 0.5), lp.normal_(-3, 0.5)
    b = Sinusoid().sample(4, 5, 7, torch.Generator().manual_seed(1))
    batch = TaskBatch(b.x_support.double(), b.y_support.double(), b.x_query.double(), b.y_query.double())
    learner.meta_loss(batch).backward()
    mu_p = learner._stepped_mean(batch.x_support, batch.y_support, learner.log_gamma_p, False)
    mu_q = learner._stepped_mean(batch.x_query, batch.y_query, learner.log_gamma_q, False)
    for n, lq, lp in zip(learner.adapt_names, learner.q_logvar, learner.prior_logvar):
        delta2 = (mu_q[n] - mu_p[n]).detach().pow(2)
        vq, vp = lq.detach().exp() + min_std**2, lp.detach().exp() + min_std**2
        expected = 0.3 * (0.5 * (1 - (vq + delta2) / vp) * lp.detach().exp() / vp).mean(0)
        torch.testing.assert_close(lp.grad, expected, rtol=1e-10, atol=1e-14)


def test_platipus_min_std_floors_the_test_samples():
    # With the learned variances near zero, the test-time draws θ ~ p(θ | support) still spread by
    # min_std around their mean (20000 draws per entry: the std within 3%).
    from maml_ext.algorithms import PLATIPUS

    torch.manual_seed(0)
    learner = PLATIPUS(bu.MLP(1, 1, hidden=(4,)).double(), test_samples=20000, init_std=1e-6, min_std=0.2)
    b = Sinusoid().sample(2, 5, 7, torch.Generator().manual_seed(1))
    rows, s = next(learner.adapted_sets(b.x_support.double(), b.y_support.double(), 0, None, torch.Generator().manual_seed(2)))
    for n, r in rows.items():
        std = r.view(2, s, -1).std(1)
        torch.testing.assert_close(std, torch.full_like(std, 0.2), rtol=0.03, atol=0.0)
