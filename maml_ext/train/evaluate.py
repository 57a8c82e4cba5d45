"""Evaluation on a fixed held-out set of tasks: mean ± 95% CI after 0..S adaptation steps, with
the uncertainty of each learner's predictive distribution.

Predictive distribution: the learner's adapted parameter sets (BMAML's M particles,
PLATIPUS's sampled initialisations, a single set for MAML and the other point learners) give
outputs f_1..f_S on each query input.
- Classification: the class probabilities averaged over the sets; "loss" is their negative
  log-likelihood (the usual cross-entropy for S = 1), "accuracy" uses their argmax and
  "ece" is the expected calibration error (``ECE_BINS`` equal-width confidence bins, all query
  examples of all tasks pooled, one value per step).
- Regression: the Gaussian mixture 1/S Σ_s N(f_s, σ²) with one observation noise σ per
  adaptation step fitted by maximum likelihood (log-spaced grid ``NOISE_GRID``) on
  ``CALIBRATION_TASKS`` training-distribution tasks (the training family, seed eval.seed + 1),
  so a deterministic learner (a one-component mixture) gets the same treatment as a Bayesian
  one. "loss" is the MSE of the mixture mean (MAML's usual query MSE for S = 1), "nll" the
  mixture's negative log-likelihood per query output and "coverage90" the fraction of query
  targets inside its central 90% interval (mixture CDF between 0.05 and 0.95).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from maml_ext.algorithms import MetaLearner, RowLearner
from maml_ext.algorithms.bayes import point_metrics
from maml_ext.tasks import TaskBatch

from .config import Config
from .fused_eval import fused_query_outputs
from .loop import Run
from .progress import Progress

ECE_BINS = 10
CALIBRATION_TASKS = 200
NOISE_GRID = torch.logspace(-3, 1, 161, dtype=torch.float64)


def held_out(run: Run, shots: int, cfg: Config) -> TaskBatch:
    """The fixed evaluation set for ``shots`` support examples: same seed, same tasks, every time.

    A family with a ``held_out`` family (few-shot classification: the test classes) is
    evaluated on that one, never on its training classes."""
    gen = torch.Generator().manual_seed(cfg["eval"]["seed"])
    family = getattr(run.family, "held_out", None) or run.family
    return family.sample(cfg["eval"]["num_tasks"], shots, cfg["eval"]["k_query"], gen)


def _mean_ci(values: torch.Tensor) -> dict[str, list[float]]:
    """Mean, 95% CI half-width (1.96·std/√n) and median over tasks (dim 1), per adaptation step.

    The median is robust to the rare task whose repeated steps diverge and dominate the mean."""
    n = values.shape[1]
    std = values.std(dim=1) if n > 1 else torch.zeros(values.shape[0], dtype=values.dtype)
    return {
        "mean": values.mean(dim=1).tolist(),
        "ci95": (1.96 * std / math.sqrt(n)).tolist(),
        "median": values.nanmedian(dim=1).values.tolist(),
    }


# ----- predictive samples -------------------------------------------------------------------
def has_samples(learner: MetaLearner) -> bool:
    """Whether :func:`predictive_samples` applies: a RowLearner, or a point learner whose
    evaluation is the base class's (its predictions after each inner step)."""
    return isinstance(learner, RowLearner) or type(learner).evaluate_metrics is MetaLearner.evaluate_metrics


@torch.no_grad()
def predictive_samples(
    learner: MetaLearner, batch: TaskBatch, steps: int, lr: float | None, generator: torch.Generator,
    tick: Callable[[int], None] = lambda n: None,
) -> Tensor:
    """Outputs ``[steps + 1, T, S, N, out]`` of every adapted parameter set on the query inputs
    after 0..steps steps on the support sets (S = 1 for point learners); ``tick(n)`` is called as
    n of the steps + 1 predictions are done (for a progress bar)."""
    if isinstance(learner, RowLearner):
        found = learner.sample_predictions(batch.x_support, batch.y_support, batch.x_query, steps, lr, generator)
        tick(steps + 1)
        return found
    fused = fused_query_outputs(learner, batch, steps, lr)
    if fused is not None:
        tick(steps + 1)
        return fused.unsqueeze(2)
    outs = [learner.predict(learner.init_params(), batch.x_query)]
    tick(1)
    for params in learner.inner_loop(batch.x_support, batch.y_support, steps, first_order=True, lr=lr):
        outs.append(learner.predict(params, batch.x_query))
        tick(1)
    return torch.stack(outs).unsqueeze(2)


