"""Batched task environments: the contract every RL task family implements.

An environment steps T tasks × R rollouts at once (one vectorised call per time step, never a
Python loop over tasks in the caller). Tasks are described by a tensor of task parameters (a goal
position, a target velocity, a direction), sampled only from the given generator so a seed fixes
them exactly, like the supervised task families.

Episodes that have ended stay ended: their state is frozen, further actions are ignored and they
report reward 0 and ``done=True`` until the next ``reset``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

import torch
from torch import Tensor


class Step(NamedTuple):
    """One vectorised time step: observations ``[T, R, obs_dim]``, rewards ``[T, R]`` and the
    ended flags ``[T, R]`` (bool) after the step."""

    obs: Tensor
    reward: Tensor
    done: Tensor


class TaskEnv(ABC):
    """T tasks × R rollouts of one task family, stepped together.

    Attributes:
        obs_dim, act_dim: sizes of one observation and one action.
        task_dim: size of one task's parameter vector.
        horizon: maximum episode length (steps).
        dtype: dtype of observations and rewards (actions are cast to it).
    """

    obs_dim: int
    act_dim: int
    task_dim: int
    horizon: int
    dtype: torch.dtype = torch.float32

    @abstractmethod
    def sample_tasks(self, num_tasks: int, generator: torch.Generator) -> Tensor:
        """Task parameters ``[num_tasks, task_dim]`` drawn only from ``generator``."""

    @abstractmethod
    def reset(self, tasks: Tensor, rollouts: int, generator: torch.Generator) -> Tensor:
        """Start ``rollouts`` episodes of each task in ``tasks [T, task_dim]``; returns the first
        observations ``[T, rollouts, obs_dim]`` (any start noise drawn from ``generator``)."""

    @abstractmethod
    def step(self, action: Tensor) -> Step:
        """Apply ``action [T, R, act_dim]`` (clipped to the action bounds by the environment)."""
