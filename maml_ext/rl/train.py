"""Meta-RL training loop: build a run from its config, meta-train with checkpoints, resume
exactly, evaluate (average return vs adaptation steps) and plot.

Config sections as the supervised loop (``maml_ext.train.config.RL_SCHEMA`` holds the keys and
defaults): ``[task]`` names a family whose factory returns a :class:`TaskEnv`, ``[model]`` the
policy (``gaussian_mlp``), ``[algorithm]`` ``maml`` or ``fomaml`` with its inner step size
``lr``, ``[train]`` the meta-batch, rollouts per task and the meta-optimizer (TRPO or Adam),
``[eval]`` the test protocol. The loop, run directory, checkpoints and metrics are the supervised
run's (``maml_ext.train.driver``); ``RLStep`` is the meta-iteration.
"""

from __future__ import annotations

import json
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from maml_ext import plugins
from maml_ext.train import checkpoint, distributed, driver
from maml_ext.train import results as eval_files
from maml_ext.train import loop as supervised
from maml_ext.train.config import RL_SCHEMA, Config, ConfigError, validate
from maml_ext.train.driver import NonFinite

from . import evaluate as rl_evaluate
from . import plots as rl_plots
from .algorithms import MetaRL
from .envs.base import TaskEnv
from .policy import GaussianMLPPolicy

CHECKPOINT, METRICS = supervised.CHECKPOINT, supervised.METRICS
KIND = "rl"  # marks a meta-RL checkpoint, so `maml-ext eval/plot` pick this loop
ALGORITHMS = {"maml": False, "fomaml": True}  # name -> first_order


@dataclass
class RLRun:
    config: Config
    env: TaskEnv
    learner: MetaRL


def task_family(cfg: Config) -> Any:
    """The config's task family, built once per command: it declares whether the run is meta-RL
    (it is a :class:`TaskEnv`) and is then handed to ``train``/``restore`` of the right loop.
    None for a config without a task name (its validation then says what is missing)."""
    task = cfg.get("task")
    if not isinstance(task, dict) or not isinstance(task.get("name"), str):
        return None
    return supervised.build_plugin("task", cfg, plugins.tasks)


def load_config(raw: Config) -> Config:
    """Validate a meta-RL config (defaults filled, each bad value named)."""
    cfg = validate(raw, RL_SCHEMA)
    if cfg["algorithm"]["name"] not in ALGORITHMS:
        raise ConfigError(f"algorithm.name for meta-RL must be one of {sorted(ALGORITHMS)}, "
                          f"got {cfg['algorithm']['name']!r}")
    unknown = sorted(set(cfg["algorithm"]) - {"name", "lr"})
    if unknown:
        raise ConfigError(f"unknown [algorithm] option(s) {unknown} for meta-RL; known: ['lr']")
    lr = cfg["algorithm"].get("lr", 0.1)
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise ConfigError(f"algorithm.lr must be a number > 0, got {lr!r}")
    cfg["algorithm"]["lr"] = float(lr)
    return cfg


def build(cfg: Config, env: Any = None) -> RLRun:
    """Environment, policy (initialised from ``seed``) and learner of a validated config
    (``env``: the config's environment when the caller built it already, see ``task_family``)."""
    driver.seed(cfg["seed"])
    env = supervised.build_plugin("task", cfg, plugins.tasks) if env is None else env
    if not isinstance(env, TaskEnv):
        raise ConfigError(f"task {cfg['task']['name']!r} is not a meta-RL environment (TaskEnv)")
    model = supervised.build_plugin("model", cfg, plugins.models, in_features=env.obs_dim, out_features=env.act_dim)
    if not isinstance(model, GaussianMLPPolicy):
        raise ConfigError(f"model {cfg['model']['name']!r} is not a Gaussian MLP policy; use 'gaussian_mlp'")
    t = cfg["train"]
    learner = MetaRL(
        model, lr=cfg["algorithm"]["lr"], first_order=ALGORITHMS[cfg["algorithm"]["name"]],
        optimizer=t["optimizer"], meta_lr=t["meta_lr"], max_kl=t["max_kl"], cg_iters=t["cg_iters"],
        cg_damping=t["cg_damping"], backtrack_ratio=t["backtrack_ratio"], max_backtracks=t["max_backtracks"],
        cg_subsample=t["cg_subsample"],
        gamma=t["gamma"], gae_lambda=t["gae_lambda"], center_advantages=t["center_advantages"],
    )
    return RLRun(cfg, env, learner)


