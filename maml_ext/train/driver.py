"""The meta-training loop shared by supervised and meta-RL runs: the run directory, resume,
checkpoints, RNG state, the finiteness stop, metrics, TensorBoard and progress. What one
meta-iteration does is the domain's ``Step`` (``train.loop`` for supervised families,
``rl.train`` for meta-RL environments)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from . import checkpoint, distributed
from .config import Config, ConfigError, flatten
from .progress import Progress

CHECKPOINT = checkpoint.CHECKPOINT
METRICS = "metrics.jsonl"
MIN_LOG_POINTS = 20  # a learning curve has at least this many points, however short the run
# What --resume may change: none of these alters the trained weights.
RESUMABLE = ("train.iterations", "train.log_every", "train.checkpoint_every", "eval.")


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss or meta-gradient); the last checkpoint is kept."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says which checkpoint was kept (``maml-ext`` prints it)."""


class NonFinite(Exception):
    """Raised by a ``Step``: what was not finite, and ``hint``, the settings to try instead."""

    def __init__(self, what: str, hint: str) -> None:
        super().__init__(what)
        self.hint = hint


class Step(Protocol):
    """One domain's meta-iteration and the state it adds to the checkpoint."""

    kind: str | None  # stored as the checkpoint's "kind" (None: not stored)
    generators: dict[str, torch.Generator]  # seeded by the domain, checkpointed here
    module: nn.Module  # what every rank starts from (rank 0's parameters and buffers)
    metric: str  # what the progress bar calls the value ``__call__`` returns

    def __call__(self, iteration: int) -> float:
        """Run meta-iteration ``iteration`` (0-based); the progress bar's loss. Raises NonFinite."""

    def record(self) -> dict[str, float]:
        """The metrics logged now (rank 0), aggregated since the previous record."""

    def summary(self) -> str | None:
        """A line the progress bar prints with each record (None: nothing)."""

    def state(self) -> dict[str, Any]:
        """The checkpoint's ``learner`` and ``optimizer`` (and any other domain key)."""

    def load(self, path: Path, state: dict[str, Any]) -> None:
        """Restore what ``state()`` saved; a mismatch is a CheckpointError."""


def set_threads(cfg: Config) -> None:
    if cfg["train"]["threads"]:
        torch.set_num_threads(cfg["train"]["threads"])


def log_every(tcfg: dict[str, Any]) -> int:
    """Iterations between metrics records: ``train.log_every``, lowered for short runs so the
    learning curve has at least ``MIN_LOG_POINTS`` points."""
    return max(1, min(tcfg["log_every"], tcfg["iterations"] // MIN_LOG_POINTS))


def seed(value: int) -> None:
    """Seeds the global generators a run's plugins may draw from: torch's and Python's ``random``
    (both checkpointed, so ``--resume`` continues their sequences)."""
    torch.manual_seed(value)
    random.seed(value)


def _rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            **{name: g.get_state() for name, g in generators.items()}}


def _set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    for name, g in generators.items():
        g.set_state(state[name])


def _check_resumable(saved: Config, cfg: Config, iteration: int, out_dir: Path) -> None:
    # Everything that shapes the weights must match, or the run would not continue the same one.
    a, b = flatten(saved), flatten(cfg)
    diff = sorted(k for k in set(a) | set(b) if not k.startswith(RESUMABLE) and a.get(k) != b.get(k))
    if diff:
        shown = lambda c, k: repr(c[k]) if k in c else "unset"  # noqa: E731
        changes = "; ".join(f"{k} is {shown(a, k)} in the run, {shown(b, k)} now" for k in diff[:5])
        changes += f"; and {len(diff) - 5} more" if len(diff) > 5 else ""
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
    # Atomically: under torchrun every rank reads config.json (--resume) while rank 0 rewrites it.
    tmp = out_dir / "config.json.tmp"
    tmp.write_text(json.dumps(cfg, indent=2) + "\n")
    os.replace(tmp, out_dir / "config.json")
    return state


@contextlib.contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """Ctrl-C inside the block takes effect when it ends: a checkpoint written (renamed into place)
    just before the interrupt is the one the message names, not the previous one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            signal.raise_signal(signal.SIGINT)  # to the handler restored: KeyboardInterrupt as usual


def train(step: Step, cfg: Config, out_dir: Path, *, resume: bool = False, progress: bool = True) -> Path:
    """Run ``step`` for iterations [start, train.iterations) into ``out_dir`` (checkpoint.pt,
    metrics.jsonl, config.json; ``start`` is the checkpoint's iteration on ``resume``); returns
    the checkpoint path. Every rank of a process group calls this; only rank 0 touches ``out_dir``."""
    shard = distributed.current()
    tcfg, ckpt_path = cfg["train"], out_dir / CHECKPOINT
    state = shard.from_main(lambda: open_out_dir(cfg, out_dir, resume))
    start = saved = 0
    if state is not None:
        if state.get("kind") != step.kind:
            found = "a meta-RL" if state.get("kind") == "rl" else "a supervised"
            raise checkpoint.CheckpointError(f"{ckpt_path} is {found} checkpoint; this config trains another kind")
        checkpoint.check_rng(ckpt_path, state["rng"], step.generators)
        step.load(ckpt_path, state)
        _set_rng_state(state["rng"], step.generators)
        start = saved = state["iteration"]
    shard.prepare(step.module, tcfg["meta_batch"])

    main, every, total = shard.is_main, log_every(tcfg), tcfg["iterations"]
    bar = Progress(total, start, metric=step.metric) if progress and main else None
    board = _tensorboard(out_dir) if main else None
    t0, last = time.perf_counter(), float("nan")
    it = start
    try:
        with (out_dir / METRICS).open("a") if main else contextlib.nullcontext() as metrics:
            for it in range(start, total):
                try:
                    last = step(it)
                except NonFinite as exc:
                    kept = f"{ckpt_path} keeps iteration {saved}" if saved else "no checkpoint had been written yet"
                    raise TrainingError(f"iteration {it + 1}: {exc}; training stopped, {kept} ({exc.hint})") from None
                done = it + 1
                if not main:
                    continue
                if done % every == 0 or done == total:
                    record = {"iteration": done, **step.record(), "it_s": (done - start) / (time.perf_counter() - t0)}
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                    line = step.summary()
                    if bar is not None and line is not None:
                        bar.note(line)
                    if board is not None:
                        for key, value in record.items():
                            if key not in ("iteration", "it_s") and isinstance(value, (int, float)):
                                board.add_scalar("meta_loss" if key == "loss" else key, value, done)
                if done % tcfg["checkpoint_every"] == 0 or done == total:
                    kind = {} if step.kind is None else {"kind": step.kind}
                    with _ctrl_c_deferred():  # the file and ``saved`` change together
                        checkpoint.save({**kind, "iteration": done, "config": cfg, **step.state(),
                                         "rng": _rng_state(step.generators)}, ckpt_path)
                        saved = done
                if bar is not None:
                    bar.update(done, last)
    except KeyboardInterrupt:  # Ctrl-C: say what was kept (the last checkpoint write is atomic)
        if bar is not None:
            bar.close(it, last)  # ends the bar's line before the message
        kept = (f"{ckpt_path} keeps iteration {saved}; continue with --resume" if saved
                else "no checkpoint had been written yet")
        raise Interrupted(f"interrupted at iteration {it + 1}; {kept}") from None
    if bar is not None:
        bar.close(max(start, total), last)
    if board is not None:
        board.close()
    return ckpt_path