# ----- regression: Gaussian mixture over the sets ---------------------------------------------
def mixture_log_likelihood(samples: Tensor, y: Tensor, noise: Tensor) -> Tensor:
    """log 1/S Σ_s N(y | f_s, σ²) per query output ``[steps + 1, T, N, out]``; ``noise`` σ is a
    scalar or one value per step ``[steps + 1]``."""
    sigma = noise.to(samples.dtype).reshape(-1, *([1] * (samples.dim() - 1)))
    z = (y.unsqueeze(1) - samples) / sigma
    log_pdf = -0.5 * z.pow(2) - torch.log(sigma) - 0.5 * math.log(2 * math.pi)
    return torch.logsumexp(log_pdf, dim=2) - math.log(samples.shape[2])


def fit_noise(samples: Tensor, y: Tensor, grid: Tensor = NOISE_GRID) -> Tensor:
    """The σ of ``grid`` maximising the mean mixture log-likelihood, per step ``[steps + 1]``."""
    grid = grid.to(samples.dtype)
    if samples.shape[2] == 1:
        # One component (point learners): the mean log N(y | f, σ²) is -msr/(2σ²) - log σ - c in
        # the mean squared residual, one pass over the samples instead of one per grid value.
        msr = (y.unsqueeze(1) - samples).pow(2).flatten(1).mean(1, keepdim=True)
        scores = -0.5 * msr / grid.pow(2) - torch.log(grid) - 0.5 * math.log(2 * math.pi)
    else:
        scores = torch.stack([mixture_log_likelihood(samples, y, s).flatten(1).mean(1) for s in grid], 1)
    return grid[scores.argmax(1)]


def mixture_cdf(samples: Tensor, y: Tensor, noise: Tensor) -> Tensor:
    """The mixture's CDF at each query target ``[steps + 1, T, N, out]``."""
    sigma = noise.to(samples.dtype).reshape(-1, *([1] * (samples.dim() - 1)))
    z = (y.unsqueeze(1) - samples) / sigma
    return (0.5 * (1 + torch.erf(z / math.sqrt(2)))).mean(2)


def regression_metrics(samples: Tensor, y: Tensor, noise: Tensor) -> dict[str, Tensor]:
    """Per-task "loss", "nll" and "coverage90" ``[steps + 1, T]`` (see the module docstring)."""
    cdf = mixture_cdf(samples, y, noise)
    inside = ((cdf >= 0.05) & (cdf <= 0.95)).to(samples.dtype)
    return {
        **point_metrics(samples, y, "mse"),
        "nll": -mixture_log_likelihood(samples, y, noise).flatten(2).mean(2),
        "coverage90": inside.flatten(2).mean(2),
    }