def _all_reduce(shard: distributed.Shard) -> Any:
    def reduce(x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous().clone()
        shard.collective("all_reduce of the meta-RL sums", lambda: dist.all_reduce(x))
        return x
    return reduce


class RLStep:
    """One MAML-RL meta-iteration (``MetaRL.iteration``: rollouts, inner steps, TRPO/Adam step) on
    this rank's share of the tasks; stops at the first non-finite statistic or policy parameter
    (the update is then applied in memory only, never checkpointed); logs the last iteration's
    statistics, which the progress bar also prints."""

    kind = KIND
    metric = "post-update return"

    def __init__(self, run: RLRun, shard: distributed.Shard) -> None:
        self.run, self.tcfg = run, run.config["train"]
        self.module = run.learner.policy
        # Tasks from ``seed``, the rollouts' noise (and start states) from ``seed + 1``.
        self.generators = {"tasks": torch.Generator().manual_seed(run.config["seed"]),
                           "noise": torch.Generator().manual_seed(run.config["seed"] + 1)}
        world = shard.world > 1
        self.bounds = shard.bounds(self.tcfg["meta_batch"]) if world else None
        self.reduce = _all_reduce(shard) if world else None
        self.info: dict[str, Any] = {}
        self.done = 0

    def __call__(self, iteration: int) -> float:
        tasks = self.run.env.sample_tasks(self.tcfg["meta_batch"], self.generators["tasks"])
        self.info = self.run.learner.iteration(self.run.env, tasks, self.tcfg["rollouts"], self.generators["noise"],
                                               self.bounds, self.reduce)
        self.done = iteration + 1
        bad = sorted(k for k, v in self.info.items() if isinstance(v, float) and not math.isfinite(v))
        if not bad and not all(bool(p.isfinite().all()) for p in self.run.learner.policy.parameters()):
            bad = ["policy parameters"]
        if bad:
            raise NonFinite(f"non-finite {', '.join(bad)}", "try a smaller train.max_kl or train.meta_lr, or algorithm.lr")
        return self.info["return_post"]

    def record(self) -> dict[str, float]:
        return dict(self.info)

    def summary(self) -> str:
        info = self.info
        return (f"iteration {self.done}: return pre {info['return_pre']:.2f} post {info['return_post']:.2f}"
                + (f" kl {info['kl']:.4f}" if "kl" in info else ""))

    def state(self) -> dict[str, Any]:
        return {"learner": self.run.learner.state_dict(), "optimizer": None}

    def load(self, path: Path, state: dict[str, Any]) -> None:
        _load_learner(path, self.run.learner, state["learner"])


def train(cfg: Config, out_dir: Path, *, resume: bool = False, progress: bool = True, family: Any = None) -> Path:
    """Meta-train into ``out_dir`` (checkpoint.pt, metrics.jsonl, config.json); returns the
    checkpoint path. Tasks come from a generator seeded by ``seed``, the rollouts' noise (and
    start states) from one seeded by ``seed + 1``; both are checkpointed, so ``resume`` continues
    the uninterrupted run exactly.

    Inside a torch.distributed process group (``--nproc``, torchrun) every rank draws the same
    meta-batch and the action noise of all its rollouts, runs its contiguous share of the tasks
    (sampling, baselines, inner steps, meta-gradient and KL products), and the sums over tasks
    are all-reduced, so every rank takes the single-process TRPO/Adam step; rank 0 alone writes.
    N processes then equal one (up to the order of floating-point sums) for families whose
    start states are deterministic (``point_nav``); a family that draws random start states from
    the generator draws them per shard, so its runs are as random but not the same numbers."""
    driver.set_threads(cfg)
    step = RLStep(build(cfg, family), distributed.current())
    return driver.train(step, cfg, out_dir, resume=resume, progress=progress)


def _load_learner(path: Path, learner: MetaRL, saved: dict[str, Any]) -> None:
    if set(saved) != {"policy", "adam"}:
        raise checkpoint.CheckpointError(f"checkpoint {path}: learner must hold 'policy' and 'adam', got {sorted(saved)}")
    checkpoint.load_into(path, learner.policy, saved["policy"], "learner.policy")
    if learner.adam is not None:
        checkpoint.load_optimizer(path, learner.adam, saved["adam"])


def is_rl_checkpoint(path: Path) -> bool:
    return checkpoint.load(path).get("kind") == KIND


def restore(path: Path, env: Any = None) -> tuple[RLRun, int]:
    """The trained run stored in a meta-RL checkpoint, and its iteration (``env``: see ``build``)."""
    state = checkpoint.load(path)
    if state.get("kind") != KIND:
        raise checkpoint.CheckpointError(f"{path} is not a meta-RL checkpoint")
    run = build(load_config(state["config"]), env)
    _load_learner(path, run.learner, state["learner"])
    return run, state["iteration"]


def evaluate(run: RLRun, cfg: Config, iteration: int, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """``eval.*`` protocol on the trained policy (and from the run's random initialisation when
    ``eval.random_init``); writes eval.json and prints the table."""
    initial = build(run.config, run.env).learner if cfg["eval"]["random_init"] else None
    results = rl_evaluate.evaluate(run.learner, run.env, cfg["eval"], initial, progress)
    results["iteration"] = iteration
    path = eval_files.write(results, cfg["eval"], out_dir, run.config["eval"])
    print(rl_evaluate.table(results))
    print(f"results: {path}")
    return results


def compared_returns(results: dict[str, Any], task: str, others: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """``results`` with the returns rows of other evaluated runs added as "<run>: <row>";
    ``others`` maps a run's name to its task family and eval results. Runs evaluated on other
    test tasks (family, number or seed) are refused: their returns would not be comparable."""
    merged = {**results, "returns": dict(results["returns"])}
    for name, (their_task, theirs) in others.items():
        ours_key = (task, results["num_tasks"], results["seed"])
        their_key = (their_task, theirs["num_tasks"], theirs["seed"])
        if their_key != ours_key:
            raise ConfigError(
                f"--compare {name}: evaluated on {their_key[1]} {their_key[0]} test tasks with seed {their_key[2]}, "
                f"this run on {ours_key[1]} {ours_key[0]} tasks with seed {ours_key[2]}: compare runs evaluated on "
                "the same test tasks (eval.num_tasks, eval.seed)")
        merged["returns"].update({f"{name}: {row}": r for row, r in theirs["returns"].items()})
    return merged


def plot(run: RLRun, cfg: Config, iteration: int, out_dir: Path, compare: typing.Sequence[Path] = ()) -> list[Path]:
    """learning_curve.png, adaptation.png (with the ``compare`` runs' returns) and, for 2D
    navigation, trajectories.png; adaptation.png only from an evaluation of the checkpoint at
    ``iteration``."""
    made = [rl_plots.learning_curve(out_dir / METRICS, out_dir / "learning_curve.png")]
    others = {}
    for other in map(Path, compare):
        if not (other / "config.json").exists():
            raise ConfigError(f"--compare {other}: no config.json (not a run directory)")
        their_cfg = json.loads((other / "config.json").read_text())
        # Their evaluation with this one's settings (rollouts, steps, step sizes, ...), else refused.
        others[other.name] = (their_cfg["task"]["name"], eval_files.matching(other, cfg["eval"]))
    try:
        ours = eval_files.current(out_dir, cfg["eval"], run.config["eval"], iteration)
    except eval_files.NotCurrent as exc:
        if others:
            raise ConfigError(f"--compare needs this run evaluated first: {exc}") from exc
        driver.notice(str(exc))  # said, not silently skipped: an older adaptation.png may be there
    else:
        results = compared_returns(ours, cfg["task"]["name"], others)
        made.append(rl_plots.returns_vs_steps(results, out_dir / "adaptation.png",
                                              title=f"{cfg['task']['name']}, {cfg['algorithm']['name']}"))
    if run.env.obs_dim == 2 and run.env.task_dim == 2 and cfg["eval"]["trajectories"]:
        made.append(rl_plots.trajectories(run.learner, run.env, cfg["eval"], out_dir / "trajectories.png",
                                          tasks=cfg["eval"]["trajectories"]))
    print("plots: " + ", ".join(str(p) for p in made))
    return made
