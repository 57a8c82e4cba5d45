"""PNG plots of a run: learning curve, loss vs adaptation steps, and sinusoid fits (paper Fig. 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .config import Config
from .evaluate import held_out
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
    ax.plot([r["iteration"] for r in records], [r["loss"] for r in records])
    ax.set(xlabel="meta-iteration", ylabel="meta-training loss", yscale="log", title="Learning curve")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def adaptation_curve(runs: dict[str, dict[str, Any]], out: Path) -> Path:
    """Query loss vs test-time steps (paper Fig. 3), one curve per run label and shot count."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for label, results in runs.items():
        for shots, r in results["shots"].items():
            steps = range(len(r["mean"]))
            name = f"{label}, {shots}-shot" if label else f"{shots}-shot"
            ax.errorbar(steps, r["mean"], yerr=r["ci95"], capsize=2, label=name)
    num_tasks = next(iter(runs.values()))["num_tasks"]
    # Capped at the pre-adaptation loss: a mean blown up by a few diverging tasks leaves the
    # frame instead of flattening every other curve.
    top = 1.2 * max(r["mean"][0] for results in runs.values() for r in results["shots"].values())
    ax.set(xlabel="gradient steps at test", ylabel="query loss (mean ± 95% CI)", ylim=(0, top),
           title=f"{num_tasks} held-out tasks")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


@torch.no_grad()
def sinusoid_fits(run: Run, cfg: Config, out: Path, shots: int = 5, tasks: int = 3) -> Path:
    """Prediction before and after 1 and 10 steps vs the true curve, for a few held-out tasks."""
    batch = held_out(run, shots, cfg).slice(0, tasks)
    grid = torch.linspace(-5.0, 5.0, 200).view(1, -1, 1).expand(tasks, -1, -1)
    preds = {0: run.learner.predict(run.learner.init_params(), grid)}
    loop = run.learner.inner_loop(batch.x_support, batch.y_support, 10, first_order=True, lr=cfg["eval"].get("lr"))
    for step, params in enumerate(loop, start=1):
        if step in (1, 10):
            preds[step] = run.learner.predict(params, grid)
    truth = run.family.curve(batch.info, grid)
    plt = _pyplot()
    fig, axes = plt.subplots(1, tasks, figsize=(4 * tasks, 3.2), squeeze=False)
    for t, ax in enumerate(axes[0]):
        x = grid[t, :, 0]
        ax.plot(x, truth[t, :, 0], "r", label="ground truth")
        ax.plot(x, preds[0][t, :, 0], ":", color="tab:green", label="pre-update")
        ax.plot(x, preds[1][t, :, 0], "--", color="tab:green", label="1 grad step")
        ax.plot(x, preds[10][t, :, 0], "-", color="tab:green", label="10 grad steps")
        ax.plot(batch.x_support[t, :, 0], batch.y_support[t, :, 0], "^", color="purple", label=f"{shots} points used")
        ax.set_xlim(-5, 5)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{cfg['algorithm']['name']}, K={shots}")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
