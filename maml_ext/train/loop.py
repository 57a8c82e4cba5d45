"""Meta-training: build the run from its config, train with checkpoints, resume exactly."""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from maml_ext import plugins
from maml_ext.algorithms import ALGORITHMS, MetaLearner, build_algorithm
from maml_ext.tasks import TaskFamily

from . import checkpoint, distributed
from .config import Config, ConfigError, check_options, flatten, validate
from .progress import Progress

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
MIN_LOG_POINTS = 20  # a learning curve has at least this many points, however short the run
# What --resume may change: none of these alters the trained weights.
RESUMABLE = ("train.iterations", "train.log_every", "train.checkpoint_every", "eval.")


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss or meta-gradient); the last checkpoint is kept."""


@dataclass
class Run:
    config: Config
    family: TaskFamily
    learner: MetaLearner


def _options(section: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k != "name"}


def build_plugin(section: str, cfg: Config, registry: plugins.Registry, **given: Any) -> Any:
    """The ``[section]`` plugin of ``cfg`` built by ``registry``: options of the wrong type are
    named before the factory runs, and a value it refuses (``ValueError``: a bad activation, a
    missing dataset) becomes a ConfigError."""
    name, options = cfg[section]["name"], _options(cfg[section])
    check_options(section, name, registry.factory(name), options)
    try:
        return registry.build(name, **given, **options)
    except ValueError as exc:
        raise ConfigError(f"{section} {name!r}: {exc}") from exc


def build(cfg: Config) -> Run:
    """Task family, model and learner of a validated config (model init seeded by ``seed``)."""
    torch.manual_seed(cfg["seed"])
    family = build_plugin("task", cfg, plugins.tasks)
    model = build_plugin("model", cfg, plugins.models, in_features=family.in_features, out_features=family.out_features)
    name, options = cfg["algorithm"]["name"], _options(cfg["algorithm"])
    if name in ALGORITHMS:
        check_options("algorithm", name, ALGORITHMS[name][0].__init__, options)
    options.setdefault("loss", family.loss)
    try:
        learner = build_algorithm(name, model, **options)
    except ValueError as exc:
        raise ConfigError(f"[algorithm] {exc}") from exc
    return Run(cfg, family, learner)


def log_every(tcfg: dict[str, Any]) -> int:
    """Iterations between metrics records: ``train.log_every``, lowered for short runs so the
    learning curve has at least ``MIN_LOG_POINTS`` points."""
    return max(1, min(tcfg["log_every"], tcfg["iterations"] // MIN_LOG_POINTS))


def _rng_state(tasks: torch.Generator) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "tasks": tasks.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any], tasks: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    tasks.set_state(state["tasks"])
    random.setstate(state["python"])


def _check_resumable(saved: Config, cfg: Config, iteration: int, out_dir: Path) -> None:
    # Everything that shapes the weights must match, or the run would not continue the same one.
    a, b = flatten(saved), flatten(cfg)
    diff = sorted(k for k in set(a) | set(b) if not k.startswith(RESUMABLE) and a.get(k) != b.get(k))
    if diff:
        changes = "; ".join(f"{k} is {a.get(k, '(unset)')!r} in the run, {b.get(k, '(unset)')!r} now" for k in diff)
        raise ConfigError(f"--resume with a different config: {changes}; only {', '.join(RESUMABLE[:-1])} "
                          "and eval.* may change")
    total = cfg["train"]["iterations"]
    if iteration >= total:
        raise ConfigError(f"{out_dir} has finished: its checkpoint is at iteration {iteration} of train.iterations="
                          f"{total}. To train on, --resume --set train.iterations=N with N > {iteration}; to evaluate "
                          f"it, maml-ext eval {out_dir}")


def notice(text: str) -> None:
    print(f"maml-ext: notice: {text}", file=sys.stderr)


def _truncate_metrics(path: Path, iteration: int) -> None:
    """Drop lines logged after the checkpoint a resumed run restarts from, and a partial last
    line (a run killed mid-write)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    kept = []
    for n, line in enumerate(lines, 1):
        try:
            logged = json.loads(line)["iteration"]
            if not isinstance(logged, int):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            if n == len(lines):
                notice(f"dropped the partial last line of {path} ({line[:40]!r}...), written when the run stopped")
                break
            raise checkpoint.CheckpointError(f"{path} line {n} is not a metrics record: {line[:60]!r}") from exc
        if logged <= iteration:
            kept.append(line)
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
    if checkpoint.remove_stale_temporary(ckpt_path):
        notice(f"removed {checkpoint.temporary(ckpt_path).name}, left by a checkpoint write that did not finish")
    state = None
    if resume:
        state = checkpoint.load(ckpt_path)
        _check_resumable(state["config"], cfg, state["iteration"], out_dir)
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
    optimizer = torch.optim.Adam(learner.parameters(), lr=tcfg["meta_lr"])
    tasks = torch.Generator().manual_seed(cfg["seed"])
    start, window = 0, [0.0, 0]
    state = shard.from_main(lambda: open_out_dir(cfg, out_dir, resume))
    if state is not None:
        _resume(ckpt_path, state, learner, optimizer, tasks)
        start, window = state["iteration"], list(state["window"])
    shard.prepare(learner, tcfg["meta_batch"])

    main, every = shard.is_main, log_every(tcfg)
    bar = Progress(tcfg["iterations"], start) if progress and main else None
    board = _tensorboard(out_dir) if main else None
    t0, last, saved = time.perf_counter(), float("nan"), start if state is not None else None
    with metrics_path.open("a") if main else contextlib.nullcontext() as metrics:
        for it in range(start, tcfg["iterations"]):
            batch = run.family.sample(tcfg["meta_batch"], tcfg["k_support"], tcfg["k_query"], tasks)
            optimizer.zero_grad(set_to_none=True)
            last = shard.backward(learner, batch, it, tcfg.get("task_chunk"))
            check_finite(it + 1, last, learner.parameters(), ckpt_path, saved)
            if tcfg.get("clip_grad"):
                # Element-wise value clipping of the (all-reduced) meta-gradient, as the official
                # MiniImagenet code does (tf.clip_by_value to [-10, 10]).
                torch.nn.utils.clip_grad_value_(learner.parameters(), tcfg["clip_grad"])
            optimizer.step()
            window = [window[0] + last, window[1] + 1]
            done = it + 1
            if main and (done % every == 0 or done == tcfg["iterations"]):
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
                saved = done
            if bar is not None:
                bar.update(done, last)
    if bar is not None:
        bar.close(max(start, tcfg["iterations"]), last)
    if board is not None:
        board.close()
    return ckpt_path


