"""Sampling T tasks × R rollouts with per-task policies in one vectorised loop over time.

The policy parameters are shared (the initialisation) or per task ``[T, ...]`` (adapted
policies); every time step is one batched policy call and one batched environment step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from maml_ext.train import progress

from . import policy
from .envs.base import TaskEnv


@dataclass
class Rollouts:
    """Episodes of T tasks × R rollouts, padded to the horizon H.

    obs ``[T, R, H, obs_dim]`` (the observation each action was taken in), actions
    ``[T, R, H, act_dim]`` (the policy's raw sample, before the environment clips it), rewards
    ``[T, R, H]`` and mask ``[T, R, H]`` (1.0 for the steps taken before the episode ended,
    0.0 for the padding after it).
    """

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor

    @property
    def num_tasks(self) -> int:
        return self.obs.shape[0]

    def returns(self) -> Tensor:
        """Undiscounted return of each rollout ``[T, R]`` (what the paper reports)."""
        return (self.rewards * self.mask).sum(-1)

    def flat(self) -> tuple[Tensor, Tensor, Tensor]:
        """obs ``[T, R·H, obs_dim]``, actions ``[T, R·H, act_dim]``, mask ``[T, R·H]``: the
        layout of the fused ops' per-task example dimension."""
        t = self.obs.shape[0]
        return (self.obs.reshape(t, -1, self.obs.shape[-1]), self.actions.reshape(t, -1, self.actions.shape[-1]),
                self.mask.reshape(t, -1))


@torch.no_grad()
def sample(
    env: TaskEnv,
    tasks: Tensor,
    params: policy.Params,
    rollouts: int,
    generator: torch.Generator,
    activation: str = "relu",
    shard: tuple[int, int] | None = None,
) -> Rollouts:
    """Run ``rollouts`` episodes of each task in ``tasks [T, task_dim]`` with the Gaussian policy
    ``params`` (shared, or per task with a leading T); the noise comes only from ``generator``.

    ``shard=(start, stop)``: run only tasks ``start:stop`` (per-task params then hold those
    tasks only), while drawing the action noise of all T tasks and keeping this slice, so the
    shards of a data-parallel job act exactly as one process does (start states drawn by the
    environment from ``generator`` are the exception: see ``maml_ext.rl.train``)."""
    if tasks.dim() != 2:
        raise ValueError(f"tasks must be [T, task_dim], got shape {tuple(tasks.shape)}")
    total = tasks.shape[0]
    start, stop = (0, total) if shard is None else shard
    if not 0 <= start < stop <= total:
        raise ValueError(f"shard must be (start, stop) with 0 <= start < stop <= {total}, got {shard}")
    tasks, t = tasks[start:stop], stop - start
    if params[0].dim() == 3 and params[0].shape[0] != t:
        raise ValueError(f"per-task params have {params[0].shape[0]} tasks, this shard has {t}")
    horizon, dtype = env.horizon, params[0].dtype
    obs = env.reset(tasks, rollouts, generator).to(dtype)
    log_std = params[-1].unsqueeze(-2) if params[-1].dim() == 2 else params[-1]
    buf_obs = torch.zeros(t, rollouts, horizon, env.obs_dim, dtype=dtype)
    buf_act = torch.zeros(t, rollouts, horizon, env.act_dim, dtype=dtype)
    buf_rew = torch.zeros(t, rollouts, horizon, dtype=dtype)
    buf_mask = torch.zeros(t, rollouts, horizon, dtype=dtype)
    live = torch.ones(t, rollouts, dtype=torch.bool)
    for h in range(horizon):
        progress.detail("rollouts: time step", h + 1, horizon)  # shown on the running progress bar, if any
        noise = torch.randn(total, rollouts, env.act_dim, generator=generator, dtype=dtype)[start:stop]
        action = policy.mean(params, obs, activation) + torch.exp(log_std) * noise
        step = env.step(action)
        buf_obs[:, :, h] = obs
        buf_act[:, :, h] = action
        buf_rew[:, :, h] = torch.where(live, step.reward.to(dtype), torch.zeros((), dtype=dtype))
        buf_mask[:, :, h] = live.to(dtype)
        live = ~step.done
        if not live.any():
            break
        obs = step.obs.to(dtype)
    return Rollouts(buf_obs, buf_act, buf_rew, buf_mask)
