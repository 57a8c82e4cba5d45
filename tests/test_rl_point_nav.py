"""2D navigation: dynamics and rewards on hand-computed steps, frozen ended episodes, batched ==
per-environment loop, and the rollout sampler's masks."""

from __future__ import annotations

import math

import pytest
import torch

from maml_ext import plugins
from maml_ext.rl.envs import PointNav, TaskEnv
from maml_ext.rl.policy import GaussianMLPPolicy
from maml_ext.rl.rollouts import sample


def test_hand_computed_steps():
    env = PointNav(dtype=torch.float64)
    goal = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    obs = env.reset(goal, 1, torch.Generator())
    assert obs.tolist() == [[[0.0, 0.0]]]
    # velocity (0.05, -0.3) is clipped to (0.05, -0.1)
    step = env.step(torch.tensor([[[0.05, -0.3]]], dtype=torch.float64))
    assert step.obs[0, 0].tolist() == pytest.approx([0.05, -0.1])
    assert step.reward.item() == pytest.approx(-math.hypot(0.25, 0.1))
    assert not step.done.item()
    step = env.step(torch.tensor([[[1.0, 1.0]]], dtype=torch.float64))
    assert step.obs[0, 0].tolist() == pytest.approx([0.15, 0.0])
    assert step.reward.item() == pytest.approx(-math.hypot(0.15, 0.2))


def test_episode_ends_at_goal_and_stays_ended():
    env = PointNav(dtype=torch.float64)
    goal = torch.tensor([[0.1, 0.095]], dtype=torch.float64)
    env.reset(goal, 2, torch.Generator())
    # rollout 0 lands within 0.01 of the goal in both coordinates, rollout 1 does not
    step = env.step(torch.tensor([[[0.1, 0.1], [0.1, 0.0]]], dtype=torch.float64))
    assert step.done.tolist() == [[True, False]]
    assert step.reward[0, 0].item() == pytest.approx(-0.005)
    step = env.step(torch.tensor([[[0.1, 0.1], [0.0, 0.1]]], dtype=torch.float64))
    assert step.done.tolist() == [[True, True]]
    assert step.obs[0, 0].tolist() == pytest.approx([0.1, 0.1])  # frozen
    assert step.reward[0, 0].item() == 0.0
    assert step.reward[0, 1].item() == pytest.approx(-0.005)
    step = env.step(torch.ones(1, 2, 2, dtype=torch.float64))
    assert step.reward.tolist() == [[0.0, 0.0]] and step.done.all()


def test_action_scale_maps_unit_actions_to_velocity():
    env = PointNav(action_scale=0.1, dtype=torch.float64)
    env.reset(torch.zeros(1, 2, dtype=torch.float64), 1)
    assert env.step(torch.tensor([[[0.5, -3.0]]], dtype=torch.float64)).obs[0, 0].tolist() == pytest.approx([0.05, -0.1])


def test_tasks_are_seeded_uniform_goals():
    env = PointNav()
    a = env.sample_tasks(2000, torch.Generator().manual_seed(0))
    b = env.sample_tasks(2000, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (2000, 2)
    assert a.min() >= -0.5 and a.max() <= 0.5
    assert a.mean(0).abs().max() < 0.03 and (a.var(0) - 1 / 12).abs().max() < 0.01


def test_batched_equals_per_env_loop():
    gen = torch.Generator().manual_seed(1)
    env = PointNav(horizon=30)
    goals = env.sample_tasks(3, gen)
    actions = 0.15 * torch.randn(30, 3, 4, 2, generator=gen)
    env.reset(goals, 4)
    batched = [env.step(a) for a in actions]
    for t in range(3):
        for r in range(4):
            single = PointNav(horizon=30)
            single.reset(goals[t:t + 1], 1)
            for h in range(30):
                s = single.step(actions[h, t:t + 1, r:r + 1])
                assert torch.equal(s.obs[0, 0], batched[h].obs[t, r])
                assert torch.equal(s.reward[0, 0], batched[h].reward[t, r])
                assert torch.equal(s.done[0, 0], batched[h].done[t, r])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="horizon"):
        PointNav(horizon=0)
    with pytest.raises(ValueError, match="action_scale"):
        PointNav(action_scale=-1.0)
    env = PointNav()
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(torch.zeros(1, 1, 2))
    with pytest.raises(ValueError, match="tasks"):
        env.reset(torch.zeros(3), 2)
    env.reset(torch.zeros(2, 2), 3)
    with pytest.raises(ValueError, match="action"):
        env.step(torch.zeros(2, 2, 2))


def test_plugin_entry_point_builds_a_task_env():
    env = plugins.build_task("point_nav", action_scale=0.1)
    assert isinstance(env, TaskEnv) and env.horizon == 100 and env.action_scale == 0.1


def test_sampler_masks_steps_after_the_goal():
    env = PointNav(horizon=20, dtype=torch.float64, goal_tolerance=0.05)
    pol = GaussianMLPPolicy(2, 2, hidden=(4,)).double()
    with torch.no_grad():  # a policy that always moves by (0.1, 0.1)
        for p in pol.parameters():
            p.zero_()
        pol.layers[-1].bias.fill_(0.1)
        pol.log_std.fill_(-30.0)
    goals = torch.tensor([[0.3, 0.3], [-0.4, 0.4]], dtype=torch.float64)
    batch = sample(env, goals, pol.params(), 2, torch.Generator().manual_seed(0))
    assert batch.obs.shape == (2, 2, 20, 2)
    assert batch.mask[0].sum(-1).tolist() == [3.0, 3.0]  # reaches (0.3, 0.3) after 3 steps
    assert batch.mask[1].sum(-1).tolist() == [20.0, 20.0]
    assert batch.obs[0, 0, 2].tolist() == pytest.approx([0.2, 0.2])
    expected = -sum(math.hypot(0.3 - 0.1 * k, 0.3 - 0.1 * k) for k in (1, 2, 3))
    assert batch.returns()[0].tolist() == pytest.approx([expected, expected])
    assert (batch.rewards[0, :, 3:] == 0).all()
