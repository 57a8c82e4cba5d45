"""PNG plots of a run: learning curve, loss vs adaptation steps, and sinusoid fits (paper Fig. 2,
with sampled fits on ambiguous tasks for BMAML / PLATIPUS)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from maml_ext.tasks import TaskBatch

from .config import Config
from .evaluate import held_out, predictive_samples
from .loop import Run


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt


def learning_curve(metrics: Path, out: Path) -> Path:
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    # Markers when there are few points: a short run's curve stays visible.
    losses = [r["loss"] for r in records]
    ax.plot([r["iteration"] for r in records], losses, marker="o" if len(records) < 30 else None)
    # Log scale only where the loss spans a decade: within one, its tick labels read 4×10⁰.
    positive = [v for v in losses if v > 0]
    wide = bool(positive) and len(positive) == len(losses) and max(positive) > 10 * min(positive)
    ax.set(xlabel="meta-iteration", ylabel="meta-training loss (mean per logged interval)",
           yscale="log" if wide else "linear", title="Learning curve")
    integer_ticks(ax)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def integer_ticks(ax: Any) -> None:
    """Only whole numbers on the x axis (steps, iterations)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


# One colour family per run, one shade per shot count: a run's curves read as one group.
RUN_COLOURS = ("Blues", "Oranges", "Greens", "Purples", "Reds", "Greys")
SHOT_MARKERS = ("o", "s", "^", "D", "v")


def _shades(plt: Any, run: int, count: int) -> list[Any]:
    cmap = plt.get_cmap(RUN_COLOURS[run % len(RUN_COLOURS)])
    return [cmap(0.85 - 0.4 * i / max(count - 1, 1)) for i in range(count)]


def _curve(ax: Any, values: dict[str, list[float]], scale: float, label: str, style: dict[str, Any]) -> None:
    """Mean per step as a line with markers, the 95% CI as a translucent band around it."""
    steps = range(len(values["mean"]))
    mean = [scale * m for m in values["mean"]]
    ci = [scale * c for c in values["ci95"]]
    ax.plot(steps, mean, ms=4, label=label, **style)
    ax.fill_between(steps, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)],
                    color=style["color"], alpha=0.15, lw=0)


def adaptation_curve(runs: dict[str, dict[str, Any]], out: Path) -> Path:
    """Query loss (and, for classification, accuracy) vs test-time steps (paper Fig. 3), one
    curve per run label and shot count; the runs are evaluations with equal settings."""
    from .evaluate import LOSS_NAMES

    plt = _pyplot()
    accuracy = any("accuracy" in r for results in runs.values() for r in results["shots"].values())
    fig, axes = plt.subplots(1, 2 if accuracy else 1, figsize=(10.5 if accuracy else 7, 3.8), squeeze=False)
    loss_ax = axes[0][0]
    for i, (label, results) in enumerate(runs.items()):
        shades = _shades(plt, i, len(results["shots"]))
        for j, (shots, r) in enumerate(results["shots"].items()):
            name = f"{label}, {shots}-shot" if label else f"{shots}-shot"
            style = dict(color=shades[j], marker=SHOT_MARKERS[j % len(SHOT_MARKERS)])
            _curve(loss_ax, r["loss"], 1.0, name, style)
            if accuracy and "accuracy" in r:
                _curve(axes[0][1], r["accuracy"], 100.0, name, style)
    first = next(iter(runs.values()))
    loss = LOSS_NAMES.get(first.get("loss_function", ""), "loss")
    # The frame: from the lowest band edge (never below 0, losses are not negative) to the highest,
    # capped above the pre-adaptation loss: a mean blown up by a few diverging tasks leaves the
    # frame instead of flattening every other curve.
    curves = [r["loss"] for results in runs.values() for r in results["shots"].values()]
    lows = [m - c for v in curves for m, c in zip(v["mean"], v["ci95"]) if math.isfinite(m - c)]
    highs = [m + c for v in curves for m, c in zip(v["mean"], v["ci95"]) if math.isfinite(m + c)]
    starts = [v["mean"][0] for v in curves if math.isfinite(v["mean"][0])]
    if lows and highs and starts:
        bottom, top = max(0.0, min(lows)), min(max(highs), 1.2 * max(starts))
        margin = 0.05 * (top - bottom) if top > bottom else 0.05 * max(top, 1.0)
        loss_ax.set_ylim(max(0.0, bottom - margin), top + margin)
    loss_ax.set(xlabel="gradient steps at test", ylabel=f"query {loss} (mean, 95% CI band)")
    if accuracy:
        axes[0][1].set(xlabel="gradient steps at test", ylabel="query accuracy, % (mean, 95% CI band)")
    for ax in axes[0]:
        integer_ticks(ax)
        ax.grid(alpha=0.3)
    per = "class" if accuracy else "task"  # classification draws K query examples of every class
    fig.suptitle(f"{first['num_tasks']} held-out tasks, {first['k_query']} query example"
                 f"{'' if first['k_query'] == 1 else 's'} per {per}" if "k_query" in first
                 else f"{first['num_tasks']} held-out tasks")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


