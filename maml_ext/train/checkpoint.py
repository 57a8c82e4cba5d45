"""Checkpoints written atomically; unreadable ones are reported, never silently replaced."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

REQUIRED = ("iteration", "config", "learner", "optimizer", "rng")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or incomplete."""


def save(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``: a crash
    mid-write leaves the previous checkpoint intact."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (pickle, zip, EOF, RuntimeError)
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable: {exc}") from exc
    missing = [k for k in REQUIRED if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete (missing {missing})")
    return state
