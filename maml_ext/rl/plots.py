"""PNG plots of a meta-RL run: returns during training, average return vs adaptation steps,
and 2D trajectories before and after adaptation (paper Fig. 4, left)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from maml_ext.train.plots import _pyplot, integer_ticks

from .algorithms import MetaRL
from .envs.base import TaskEnv
from .evaluate import adaptation_returns, test_tasks


def learning_curve(metrics: Path, out: Path) -> Path:
    """Average return of the pre- and post-update rollouts per meta-iteration."""
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    its = [r["iteration"] for r in records]
    marker = "o" if len(records) < 30 else None  # a short run's curve stays visible
    ax.plot(its, [r["return_pre"] for r in records], marker=marker, ms=3, label="pre-update")
    ax.plot(its, [r["return_post"] for r in records], marker=marker, ms=3, label="post-update (1 step)")
    ax.set(xlabel="meta-iteration", ylabel="average return (training tasks)", title="Learning curve")
    integer_ticks(ax)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


ROW_LABELS = {"maml": "meta-trained policy", "fomaml": "meta-trained policy (first order)",
              "random_init": "random initialisation, adapted"}


def returns_vs_steps(results: dict[str, Any], out: Path, title: str = "") -> Path:
    """Average return ± 95% CI vs number of gradient steps at test (paper Figs. 4-5)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, r in results["returns"].items():
        run, _, row = name.rpartition(": ")  # "<other run>: <row>" for --compare rows
        label = ROW_LABELS.get(row, row.replace("_", " "))
        ax.errorbar(range(len(r["mean"])), r["mean"], yerr=r["ci95"], capsize=3, marker="o",
                    label=f"{run}: {label}" if run else label)
    ax.set(xlabel="number of gradient steps", ylabel="average return (mean ± 95% CI)",
           title=title or f"{results['num_tasks']} test tasks")
    ax.set_xticks(range(max(len(r["mean"]) for r in results["returns"].values())))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _positions(obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Positions ``[R, H, 2]`` of R rollouts, each held at its last position after its episode ended."""
    lengths = mask.sum(1).long().clamp(min=1)
    index = torch.minimum(torch.arange(obs.shape[1]).unsqueeze(0), (lengths - 1).unsqueeze(1))
    return torch.gather(obs, 1, index.unsqueeze(-1).expand(-1, -1, obs.shape[-1]))


@torch.no_grad()
def trajectories(learner: MetaRL, env: TaskEnv, ecfg: dict[str, Any], out: Path, tasks: int = 4,
                 shown: int = 3) -> Path:
    """2D positions before and after 1 and 2 adaptation steps, for the first ``tasks`` test tasks
    (the observation is the position, the task the goal): per condition the mean path over all
    rollouts as a bold line and ``shown`` single rollouts as faint ones (exploration noise makes
    single paths jitter)."""
    if env.obs_dim != 2 or env.task_dim != 2:
        raise ValueError(f"trajectory plots need a 2D point environment, got obs_dim={env.obs_dim}")
    goals, noise_seed = test_tasks(env, ecfg)
    goals = goals[:tasks]
    steps = min(2, ecfg["steps"])
    _, batches = adaptation_returns(learner, env, goals, rollouts=ecfg["rollouts"], steps=steps, lr=ecfg["lr"],
                                    later_lr=ecfg["later_lr"], generator=torch.Generator().manual_seed(noise_seed))
    plt = _pyplot()
    fig, axes = plt.subplots(1, tasks, figsize=(3.2 * tasks, 3.9), squeeze=False)
    labels = {0: "pre-update", 1: "after 1 gradient step", 2: "after 2 gradient steps"}
    for t, ax in enumerate(axes[0]):
        for s, batch in enumerate(batches):
            paths = _positions(batch.obs[t], batch.mask[t])  # from the origin on, before each step
            for r in range(min(shown, paths.shape[0])):
                ax.plot(paths[r, :, 0], paths[r, :, 1], color=f"C{s}", lw=0.5, alpha=0.35)
            mean = paths.mean(0)
            ax.plot(mean[:, 0], mean[:, 1], color=f"C{s}", lw=2, label=f"{labels[s]} (mean of {paths.shape[0]})")
        ax.plot(goals[t, 0], goals[t, 1], "r*", ms=12, label="goal", zorder=5)
        ax.plot(0, 0, "ko", ms=4, label="start", zorder=5)
        ax.set(xlim=(-0.6, 0.6), ylim=(-0.6, 0.6), aspect="equal", title=f"test task {t}", xlabel="x position")
    axes[0][0].set_ylabel("y position")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=9, loc="lower center", ncol=len(names), frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
