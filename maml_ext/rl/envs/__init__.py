"""Batched RL task environments (task families whose factory returns a :class:`TaskEnv`)."""

from .base import Step, TaskEnv
from .point_nav import PointNav, build_point_nav

__all__ = ["PointNav", "Step", "TaskEnv", "build_point_nav"]
