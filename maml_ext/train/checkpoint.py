"""Checkpoints: written atomically with a SHA-256 of their contents; on load the checksum is
verified and the structure checked, so a damaged or foreign file is reported, never trained on.

The file is a plain ``torch.save`` dict (``torch.load(path, weights_only=True)`` reads it) with one
extra key, ``checksum``: the SHA-256 of every other key's value, tensor bytes included.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"  # a run directory's checkpoint file

REQUIRED = ("iteration", "config", "learner", "optimizer", "rng")
CHECKSUM = "checksum"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, corrupt or does not fit the run."""


def digest(state: dict[str, Any]) -> str:
    """SHA-256 over the nested values of ``state`` (dicts, lists, tuples, tensors, scalars)."""
    h = hashlib.sha256()
    _feed(h, state)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}|".encode())
        for key in sorted(obj, key=repr):
            h.update(f"{key!r}=".encode())
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__}{len(obj)}|".encode())
        for item in obj:
            _feed(h, item)
    else:  # int, float, str, bool, None: repr is exact and stable
        h.update(f"{type(obj).__name__}:{obj!r}|".encode())


def temporary(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def save(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` and its checksum to a temporary file in the same directory, fsync, then
    rename it over ``path``: a crash or a full disk mid-write leaves the previous checkpoint
    intact (and the temporary file is removed)."""
    tmp = temporary(path)
    try:
        with open(tmp, "wb") as f:
            torch.save({**state, CHECKSUM: digest(state)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            kept = "the previous checkpoint is kept" if path.exists() else "no checkpoint was written"
            raise CheckpointError(f"cannot write checkpoint {path}: {exc.strerror or exc} ({kept})") from exc
        raise


def remove_stale_temporary(path: Path) -> bool:
    """Remove the temporary file a crashed ``save`` of ``path`` left behind; whether there was one."""
    tmp = temporary(path)
    if tmp.exists():
        tmp.unlink()
        return True
    return False


def load(path: Path) -> dict[str, Any]:
    """The verified state in ``path`` (checksum and structure checked; the ``checksum`` key removed)."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (pickle, zip, EOF, RuntimeError)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable: {first}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} is not a maml_ext checkpoint (holds a {type(state).__name__})")
    missing = [k for k in (*REQUIRED, CHECKSUM) if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete (missing {missing})")
    stored = state.pop(CHECKSUM)
    if stored != digest(state):
        raise CheckpointError(f"checkpoint {path} is corrupt: its contents do not match the checksum stored "
                              "in it (damaged on disk or edited); restore it from a copy or start a new run")
    _check_structure(path, state)
    return state


def _check_structure(path: Path, state: dict[str, Any]) -> None:
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path}: {what}")

    iteration = state["iteration"]
    if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0:
        raise bad(f"iteration must be an integer >= 0, got {iteration!r}")
    if not isinstance(state["config"], dict):
        raise bad(f"config must be a table, got {type(state['config']).__name__}")
    if not isinstance(state["learner"], dict):
        raise bad(f"learner must be a state dict, got {type(state['learner']).__name__}")
    if state["optimizer"] is not None and not isinstance(state["optimizer"], dict):
        raise bad(f"optimizer must be a state dict, got {type(state['optimizer']).__name__}")
    if not isinstance(state["rng"], dict):
        raise bad(f"rng must be a table of generator states, got {type(state['rng']).__name__}")


def check_rng(path: Path, rng: dict[str, Any], generators: Iterable[str]) -> None:
    """``rng`` holds a valid ``torch`` and Python state and one for each named torch.Generator."""
    reference = torch.get_rng_state()
    for name in ("torch", *generators):
        value = rng.get(name)
        if not (isinstance(value, torch.Tensor) and value.dtype == reference.dtype and value.shape == reference.shape):
            got = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor) else repr(type(value).__name__)
            raise CheckpointError(f"checkpoint {path}: rng.{name} must be a CPU generator state "
                                  f"({reference.dtype} {tuple(reference.shape)}), got {got}")
    try:
        random.Random().setstate(rng.get("python"))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: rng.python is not a Python random state ({exc})") from exc


def load_into(path: Path, module: torch.nn.Module, tensors: dict[str, Any], what: str = "learner") -> None:
    """``module.load_state_dict(tensors)``, a mismatch (missing or unexpected key, wrong shape)
    reported in one line naming the checkpoint."""
    if not isinstance(tensors, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in tensors.items()):
        raise CheckpointError(f"checkpoint {path}: {what} must map parameter names to tensors")
    try:
        module.load_state_dict(tensors)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split("\n", 1)[-1].split())
        raise CheckpointError(f"checkpoint {path}: {what} does not fit this run's model: {detail}") from exc


def load_optimizer(path: Path, optimizer: torch.optim.Optimizer, state: Any) -> None:
    """``optimizer.load_state_dict(state)``; every per-parameter tensor must have its parameter's shape."""
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: optimizer state must be a state dict, got {type(state).__name__}")
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path}: optimizer state does not fit this run: {exc}") from exc
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape != p.shape:
                    raise CheckpointError(f"checkpoint {path}: optimizer state {key!r} has shape {tuple(value.shape)}, "
                                          f"its parameter {tuple(p.shape)}")
