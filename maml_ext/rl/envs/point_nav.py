"""2D point navigation (MAML paper §5.3 and the official ``point_env_randgoal.py``).

A point starts at the origin and moves by its (clipped) velocity command each step; a task is a
goal drawn from U[-0.5, 0.5]². The observation is the position, the reward after each step the
negative Euclidean distance to the goal (the official code; the paper's text says "squared"), and
an episode ends after ``horizon`` steps or as soon as the point is within ``goal_tolerance`` of
the goal in both coordinates (the official code's test ``|dx| < 0.01 and |dy| < 0.01``).

``action_scale`` multiplies the policy's action before clipping. The official runs wrap the
environment in rllab's ``normalize(env)``, which maps a policy action in [-1, 1] to the
velocity range [-0.1, 0.1], i.e. ``action_scale = 0.1``; the packaged config uses that so the
initial policy's unit standard deviation means a 0.1 velocity spread, as in the paper's runs.
The default 1.0 is the bare definition (the action is the velocity).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Step, TaskEnv


class PointNav(TaskEnv):
    """T goals × R rollouts of the 2D point, stepped together in torch."""

    obs_dim = 2
    act_dim = 2
    task_dim = 2

    def __init__(
        self,
        horizon: int = 100,
        goal_range: float = 0.5,
        max_speed: float = 0.1,
        goal_tolerance: float = 0.01,
        action_scale: float = 1.0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        for name, value in (("goal_range", goal_range), ("max_speed", max_speed),
                            ("goal_tolerance", goal_tolerance), ("action_scale", action_scale)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        if not isinstance(horizon, int) or isinstance(horizon, bool) or horizon < 1:
            raise ValueError(f"horizon must be an integer >= 1, got {horizon!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        self.horizon = horizon
        self.goal_range = float(goal_range)
        self.max_speed = float(max_speed)
        self.goal_tolerance = float(goal_tolerance)
        self.action_scale = float(action_scale)
        self.dtype = dtype
        self._pos: Tensor | None = None
        self._goal: Tensor | None = None
        self._done: Tensor | None = None

    def sample_tasks(self, num_tasks: int, generator: torch.Generator) -> Tensor:
        if not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be an integer >= 1, got {num_tasks!r}")
        u = torch.rand(num_tasks, 2, generator=generator, dtype=self.dtype)
        return (2 * u - 1) * self.goal_range

    def reset(self, tasks: Tensor, rollouts: int, generator: torch.Generator | None = None) -> Tensor:
        if tasks.dim() != 2 or tasks.shape[1] != self.task_dim:
            raise ValueError(f"tasks must be [T, {self.task_dim}], got shape {tuple(tasks.shape)}")
        if not isinstance(rollouts, int) or rollouts < 1:
            raise ValueError(f"rollouts must be an integer >= 1, got {rollouts!r}")
        t = tasks.shape[0]
        self._goal = tasks.to(self.dtype).unsqueeze(1).expand(t, rollouts, 2)
        self._pos = torch.zeros(t, rollouts, 2, dtype=self.dtype)
        self._done = torch.zeros(t, rollouts, dtype=torch.bool)
        return self._pos.clone()

    def step(self, action: Tensor) -> Step:
        if self._pos is None or self._goal is None or self._done is None:
            raise RuntimeError("PointNav.step called before reset")
        if action.shape != self._pos.shape:
            raise ValueError(f"action must be {list(self._pos.shape)}, got {list(action.shape)}")
        velocity = (action.to(self.dtype) * self.action_scale).clamp(-self.max_speed, self.max_speed)
        live = ~self._done
        self._pos = torch.where(live.unsqueeze(-1), self._pos + velocity, self._pos)
        delta = self._pos - self._goal
        reward = torch.where(live, -delta.norm(dim=-1), torch.zeros((), dtype=self.dtype))
        self._done = self._done | (delta.abs() < self.goal_tolerance).all(dim=-1)
        return Step(self._pos.clone(), reward, self._done.clone())


def build_point_nav(
    horizon: int = 100,
    goal_range: float = 0.5,
    max_speed: float = 0.1,
    goal_tolerance: float = 0.01,
    action_scale: float = 1.0,
) -> PointNav:
    """Entry point ``maml_ext.tasks: point_nav``."""
    return PointNav(horizon, goal_range, max_speed, goal_tolerance, action_scale)