AMBIGUOUS_WIDTH = 1.0  # x-range of the support points of the "ambiguous" tasks


def ambiguous_tasks(family: Any, shots: int, tasks: int, generator: torch.Generator) -> TaskBatch:
    """Tasks of a 1-D curve family (one with ``curve``) whose support points lie in a narrow
    x-range (width ``AMBIGUOUS_WIDTH``, centre uniform in [−4, 4]), so several curves of the
    family fit them; queries stay on the full grid [−5, 5]."""
    base = family.sample(tasks, shots, 1, generator)
    centre = torch.rand(tasks, 1, 1, generator=generator) * 8.0 - 4.0
    x = centre + (torch.rand(tasks, shots, 1, generator=generator) - 0.5) * AMBIGUOUS_WIDTH
    grid = torch.linspace(-5.0, 5.0, 200).view(1, -1, 1).expand(tasks, -1, -1)
    return TaskBatch(x, family.curve(base.info, x), grid, family.curve(base.info, grid), base.info)


def _draw_fits(ax: Any, batch: TaskBatch, t: int, truth: Tensor, preds: Tensor, shots: int) -> None:
    """One task: truth, pre-update, 1 and 10 steps; the adapted sets as thin curves when S > 1."""
    x = batch.x_query[t, :, 0]
    ax.plot(x, truth[t, :, 0], "r", label="ground truth")
    sets = preds.shape[2]
    ax.plot(x, preds[0, t].mean(0)[:, 0], ":", color="tab:green", label="pre-update" + (" (mean)" if sets > 1 else ""))
    ax.plot(x, preds[1, t].mean(0)[:, 0], "--", color="tab:green", label="1 grad step" + (" (mean)" if sets > 1 else ""))
    if sets > 1:
        for s in range(sets):
            ax.plot(x, preds[-1, t, s, :, 0], "-", color="tab:blue", lw=0.6, alpha=0.7,
                    label=f"10 steps, {sets} sets" if s == 0 else None)
    ax.plot(x, preds[-1, t].mean(0)[:, 0], "-", color="tab:green", label="10 grad steps" + (" (mean)" if sets > 1 else ""))
    ax.plot(batch.x_support[t, :, 0], batch.y_support[t, :, 0], "^", color="purple", label=f"{shots} points used")
    ax.set(xlim=(-5, 5), xlabel="x", ylabel="y")


@torch.no_grad()
def sinusoid_fits(run: Run, cfg: Config, out: Path, shots: int = 5, tasks: int = 3) -> Path:
    """Prediction before and after 1 and 10 steps vs the true curve (paper Fig. 2): top row a few
    held-out tasks, bottom row ambiguous tasks (:func:`ambiguous_tasks`). Learners with several
    adapted parameter sets (BMAML particles, PLATIPUS samples) draw each set after 10 steps as a
    thin curve and their mean in green. Seeded: the same run gives the same figure."""
    held = held_out(run, shots, cfg).slice(0, tasks)
    grid = torch.linspace(-5.0, 5.0, 200).view(1, -1, 1).expand(tasks, -1, -1)
    held = TaskBatch(held.x_support, held.y_support, grid, run.family.curve(held.info, grid), held.info)
    gen = torch.Generator().manual_seed(cfg["eval"]["seed"] + 2)
    ambiguous = ambiguous_tasks(run.family, shots, tasks, gen)
    plt = _pyplot()
    fig, axes = plt.subplots(2, tasks, figsize=(4 * tasks, 7.0), squeeze=False)
    for row, batch in enumerate((held, ambiguous)):
        preds = predictive_samples(run.learner, batch, 10, cfg["eval"].get("lr"), torch.Generator().manual_seed(cfg["eval"]["seed"]))
        preds = preds[[0, 1, 10]]
        for t, ax in enumerate(axes[row]):
            _draw_fits(ax, batch, t, batch.y_query, preds, shots)
            if row == 1:
                lo, hi = batch.x_support[t, :, 0].min().item(), batch.x_support[t, :, 0].max().item()
                ax.set_title(f"ambiguous: support in [{lo:.1f}, {hi:.1f}]", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=9, loc="lower center", ncol=len(labels), frameon=False)
    fig.suptitle(f"{cfg['algorithm']['name']}, K={shots} (top: held-out tasks; bottom: ambiguous tasks)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
