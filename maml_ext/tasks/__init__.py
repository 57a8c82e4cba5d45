"""Task families: what a task plugin's factory returns, and the batch they sample.

A task family has ``loss`` ("mse" or "cross_entropy"), ``in_features``, ``out_features`` and
``sample(num_tasks, k_support, k_query, generator) -> TaskBatch``. Sampling draws only from the
given ``torch.Generator``, so a seed fixes a batch exactly (held-out evaluation sets are sampled
from a generator seeded once, training batches from a generator whose state is checkpointed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor


@dataclass
class TaskBatch:
    """T tasks of one meta-batch, stacked: x ``[T, K, ...]``; y ``[T, K, out]`` or ``[T, K]`` labels.

    ``info`` carries per-task descriptors (e.g. a sinusoid's amplitude and phase) for plots.
    """

    x_support: Tensor
    y_support: Tensor
    x_query: Tensor
    y_query: Tensor
    info: dict[str, Tensor] = field(default_factory=dict)

    @classmethod
    def split(cls, x: Tensor, y: Tensor, k_support: int, info: dict[str, Tensor]) -> TaskBatch:
        """The first ``k_support`` points of each task as support, the rest as query; each part
        contiguous once here rather than copied by every op call that reads it."""
        return cls(
            x[:, :k_support].contiguous(), y[:, :k_support].contiguous(),
            x[:, k_support:].contiguous(), y[:, k_support:].contiguous(), info,
        )

    @property
    def num_tasks(self) -> int:
        return self.x_support.shape[0]

    def slice(self, start: int, stop: int) -> TaskBatch:
        return TaskBatch(
            self.x_support[start:stop], self.y_support[start:stop],
            self.x_query[start:stop], self.y_query[start:stop],
            {k: v[start:stop] for k, v in self.info.items()},
        )


class TaskFamily(Protocol):
    loss: str
    in_features: int
    out_features: int

    def sample(
        self, num_tasks: int, k_support: int, k_query: int, generator: torch.Generator
    ) -> TaskBatch: ...
