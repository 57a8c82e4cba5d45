"""Evaluation files of a run directory, one per evaluation setting, never overwritten by another.

The evaluation with the run's own ``[eval]`` settings is ``eval.json``; one with other settings
(``maml-ext eval runs/x --set eval.shots=[1] --set eval.steps=3``) is named by the settings that
differ, ``eval-shots=1-steps=3.json``. Every file records its ``"settings"``, and runs are
compared only on evaluations with equal settings (the shot counts may differ: each shot count is
its own set of tasks)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from . import checkpoint
from .config import ConfigError

DEFAULT = "eval.json"
# Keys that change how an evaluation is computed, not its numbers.
NOT_SETTINGS = frozenset({"chunk", "trajectories"})


def settings(ecfg: dict[str, Any]) -> dict[str, Any]:
    """The ``[eval]`` values that determine an evaluation's numbers."""
    return {k: v for k, v in sorted(ecfg.items()) if k not in NOT_SETTINGS}


def _value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(map(_value, v))
    return json.dumps(v) if isinstance(v, bool) else str(v)  # TOML spelling: true / false


def path_for(out_dir: Path, ecfg: dict[str, Any], run_ecfg: dict[str, Any]) -> Path:
    """Where the evaluation with settings ``ecfg`` of a run configured with ``run_ecfg`` lives."""
    ours, default = settings(ecfg), settings(run_ecfg)
    differing = [f"{k}={_value(v)}" for k, v in ours.items() if default.get(k) != v]
    return out_dir / ("eval-" + "-".join(differing) + ".json" if differing else DEFAULT)


def _toml(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(map(_toml, v)) + "]"
    return json.dumps(v) if isinstance(v, (bool, str)) else str(v)


def eval_command(out_dir: Path, ecfg: dict[str, Any], run_ecfg: dict[str, Any]) -> str:
    """The ``maml-ext eval`` command that (re)writes :func:`path_for`'s file."""
    ours, default = settings(ecfg), settings(run_ecfg)
    # keys are [eval] names, or "task.eval_split"-style task options that choose the held-out tasks
    sets = "".join(f" --set {k if '.' in k else 'eval.' + k}={_toml(v)}" for k, v in ours.items() if default.get(k) != v)
    return f"maml-ext eval {out_dir}{sets}"


class NotCurrent(ConfigError):
    """A run has no evaluation of its checkpoint with the settings asked for (none, or one of an
    earlier iteration, before ``train --resume`` trained on); the message names the command that
    makes it."""


def not_evaluated(out_dir: Path, ecfg: dict[str, Any], run_ecfg: dict[str, Any]) -> str:
    """Why a plot has no adaptation.png: no evaluation with these settings, and the command that
    makes it."""
    return (f"no {path_for(out_dir, ecfg, run_ecfg)}: adaptation.png is not drawn; evaluate the run with these "
            f"settings first: {eval_command(out_dir, ecfg, run_ecfg)}")


def _stale(path: Path, results: dict[str, Any], iteration: int, command: str) -> str | None:
    """Why ``results`` (read from ``path``) is not the evaluation of the checkpoint at ``iteration``;
    None when it is. Files without an ``iteration`` (written before it was recorded) cannot tell."""
    evaluated = results.get("iteration", iteration)
    if evaluated == iteration:
        return None
    return (f"{path} is the evaluation at iteration {evaluated}, the checkpoint is at iteration {iteration} "
            f"(trained on since): evaluate it again: {command}")


def current(out_dir: Path, ecfg: dict[str, Any], run_ecfg: dict[str, Any], iteration: int) -> dict[str, Any]:
    """The run's evaluation with settings ``ecfg`` of its checkpoint at ``iteration``; NotCurrent
    (saying why and how to make it) when the file is missing or older than the checkpoint, so a
    stale evaluation is never drawn as the current model's."""
    path = path_for(out_dir, ecfg, run_ecfg)
    if not path.exists():
        raise NotCurrent(not_evaluated(out_dir, ecfg, run_ecfg))
    results = json.loads(path.read_text())
    stale = _stale(path, results, iteration, eval_command(out_dir, ecfg, run_ecfg))
    if stale is not None:
        raise NotCurrent(stale + "; adaptation.png is not drawn")
    return results


def write(results: dict[str, Any], ecfg: dict[str, Any], out_dir: Path, run_ecfg: dict[str, Any]) -> Path:
    """Write ``results`` (with its ``"settings"``) atomically to :func:`path_for`."""
    path = path_for(out_dir, ecfg, run_ecfg)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**results, "settings": settings(ecfg)}, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def _comparable(s: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in s.items() if k != "shots"}


def _describe(s: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_value(v)}" for k, v in s.items())


def _checkpoint_iteration(run_dir: Path) -> int | None:
    """The iteration of ``run_dir``'s checkpoint; None without one (its evaluations cannot be dated)."""
    path = run_dir / checkpoint.CHECKPOINT
    return checkpoint.load(path)["iteration"] if path.exists() else None


def _command_for(run_dir: Path, recorded: dict[str, Any]) -> str:
    """The command that re-evaluates another run's file with settings ``recorded``."""
    cfg = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    run_ecfg = {**cfg.get("eval", {}),
                **{k: cfg.get("task", {}).get(k.split(".", 1)[1]) for k in recorded if k.startswith("task.")}}
    return eval_command(run_dir, recorded, run_ecfg)


def matching(run_dir: Path, ecfg: dict[str, Any]) -> dict[str, Any]:
    """The evaluation in ``run_dir`` whose settings equal ``ecfg``'s (shot counts aside); an error
    naming both settings when there is none, so unlike evaluations are never drawn together, and
    one when it is older than ``run_dir``'s checkpoint (trained on with ``--resume`` since)."""
    wanted = _comparable(settings(ecfg))
    found = sorted(run_dir.glob("eval*.json"))
    for path in found:
        results = json.loads(path.read_text())
        if _comparable(results.get("settings", {})) == wanted:
            iteration = _checkpoint_iteration(run_dir)
            stale = None if iteration is None else _stale(path, results, iteration,
                                                          _command_for(run_dir, results.get("settings", {})))
            if stale is not None:
                raise NotCurrent(f"--compare {run_dir}: {stale}")
            return results
    if not found:
        raise ConfigError(f"--compare {run_dir}: no evaluation (run `maml-ext eval` on it)")
    theirs = "; ".join(f"{p.name}: {_describe(_comparable(json.loads(p.read_text()).get('settings', {})))}" for p in found)
    raise ConfigError(f"--compare {run_dir}: no evaluation with this run's settings ({_describe(wanted)}); "
                      f"it has {theirs}. Evaluate it with the same eval.* settings first.")
