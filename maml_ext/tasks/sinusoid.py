"""The paper's sinusoid regression family (§5.1): y = A·sin(x − φ)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import TaskBatch


class Sinusoid:
    """Amplitude A ~ U[0.1, 5], phase φ ~ U[0, π], inputs x ~ U[−5, 5] (the paper's ranges)."""

    loss = "mse"
    in_features = 1
    out_features = 1

    def __init__(
        self,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
    ) -> None:
        for key, (lo, hi) in (("amplitude", amplitude), ("phase", phase), ("x_range", x_range)):
            if not lo <= hi:
                raise ValueError(f"task.{key} must be [low, high] with low <= high, got {[lo, hi]}")
        self.amplitude = (float(amplitude[0]), float(amplitude[1]))
        self.phase = (float(phase[0]), float(phase[1]))
        self.x_range = (float(x_range[0]), float(x_range[1]))

    @staticmethod
    def _uniform(shape: tuple[int, ...], bounds: tuple[float, float], gen: torch.Generator) -> Tensor:
        lo, hi = bounds
        return torch.rand(shape, generator=gen) * (hi - lo) + lo

    @staticmethod
    def curve(info: dict[str, Tensor], x: Tensor) -> Tensor:
        """The true function of each task at x ``[T, N, 1]``."""
        return info["amplitude"][:, None, None] * torch.sin(x - info["phase"][:, None, None])

    def sample(
        self, num_tasks: int, k_support: int, k_query: int, generator: torch.Generator
    ) -> TaskBatch:
        info = {
            "amplitude": self._uniform((num_tasks,), self.amplitude, generator),
            "phase": self._uniform((num_tasks,), self.phase, generator),
        }
        x = self._uniform((num_tasks, k_support + k_query, 1), self.x_range, generator)
        y = self.curve(info, x)
        return TaskBatch.split(x, y, k_support, info)


def build(
    amplitude: tuple[float, float] = (0.1, 5.0),
    phase: tuple[float, float] = (0.0, math.pi),
    x_range: tuple[float, float] = (-5.0, 5.0),
) -> Sinusoid:
    """Entry point ``maml_ext.tasks: sinusoid``."""
    return Sinusoid(tuple(amplitude), tuple(phase), tuple(x_range))