def check_finite(iteration: int, loss: float, params: Iterable[torch.Tensor], ckpt_path: Path,
                 saved: int | None) -> None:
    """Stop before a non-finite meta-loss or meta-gradient reaches the weights (the checkpoint on
    disk stays the last good one)."""
    grads = [p.grad.reshape(-1) for p in params if p.grad is not None]
    if math.isfinite(loss) and (not grads or bool(torch.cat(grads).isfinite().all())):  # one pass, one sync
        return
    what = f"meta-loss is {loss}" if not math.isfinite(loss) else "meta-gradient has non-finite entries"
    kept = f"{ckpt_path} keeps iteration {saved}" if saved is not None else "no checkpoint had been written yet"
    raise TrainingError(f"iteration {iteration}: the {what}; training stopped before the update, {kept} "
                        "(try a smaller train.meta_lr or algorithm.lr, or train.clip_grad)")


def _resume(path: Path, state: dict[str, Any], learner: MetaLearner, optimizer: torch.optim.Optimizer,
            tasks: torch.Generator) -> None:
    checkpoint.load_into(path, learner, state["learner"])
    checkpoint.load_optimizer(path, optimizer, state["optimizer"])
    checkpoint.check_rng(path, state["rng"], ("tasks",))
    _set_rng_state(state["rng"], tasks)
    window = state.get("window")
    if not (isinstance(window, list) and len(window) == 2 and isinstance(window[0], float)
            and isinstance(window[1], int)):
        raise checkpoint.CheckpointError(f"checkpoint {path}: window must be [loss sum, count], got {window!r}")


def restore(ckpt_path: Path) -> tuple[Run, int]:
    """The trained run stored in a checkpoint, and its iteration."""
    state = checkpoint.load(ckpt_path)
    try:
        cfg = validate(state["config"])
    except ConfigError as exc:
        raise checkpoint.CheckpointError(f"checkpoint {ckpt_path} holds an invalid config: {exc}") from exc
    run = build(cfg)
    checkpoint.load_into(ckpt_path, run.learner, state["learner"])
    run.learner.eval()  # for evaluation: MAML++ per-step BatchNorm then uses its running statistics
    return run, state["iteration"]
