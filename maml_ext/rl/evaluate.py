"""Test-time adaptation on a fixed set of tasks: average return after 0..S policy-gradient
steps (paper protocol: step size α for the first step, ``later_lr`` for the next ones; 40 test
tasks, 40 rollouts per step), mean and 95% CI over tasks."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from maml_ext.train.evaluate import steps_label
from maml_ext.train.progress import Progress

from .algorithms import MetaRL
from .envs.base import TaskEnv
from .rollouts import Rollouts, sample


def adaptation_returns(
    learner: MetaRL,
    env: TaskEnv,
    tasks: Tensor,
    *,
    rollouts: int,
    steps: int,
    lr: float,
    later_lr: float,
    generator: torch.Generator,
    tick: Callable[[], None] = lambda: None,
) -> tuple[Tensor, list[Rollouts]]:
    """Per-task average return ``[steps + 1, T]`` before and after each adaptation step, and the
    rollouts of every step (each step samples fresh rollouts from the current adapted policies);
    ``tick()`` is called after each step's rollouts (for a progress bar)."""
    params: Sequence[Tensor] = [p.detach() for p in learner.params()]
    returns, kept = [], []
    for s in range(steps + 1):
        batch = sample(env, tasks, params, rollouts, generator, learner.activation)
        returns.append(batch.returns().mean(1))
        kept.append(batch)
        tick()
        if s < steps:
            params = learner.adapt(params, batch, lr if s == 0 else later_lr)
    return torch.stack(returns), kept


def summary(values: Tensor) -> dict[str, list[float]]:
    """Mean and 95% CI half-width (1.96·std/√n) over tasks (dim 1), per step."""
    n = values.shape[1]
    std = values.std(dim=1) if n > 1 else torch.zeros(values.shape[0], dtype=values.dtype)
    return {"mean": values.mean(dim=1).tolist(), "ci95": (1.96 * std / math.sqrt(n)).tolist()}


def test_tasks(env: TaskEnv, ecfg: dict[str, Any]) -> tuple[Tensor, int]:
    """The fixed test tasks (seeded by ``eval.seed``) and the seed of the sampling noise."""
    tasks = env.sample_tasks(ecfg["num_tasks"], torch.Generator().manual_seed(ecfg["seed"]))
    return tasks, ecfg["seed"] + 1


def _ticker(bar: Progress | None) -> Callable[[], None]:
    """One unit more on ``bar`` per call; nothing without a bar."""
    return (lambda: bar.update(bar.done + 1)) if bar is not None else (lambda: None)


def evaluate(learner: MetaRL, env: TaskEnv, ecfg: dict[str, Any], initial: MetaRL | None = None,
             progress: bool = True) -> dict[str, Any]:
    """``eval.*`` protocol for the trained ``learner`` (and, when given, the same protocol from
    the run's random initialisation ``initial``, the paper's "random init" row); ``progress``
    shows a progress bar (one unit: one step's rollouts of all test tasks) on stderr."""
    tasks, noise_seed = test_tasks(env, ecfg)
    protocol = dict(rollouts=ecfg["rollouts"], steps=ecfg["steps"], lr=ecfg["lr"], later_lr=ecfg["later_lr"])
    results: dict[str, Any] = {"num_tasks": ecfg["num_tasks"], **protocol, "seed": ecfg["seed"], "returns": {}}
    trained = "fomaml" if learner.first_order else "maml"  # the run's algorithm names its row
    runs = {trained: learner} if initial is None else {trained: learner, "random_init": initial}
    for name, who in runs.items():  # a bar per policy: its label and its count describe the same work
        bar = Progress(ecfg["steps"] + 1, unit="step", what=(
            f"evaluating {name.replace('_', ' ')} ({ecfg['num_tasks']} tasks x {ecfg['rollouts']} rollouts, "
            f"0..{ecfg['steps']} steps)")) if progress else None
        if bar is not None:
            bar.update(0)  # shown at once: a step's rollouts take a while
        values, _ = adaptation_returns(who, env, tasks, generator=torch.Generator().manual_seed(noise_seed),
                                       tick=_ticker(bar), **protocol)
        if bar is not None:
            bar.close(bar.done)
        results["returns"][name] = {**summary(values), "per_task": values.T.tolist()}
    return results


def table(results: dict[str, Any]) -> str:
    """Average return ± 95% CI per adaptation step, one row per policy."""
    steps = len(next(iter(results["returns"].values()))["mean"])
    lines = [f"average return over {results['num_tasks']} test tasks ({results['rollouts']} rollouts per step)",
             "policy        " + "".join(f"{steps_label(s):>18}" for s in range(steps))]
    for name, r in results["returns"].items():
        cells = "".join(f"{f'{m:.2f} ± {c:.2f}':>18}" for m, c in zip(r["mean"], r["ci95"]))
        lines.append(f"{name:<14}{cells}")
    return "\n".join(lines)