# ----- classification: averaged probabilities -----------------------------------------------
def classification_metrics(samples: Tensor, y: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Per-task "loss" (NLL) and "accuracy" ``[steps + 1, T]``, and the per-example confidence
    and correctness ``[steps + 1, T·N]`` of the averaged class probabilities (for the ECE)."""
    found = point_metrics(samples, y, "cross_entropy")
    probs = torch.softmax(samples, -1).mean(2)
    confidence, guess = probs.max(-1)
    correct = (guess == y).to(samples.dtype)
    return found, confidence.flatten(1), correct.flatten(1)


def expected_calibration_error(confidence: Tensor, correct: Tensor, bins: int = ECE_BINS) -> Tensor:
    """ECE per step ``[steps + 1]``: Σ_b (n_b / n) |accuracy_b − confidence_b| over ``bins``
    equal-width confidence bins ((0, 1/bins], ..., ((bins−1)/bins, 1])."""
    index = (confidence * bins).ceil().clamp(1, bins).long() - 1
    n = confidence.shape[1]
    ece = torch.zeros(confidence.shape[0], dtype=confidence.dtype)
    for b in range(bins):
        mask = (index == b).to(confidence.dtype)
        count = mask.sum(1)
        gap = ((correct - confidence) * mask).sum(1).abs()  # = n_b · |acc_b − conf_b|
        ece += torch.where(count > 0, gap, torch.zeros_like(gap)) / n
    return ece


# ----- the evaluation -------------------------------------------------------------------------
def _chunks(batch: TaskBatch, size: int) -> list[TaskBatch]:
    return [batch.slice(i, i + size) for i in range(0, batch.num_tasks, size)]


def _calibration_noise(run: Run, shots: int, cfg: Config, tick: Callable[[int], None]) -> Tensor:
    """σ per step fitted on training-distribution tasks (regression, see the module docstring)."""
    ecfg = cfg["eval"]
    gen = torch.Generator().manual_seed(ecfg["seed"] + 1)
    batch = run.family.sample(_calibration_tasks(ecfg), shots, ecfg["k_query"], gen)
    samples = torch.cat(
        [predictive_samples(run.learner, c, ecfg["steps"], ecfg.get("lr"), gen, _per_task(tick, c)).double()
         for c in _chunks(batch, ecfg["chunk"])],
        dim=1,
    )
    y = batch.y_query.double()
    return fit_noise(samples, y)


def _calibration_tasks(ecfg: dict[str, Any]) -> int:
    return min(ecfg["num_tasks"], CALIBRATION_TASKS)


def _calibrated(run: Run, ecfg: dict[str, Any]) -> int:
    """How many calibration tasks one shot count's evaluation runs first (regression), else 0."""
    return _calibration_tasks(ecfg) if has_samples(run.learner) and run.learner.loss == "mse" else 0


def _per_task(tick: Callable[[int], None], chunk: TaskBatch) -> Callable[[int], None]:
    """``tick`` counting task-steps: ``n`` prediction steps of a chunk are ``n`` per task in it."""
    return lambda n: tick(n * chunk.num_tasks)


def _evaluate_shots(run: Run, shots: int, cfg: Config, tick: Callable[[int], None]) -> dict[str, Any]:
    ecfg = cfg["eval"]
    batch = held_out(run, shots, cfg)
    if not has_samples(run.learner):  # a learner with its own evaluation: point metrics only
        chunks = []
        for c in _chunks(batch, ecfg["chunk"]):
            chunks.append(run.learner.evaluate_metrics(c, ecfg["steps"], ecfg.get("lr")))
            tick((ecfg["steps"] + 1) * c.num_tasks)
        metrics = {k: torch.cat([c[k] for c in chunks], dim=1).double() for k in chunks[0]}
        found = {"loss": _mean_ci(metrics.pop("loss"))}
        found.update({k: _mean_ci(v) for k, v in metrics.items()})
        return found
    regression = run.learner.loss == "mse"
    noise = _calibration_noise(run, shots, cfg, tick) if regression else None
    gen = torch.Generator().manual_seed(ecfg["seed"])
    per_task: dict[str, list[Tensor]] = {}
    pooled: list[tuple[Tensor, Tensor]] = []
    sets = 1
    for chunk in _chunks(batch, ecfg["chunk"]):
        samples = predictive_samples(run.learner, chunk, ecfg["steps"], ecfg.get("lr"), gen, _per_task(tick, chunk)).double()
        sets = samples.shape[2]
        if regression:
            metrics = regression_metrics(samples, chunk.y_query.double(), noise)
        else:
            metrics, confidence, correct = classification_metrics(samples, chunk.y_query)
            pooled.append((confidence, correct))
        for k, v in metrics.items():
            per_task.setdefault(k, []).append(v)
    metrics = {k: torch.cat(v, dim=1) for k, v in per_task.items()}
    found = {"loss": _mean_ci(metrics.pop("loss"))}
    found.update({k: _mean_ci(v) for k, v in metrics.items()})
    found["sets"] = sets
    if regression:
        found["noise_std"] = noise.tolist()
    else:
        confidence = torch.cat([c for c, _ in pooled], dim=1)
        correct = torch.cat([c for _, c in pooled], dim=1)
        found["nll"] = found["loss"]  # the averaged probabilities' NLL is the loss here
        found["ece"] = {"value": expected_calibration_error(confidence, correct).tolist(), "bins": ECE_BINS}
    return found


def evaluate(run: Run, cfg: Config, progress: bool = True) -> dict[str, Any]:
    """Per shot count: the query loss under ``"loss"`` (mean, 95% CI and median after 0..steps
    steps; for classification also the query accuracy under ``"accuracy"``), with the predictive
    distribution's "nll" and calibration ("coverage90" for regression, "ece" for classification);
    see the module docstring. ``progress`` shows a progress bar on stderr."""
    ecfg = cfg["eval"]
    results: dict[str, Any] = {"num_tasks": ecfg["num_tasks"], "k_query": ecfg["k_query"],
                               "loss_function": run.learner.loss if isinstance(run.learner.loss, str) else "custom",
                               "shots": {}}
    for shots in ecfg["shots"]:
        results["shots"][str(shots)] = _evaluate_shots_shown(run, shots, cfg, progress)
    return results


def _evaluate_shots_shown(run: Run, shots: int, cfg: Config, progress: bool) -> dict[str, Any]:
    """:func:`_evaluate_shots` with a bar of its own: its label and its count (task-steps: every
    task predicted after 0..steps steps) describe the same work."""
    if not progress:
        return _evaluate_shots(run, shots, cfg, lambda n: None)
    ecfg = cfg["eval"]
    calibration = _calibrated(run, ecfg)
    tasks = f"{ecfg['num_tasks']} tasks" + (f" + {calibration} for calibration" if calibration else "")
    bar = Progress((ecfg["num_tasks"] + calibration) * (ecfg["steps"] + 1), unit="task-step",
                   what=f"evaluating {shots}-shot ({tasks}, 0..{ecfg['steps']} steps)")
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        bar.update(done)

    found = _evaluate_shots(run, shots, cfg, tick)
    bar.close(done)
    return found


LOSS_NAMES = {"mse": "MSE", "cross_entropy": "cross-entropy"}


def steps_label(n: int) -> str:
    return f"{n} step" if n == 1 else f"{n} steps"


def _cells(values: dict[str, list[float]], steps: tuple[int, ...], percent: bool = False) -> list[str]:
    """``mean ± ci`` per step; a fraction as percent with one decimal and the unit after both
    (``89.8 ± 1.5%``: the interval is in percentage points, not a percent of the mean)."""
    def cell(m: float, c: float) -> str:
        return f"{100 * m:.1f} ± {100 * c:.1f}%" if percent else f"{m:.3f} ± {c:.3f}"
    return [cell(values["mean"][s], values["ci95"][s]) if s < len(values["mean"]) else "–" for s in steps]


def _columns(results: dict[str, Any]) -> tuple[int, ...]:
    """Every evaluated step count up to 5 steps; beyond, 0-3 and every 5th, always ending at the last."""
    last = max(len(r["loss"]["mean"]) for r in results["shots"].values()) - 1
    if last <= 5:
        return tuple(range(last + 1))
    return tuple(sorted({*range(4), *range(5, last + 1, 5), last}))


def table(results: dict[str, Any], steps: tuple[int, ...] | None = None) -> str:
    """Markdown table, one row per shot count and metric: the query loss after the given numbers
    of steps (default: see ``_columns``), then (where evaluated) accuracy, NLL and calibration."""
    steps = _columns(results) if steps is None else steps
    loss = LOSS_NAMES.get(results.get("loss_function", ""), "loss")
    rows = ["| shots | metric | " + " | ".join(map(steps_label, steps)) + " |", "|---" * (len(steps) + 2) + "|"]
    for shots, r in results["shots"].items():
        rows.append(f"| {shots} | {loss} | " + " | ".join(_cells(r["loss"], steps)) + " |")
        if "accuracy" in r:
            rows.append(f"| {shots} | accuracy | " + " | ".join(_cells(r["accuracy"], steps, percent=True)) + " |")
        if "nll" in r and "accuracy" not in r:  # classification: the loss row is the NLL already
            rows.append(f"| {shots} | NLL | " + " | ".join(_cells(r["nll"], steps)) + " |")
        if "coverage90" in r:
            rows.append(f"| {shots} | 90% interval coverage | " + " | ".join(_cells(r["coverage90"], steps, percent=True)) + " |")
        if "ece" in r:
            ece = r["ece"]["value"]
            cells = [f"{100 * ece[s]:.1f}%" if s < len(ece) else "–" for s in steps]
            rows.append(f"| {shots} | ECE ({r['ece']['bins']} bins) | " + " | ".join(cells) + " |")
    return "\n".join(rows)
