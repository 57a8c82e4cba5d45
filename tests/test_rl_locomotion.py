"""MuJoCo locomotion task families: rewards against the paper's formulas on an independent
simulation, equality with gymnasium's own HalfCheetah-v5 / Ant-v5, task sampling, ended
episodes and bad input."""

import numpy as np
import pytest
import torch

mujoco = pytest.importorskip("mujoco")
gym = pytest.importorskip("gymnasium")

from maml_ext.rl.envs import locomotion as L  # noqa: E402
from maml_ext.rl.envs.mujoco_sim import gymnasium_asset, load_model  # noqa: E402

FACTORIES = {
    "halfcheetah_vel": L.build_halfcheetah_vel,
    "halfcheetah_dir": L.build_halfcheetah_dir,
    "ant_vel": L.build_ant_vel,
    "ant_dir": L.build_ant_dir,
}
DT = 0.05  # 5 physics steps of 0.01 s


def make(name, dtype=torch.float64, **kwargs):
    env = FACTORIES[name](**kwargs)
    env.dtype = dtype
    return env


def paper_reward(name, v, goal, action, cfrc_ext):
    """The official code's per-step reward, written out term by term (action already clipped)."""
    a2 = float(np.sum(np.square(action)))
    if name.startswith("halfcheetah"):
        forward = -abs(v - goal) if name.endswith("vel") else goal * v
        return forward - 0.5 * 1e-1 * a2
    forward = -abs(v - goal) + 1.0 if name.endswith("vel") else goal * v
    contact = 0.5 * 1e-3 * float(np.sum(np.square(np.clip(cfrc_ext, -1, 1))))
    return forward - 0.5 * 1e-2 * a2 - contact + 0.05


