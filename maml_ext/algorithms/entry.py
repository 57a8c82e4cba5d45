"""What every learner's public entry points do first, whatever the learner (subclasses included,
see ``MetaLearner.__init_subclass__``) and whatever the path (fused op, with or without the
extension, or generic).

- ``meta_loss`` and ``evaluate_metrics`` check their batch (``MetaLearner.check_batch``) before any work.
- Under ``torch.inference_mode()`` they run as under ``torch.no_grad()``: the value, no graph.
  The inner loop needs autograd for its inner gradients, which inference mode switches off for
  good inside it (``torch.enable_grad()`` does not leave it), so the call leaves inference mode
  for its duration (``torch.no_grad()`` kept) and works on normal copies of inference tensors
  (autograd cannot save those for the inner backward).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

from maml_ext.tasks import TaskBatch

ENTRY_POINTS = ("meta_loss", "evaluate_metrics", "adapt", "sample_predictions")
BATCH_ENTRY_POINTS = ("meta_loss", "evaluate_metrics")  # first argument: a TaskBatch

F = TypeVar("F", bound=Callable[..., Any])


def entry_point(checks_batch: bool) -> Callable[[F], F]:
    """A method decorator: the batch check (``checks_batch``) and the inference-mode handling above."""

    def wrap(method: F) -> F:
        @functools.wraps(method)
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            if checks_batch:
                self.check_batch(args[0] if args else kwargs.get("batch"))
            if not torch.is_inference_mode_enabled():
                return method(self, *args, **kwargs)
            with torch.inference_mode(False), torch.no_grad():
                return method(self, *map(_normal, args), **{k: _normal(v) for k, v in kwargs.items()})

        run.entry_point = True
        return run  # type: ignore[return-value]

    return wrap


def _normal(value: Any) -> Any:
    """A normal copy of an inference tensor (or of a batch's), else the value itself."""
    if isinstance(value, Tensor):
        return value.clone() if value.is_inference() else value
    if isinstance(value, TaskBatch):
        tensors = {f.name: _normal(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name != "info"}
        return dataclasses.replace(value, **tensors, info={k: _normal(v) for k, v in value.info.items()})
    return value
