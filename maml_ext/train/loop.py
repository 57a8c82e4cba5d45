"""Meta-training: build the run from its config, train with checkpoints, resume exactly."""

from __future__ import annotations

import contextlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from maml_ext import plugins
from maml_ext.algorithms import MetaLearner, build_algorithm
from maml_ext.tasks import TaskFamily

from . import checkpoint, distributed, optim
from .config import Config, ConfigError, flatten
from .progress import Progress

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


@dataclass
class Run:
    config: Config
    family: TaskFamily
    learner: MetaLearner


def _options(section: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k != "name"}


def build(cfg: Config) -> Run:
    """Task family, model and learner of a validated config (model init seeded by ``seed``)."""
    torch.manual_seed(cfg["seed"])
    family = plugins.build_task(cfg["task"]["name"], **_options(cfg["task"]))
    model = plugins.build_model(
        cfg["model"]["name"],
        in_features=family.in_features,
        out_features=family.out_features,
        **_options(cfg["model"]),
    )
    options = _options(cfg["algorithm"])
    options.setdefault("loss", family.loss)
    try:
        learner = build_algorithm(cfg["algorithm"]["name"], model, **options)
    except ValueError as exc:
        raise ConfigError(f"[algorithm] {exc}") from exc
    return Run(cfg, family, learner)


def _rng_state(tasks: torch.Generator) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "tasks": tasks.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any], tasks: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    tasks.set_state(state["tasks"])
    random.setstate(state["python"])


def _check_resumable(saved: Config, cfg: Config) -> None:
    # Everything but the iteration budget must match, or the run would not continue the same one.
    a, b = flatten(saved), flatten(cfg)
    diff = sorted(k for k in set(a) | set(b) if k != "train.iterations" and a.get(k) != b.get(k))
    if diff:
        raise ConfigError(f"--resume with a different config ({', '.join(diff)}); only train.iterations may change")


def _truncate_metrics(path: Path, iteration: int) -> None:
    """Drop lines logged after the checkpoint a resumed run restarts from."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["iteration"] <= iteration]
    path.write_text("".join(line + "\n" for line in kept))


def _tensorboard(out_dir: Path) -> Any:
    """A SummaryWriter when the tensorboard package is installed, else None (JSONL only)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def open_out_dir(cfg: Config, out_dir: Path, resume: bool) -> dict[str, Any] | None:
    """The run directory's file work before training (rank 0 only): the checkpoint to resume from,
    or None for a new run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, metrics_path = out_dir / CHECKPOINT, out_dir / METRICS
    state = None
    if resume:
        state = checkpoint.load(ckpt_path)
        _check_resumable(state["config"], cfg)
        _truncate_metrics(metrics_path, state["iteration"])
    elif ckpt_path.exists():
        raise checkpoint.CheckpointError(f"{ckpt_path} exists: pass --resume, or choose another output directory")
    else:
        metrics_path.write_text("")
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return state


def train(cfg: Config, out_dir: Path, *, resume: bool = False, progress: bool = True) -> Path:
    """Meta-train into ``out_dir`` (checkpoint.pt, metrics.jsonl, config.json); returns the checkpoint path.

    Inside a torch.distributed process group every rank calls this: the ranks split each
    meta-batch (see ``distributed``) and only rank 0 touches ``out_dir``."""
    shard = distributed.current()
    ckpt_path = out_dir / CHECKPOINT
    metrics_path = out_dir / METRICS
    if cfg["train"]["threads"]:
        torch.set_num_threads(cfg["train"]["threads"])
    run = build(cfg)
    learner, tcfg = run.learner, cfg["train"]
    if tcfg.get("task_chunk") and learner.bn_names:
        raise ConfigError("train.task_chunk cannot be used with per-step BatchNorm statistics (MAML++): "
                          "their running averages are taken over one pass's tasks")
    optimizer = optim.adam(learner.parameters(), tcfg["meta_lr"])
    tasks = torch.Generator().manual_seed(cfg["seed"])
    start, window = 0, [0.0, 0]
    state = shard.from_main(lambda: open_out_dir(cfg, out_dir, resume))
    if state is not None:
        learner.load_state_dict(state["learner"])
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"], tasks)
        start, window = state["iteration"], list(state["window"])
    shard.prepare(learner, tcfg["meta_batch"])

    main = shard.is_main
    bar = Progress(tcfg["iterations"], start) if progress and main else None
    board = _tensorboard(out_dir) if main else None
    t0, last = time.perf_counter(), float("nan")
    with metrics_path.open("a") if main else contextlib.nullcontext() as metrics:
        for it in range(start, tcfg["iterations"]):
            batch = run.family.sample(tcfg["meta_batch"], tcfg["k_support"], tcfg["k_query"], tasks)
            optimizer.zero_grad(set_to_none=True)
            last = shard.backward(learner, batch, it, tcfg.get("task_chunk"))
            if tcfg.get("clip_grad"):
                # Element-wise value clipping of the (all-reduced) meta-gradient, as the official
                # MiniImagenet code does (tf.clip_by_value to [-10, 10]).
                torch.nn.utils.clip_grad_value_(learner.parameters(), tcfg["clip_grad"])
            optimizer.step()
            window = [window[0] + last, window[1] + 1]
            done = it + 1
            if main and (done % tcfg["log_every"] == 0 or done == tcfg["iterations"]):
                elapsed = time.perf_counter() - t0
                record = {"iteration": done, "loss": window[0] / window[1], "it_s": (done - start) / elapsed}
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                if board is not None:
                    board.add_scalar("meta_loss", record["loss"], done)
                window = [0.0, 0]
            if main and (done % tcfg["checkpoint_every"] == 0 or done == tcfg["iterations"]):
                state = {
                    "iteration": done, "config": cfg, "learner": learner.state_dict(),
                    "optimizer": optimizer.state_dict(), "rng": _rng_state(tasks), "window": window,
                }
                checkpoint.save(state, ckpt_path)
            if bar is not None:
                bar.update(done, last)
    if bar is not None:
        bar.close(max(start, tcfg["iterations"]), last)
    if board is not None:
        board.close()
    return ckpt_path


def restore(ckpt_path: Path) -> tuple[Run, int]:
    """The trained run stored in a checkpoint, and its iteration."""
    state = checkpoint.load(ckpt_path)
    run = build(state["config"])
    run.learner.load_state_dict(state["learner"])
    run.learner.eval()  # for evaluation: MAML++ per-step BatchNorm then uses its running statistics
    return run, state["iteration"]