@pytest.mark.parametrize("observation", ["rllab", "gymnasium"])
@pytest.mark.parametrize("name", list(FACTORIES))
def test_reward_and_observation_match_hand_computed_step(name, observation):
    env = make(name, observation=observation)
    g = torch.Generator().manual_seed(3)
    tasks = env.sample_tasks(2, g)
    env.reset(tasks, 2, g)
    start_qpos, start_qvel = env.sim.qpos.copy(), env.sim.qvel.copy()
    action = 1.5 * (2 * torch.rand(2, 2, env.act_dim, generator=g, dtype=torch.float64) - 1)
    step = env.step(action)

    # An independent simulation of each episode from the same start state.
    model = load_model(gymnasium_asset(env.robot.xml_file))
    ant = name.startswith("ant")
    torso = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "torso")
    for i in range(4):
        data = mujoco.MjData(model)
        data.qpos[:], data.qvel[:] = start_qpos[i], start_qvel[i]
        mujoco.mj_forward(model, data)
        a = np.clip(action.reshape(4, -1)[i].numpy(), -1, 1)
        data.ctrl[:] = a
        x0 = data.qpos[0]
        mujoco.mj_step(model, data, nstep=5)
        if observation == "rllab":
            mujoco.mj_forward(model, data)
        if ant:
            mujoco.mj_rnePostConstraint(model, data)
        v = (data.qpos[0] - x0) / DT
        goal = float(tasks[i // 2, 0])
        expected = paper_reward(name, v, goal, a, data.cfrc_ext)
        assert step.reward.reshape(-1)[i].item() == pytest.approx(expected, rel=1e-9, abs=1e-9)
        assert env.velocity.reshape(-1)[i].item() == pytest.approx(v, rel=1e-9, abs=1e-9)

        forces = np.clip(data.cfrc_ext, -1, 1)
        if observation == "gymnasium":
            parts = [data.qpos[2:] if ant else data.qpos[1:], data.qvel]
            parts += [forces[1:].ravel()] if ant else []
        elif ant:
            parts = [data.qpos, data.qvel, forces.ravel(), data.xmat[torso], data.subtree_com[torso]]
        else:
            parts = [data.qpos[1:], data.qvel, data.subtree_com[torso]]
        obs = np.concatenate(parts)
        assert env.obs_dim == obs.size
        np.testing.assert_allclose(step.obs.reshape(4, -1)[i].numpy(), obs, rtol=1e-9, atol=1e-9)


def test_cheetah_model_equals_gymnasiums_compiled_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = gymnasium_asset("half_cheetah.xml")
    ours, theirs = load_model(path), mujoco.MjModel.from_xml_path(str(path))
    for field in ("body_mass", "body_inertia", "body_subtreemass", "dof_invweight0", "actuator_acc0"):
        np.testing.assert_array_equal(getattr(ours, field), getattr(theirs, field))
    assert ours.body_subtreemass[0] == pytest.approx(14.0)


@pytest.mark.parametrize("robot", ["halfcheetah", "ant"])
def test_direction_flips_the_sign_of_the_velocity_term(robot):
    env = make(f"{robot}_dir")
    rewards, velocities = [], []
    for d in (1.0, -1.0):
        g = torch.Generator().manual_seed(7)
        env.reset(torch.tensor([[d]]), 3, g)
        action = 2 * torch.rand(1, 3, env.act_dim, generator=g, dtype=torch.float64) - 1
        step = env.step(action)
        rewards.append(step.reward)
        velocities.append(env.velocity)
    torch.testing.assert_close(velocities[0], velocities[1])  # same start, same action
    assert velocities[0].abs().min() > 1e-3
    torch.testing.assert_close(rewards[0] - rewards[1], 2 * velocities[0])


def gym_reference(name, qpos, qvel, actions):
    """Per-episode loop over gymnasium's own envs from the same start states: observations
    ``[S+1, N, obs]`` and, per episode and step, (x-velocity, sum of squared clipped contact forces)."""
    env_id = "HalfCheetah-v5" if name.startswith("halfcheetah") else "Ant-v5"
    obs_all, terms_all = [], []
    for i in range(qpos.shape[0]):
        env = gym.make(env_id).unwrapped
        env.reset(seed=0)
        env.set_state(qpos[i], qvel[i])
        obs, terms = [env._get_obs()], []
        for a in actions[:, i]:
            x0 = env.data.qpos[0]
            ob, _, _, _, _ = env.step(a)
            contact = float(np.sum(np.square(np.clip(env.data.cfrc_ext, -1, 1))))
            terms.append(((env.data.qpos[0] - x0) / env.dt, contact))
            obs.append(ob)
        env.close()
        obs_all.append(np.stack(obs))
        terms_all.append(terms)
    return np.stack(obs_all, axis=1), terms_all


@pytest.mark.parametrize("name", list(FACTORIES))
def test_batched_env_equals_per_episode_gymnasium_loop(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # gymnasium's cheetah model warns into ./MUJOCO_LOG.TXT
    env = make(name, observation="gymnasium")
    g = torch.Generator().manual_seed(11)
    tasks = env.sample_tasks(2, g)
    obs0 = env.reset(tasks, 2, g)
    qpos, qvel = env.sim.qpos.copy(), env.sim.qvel.copy()
    steps = 4
    actions = (2 * torch.rand(steps, 2, 2, env.act_dim, generator=g, dtype=torch.float64) - 1)
    ours_obs, ours_rew = [obs0.reshape(4, -1)], []
    for s in range(steps):
        step = env.step(actions[s])
        ours_obs.append(step.obs.reshape(4, -1))
        ours_rew.append(step.reward.reshape(4))
    ref_obs, ref = gym_reference(name, qpos, qvel, actions.reshape(steps, 4, -1).numpy())
    np.testing.assert_allclose(torch.stack(ours_obs).numpy(), ref_obs, rtol=1e-9, atol=1e-9)
    for i in range(4):
        goal = float(tasks[i // 2, 0])
        for s in range(steps):
            v, contact = ref[i][s]
            a = actions[s].reshape(4, -1)[i].numpy()
            expected = paper_reward(name, v, goal, a, np.zeros(1))
            if name.startswith("ant"):
                expected -= 0.5 * 1e-3 * contact
            assert ours_rew[s][i].item() == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("name,high", [("halfcheetah_vel", 2.0), ("ant_vel", 3.0)])
def test_velocity_task_sampling_range_and_reproducibility(name, high):
    env = FACTORIES[name]()
    tasks = env.sample_tasks(2000, torch.Generator().manual_seed(0))
    assert tasks.shape == (2000, 1) and tasks.dtype == torch.float32
    assert tasks.min() >= 0.0 and tasks.max() <= high
    assert tasks.min() < 0.05 * high and tasks.max() > 0.95 * high
    assert abs(tasks.mean().item() - high / 2) < 0.05 * high
    again = env.sample_tasks(2000, torch.Generator().manual_seed(0))
    assert torch.equal(tasks, again)
    assert not torch.equal(tasks, env.sample_tasks(2000, torch.Generator().manual_seed(1)))
    narrow = FACTORIES[name](min_velocity=0.5, max_velocity=0.6)
    t = narrow.sample_tasks(100, torch.Generator().manual_seed(0))
    assert t.min() >= 0.5 and t.max() <= 0.6


@pytest.mark.parametrize("name", ["halfcheetah_dir", "ant_dir"])
def test_direction_task_sampling(name):
    env = FACTORIES[name]()
    tasks = env.sample_tasks(2000, torch.Generator().manual_seed(0))
    assert set(tasks.flatten().tolist()) == {-1.0, 1.0}
    assert 900 < int((tasks > 0).sum()) < 1100  # p = 1/2; 2000 draws: ±4.5 sigma
    assert torch.equal(tasks, env.sample_tasks(2000, torch.Generator().manual_seed(0)))


def test_seeded_resets_are_reproducible_and_noisy():
    env = L.build_halfcheetah_vel()
    tasks = torch.tensor([[1.0], [0.5]])
    a = env.reset(tasks, 3, torch.Generator().manual_seed(5))
    b = env.reset(tasks, 3, torch.Generator().manual_seed(5))
    c = env.reset(tasks, 3, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a[0, 0] != a[0, 1]).any()  # every episode has its own start noise
    # the noise is gymnasium's: qpos within ±0.1 of the model's rest pose
    env.reset(tasks, 50, torch.Generator().manual_seed(5))
    dev = env.sim.qpos - env.sim.model.qpos0
    assert np.abs(dev).max() <= 0.1 and np.abs(dev).max() > 0.09
    assert 0.08 < env.sim.qvel.std() < 0.12


def test_cheetah_episodes_end_at_the_horizon_and_stay_frozen():
    env = L.build_halfcheetah_dir(horizon=3)
    g = torch.Generator().manual_seed(0)
    env.reset(env.sample_tasks(2, g), 2, g)
    for t in range(3):
        step = env.step(torch.ones(2, 2, env.act_dim))
        assert bool(step.done.all()) == (t == 2)
    after = env.step(torch.ones(2, 2, env.act_dim))
    assert after.done.all() and (after.reward == 0).all()
    torch.testing.assert_close(after.obs, step.obs, rtol=0, atol=0)


def test_unhealthy_ant_ends_and_stays_frozen_while_others_run():
    env = make("ant_dir", observation="rllab")
    qpos = torch.as_tensor(env.sim.model.qpos0).repeat(1, 3, 1)
    qpos[0, 1, 2] = 1.5  # torso above the healthy range [0.2, 1.0]
    qvel = torch.zeros(1, 3, env.sim.nv, dtype=torch.float64)
    env.reset_state(torch.tensor([[1.0]]), qpos, qvel)
    action = 0.3 * torch.ones(1, 3, env.act_dim)
    first = env.step(action)
    assert first.done.tolist() == [[False, True, False]]
    assert first.reward[0, 1] != 0  # the ending step is still rewarded
    prev = first
    for _ in range(3):
        step = env.step(action)
        assert step.done.tolist() == [[False, True, False]]
        assert step.reward[0, 1] == 0 and step.reward[0, 0] != 0
        assert torch.equal(step.obs[0, 1], first.obs[0, 1])
        assert not torch.equal(step.obs[0, 0], prev.obs[0, 0])
        prev = step


def test_bad_input_raises_clear_errors():
    env = L.build_halfcheetah_vel()
    g = torch.Generator().manual_seed(0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(torch.zeros(1, 1, 6))
    with pytest.raises(ValueError, match="tasks"):
        env.reset(torch.zeros(3), 2, g)
    with pytest.raises(ValueError, match="tasks"):
        env.reset(torch.zeros(3, 2), 2, g)
    with pytest.raises(ValueError, match="tasks must be finite"):
        env.reset(torch.tensor([[float("nan")]]), 2, g)
    with pytest.raises(ValueError, match="rollouts"):
        env.reset(torch.zeros(3, 1), 0, g)
    with pytest.raises(TypeError, match="generator"):
        env.reset(torch.zeros(3, 1), 1, 0)
    with pytest.raises(ValueError, match="num_tasks"):
        env.sample_tasks(0, g)
    env.reset(torch.zeros(3, 1), 2, g)
    with pytest.raises(ValueError, match=r"action must be a tensor \[3, 2, 6\]"):
        env.step(torch.zeros(3, 2, 5))
    with pytest.raises(ValueError, match="action must be finite"):
        env.step(torch.full((3, 2, 6), float("nan")))
    with pytest.raises(ValueError, match="direction tasks must be -1 or \\+1"):
        L.build_halfcheetah_dir().reset(torch.tensor([[0.5]]), 1, g)
    with pytest.raises(ValueError, match="observation"):
        L.build_ant_vel(observation="pixels")
    with pytest.raises(ValueError, match="horizon"):
        L.build_ant_dir(horizon=0)
    with pytest.raises(ValueError, match="velocity_range"):
        L.build_halfcheetah_vel(min_velocity=2.0, max_velocity=1.0)
    with pytest.raises(ValueError, match="qpos"):
        env.reset_state(torch.zeros(1, 1), torch.zeros(1, 2, 3), torch.zeros(1, 2, 9))


def test_actions_are_clipped_to_the_control_range():
    env = make("halfcheetah_vel")
    rewards = []
    for scale in (1.0, 5.0):
        g = torch.Generator().manual_seed(2)
        env.reset(torch.tensor([[1.0]]), 2, g)
        rewards.append(env.step(scale * torch.tensor([1.0, -1.0]).repeat(1, 2, 3)).reward)
    torch.testing.assert_close(rewards[0], rewards[1])


@pytest.mark.parametrize("name,obs_dim", [("halfcheetah_vel", 17), ("halfcheetah_dir", 17), ("ant_vel", 105), ("ant_dir", 105)])
def test_task_plugins_build_the_families_with_config_options(name, obs_dim):
    from maml_ext import plugins

    env = plugins.build_task(name, horizon=50, observation="gymnasium")
    assert isinstance(env, L.LocomotionEnv) and env.horizon == 50 and env.obs_dim == obs_dim
    assert env.task == ("velocity" if name.endswith("vel") else "direction")
    assert FACTORIES[name]().obs_dim == {17: 20, 105: 125}[obs_dim]  # rllab's observation
