"""MuJoCo locomotion task families of the MAML paper (Finn et al. 2017, appendix A.2).

Four families, on gymnasium's HalfCheetah-v5 / Ant-v5 MuJoCo models (frame skip 5, dt 0.05 s),
horizon 200, task parameter ``[T, 1]``:

=====================  ===================  ==========================================================
family                 task                 reward per step (``v``: forward velocity, ``a``: action)
=====================  ===================  ==========================================================
``halfcheetah_vel``    v* ~ U[0, 2]         ``-|v - v*| - 0.05 ||a||^2``
``halfcheetah_dir``    d = ±1 (p = 1/2)     ``d v - 0.05 ||a||^2``
``ant_vel``            v* ~ U[0, 3]         ``-|v - v*| + 1 - 0.005 ||a||^2 - 5e-4 ||clip(F, -1, 1)||^2 + 0.05``
``ant_dir``            d = ±1 (p = 1/2)     ``d v - 0.005 ||a||^2 - 5e-4 ||clip(F, -1, 1)||^2 + 0.05``
=====================  ===================  ==========================================================

These are the terms of the official code (cbfinn/maml_rl ``half_cheetah_env_rand(_direc).py``,
``ant_env_rand(_direc).py``): control cost ``0.5 * 1e-1`` (cheetah) and ``0.5 * 1e-2`` (ant, on
``a / ((high - low) / 2)``, which is ``a`` for the ±1 control range), contact cost ``0.5 * 1e-3``
on the clipped external contact forces ``F = cfrc_ext`` of every body, survive reward 0.05, and the
+1 the velocity Ant gets "to prevent the ant from ending the episode" (the direction Ant has none).
The Ant's episode ends (contract: frozen, reward 0, ``done``) when its state is not finite or its
torso height leaves [0.2, 1.0]; the cheetah's episodes run to the horizon. Actions are clipped to
the ±1 control range before both the simulation and the control cost.

Deliberate differences from rllab (each documented where it is made):

* ``v`` is the torso's average x-velocity over the step, ``Δx / dt`` of the root joint (gymnasium
  v5's and pytorch-maml-rl's definition) instead of rllab's instantaneous subtree-COM velocity
  at the end of the step. Over an episode, ``Σ v dt`` telescopes to the distance travelled, so
  the direction tasks' return is exactly forward progress.
* Start states use gymnasium's reset noise (qpos + U[-0.1, 0.1], qvel + 0.1 N(0, 1)), drawn from
  the generator given to :meth:`LocomotionEnv.reset`.
* Direction tasks are d = ±1 with probability 1/2; the official code samples U[0, 2] (U[0, 3])
  and goes backward below 1 (1.5), which is the same distribution.

Observations (``observation=``):

* ``"rllab"`` (default, the official MAML-RL observation): the cheetah sees qpos without x,
  qvel and the torso subtree's centre of mass (20 values; the COM's x coordinate does carry the
  absolute position); the Ant sees the full qpos (x and y included), qvel, clipped ``cfrc_ext``
  of all 14 bodies, the torso's orientation matrix and its subtree COM (125 values). Derived
  quantities are those of the state after the step, as after rllab's ``model.forward()``: the
  cheetah recomputes its body positions (a few % more time), the Ant runs a whole ``mj_forward``
  (about 15-20% more). It is the default because the paper's numbers were obtained with it.
* ``"gymnasium"``: exactly HalfCheetah-v5's (qpos without x, qvel: 17) and Ant-v5's (qpos
  without x, y, qvel, clipped ``cfrc_ext`` of the 13 non-world bodies: 105) default observations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from maml_ext.rl.envs.base import Step, TaskEnv
from maml_ext.rl.envs.mujoco_sim import MujocoBatch

OBSERVATIONS = ("rllab", "gymnasium")
TASKS = ("velocity", "direction")


@dataclass(frozen=True)
class Robot:
    """One robot's model and the robot-specific reward terms of the official code."""

    name: str
    xml_file: str
    ctrl_cost: float  # coefficient of ||a / scale||^2
    contact_cost: float  # coefficient of ||clip(cfrc_ext, -1, 1)||^2; 0: no contact forces needed
    survive_reward: float
    velocity_bonus: float  # added to the goal-velocity reward only (ant_env_rand.py's +1)
    healthy_z: tuple[float, float] | None  # torso height range; leaving it ends the episode
    gym_skip_qpos: int  # leading qpos entries (x, or x and y) that gymnasium's observation omits
    rllab_skip_qpos: int  # ... and that rllab's observation omits
    rllab_xmat: bool  # rllab's observation includes the torso orientation matrix


HALF_CHEETAH = Robot("halfcheetah", "half_cheetah.xml", 0.05, 0.0, 0.0, 0.0, None, 1, 1, False)
ANT = Robot("ant", "ant.xml", 0.005, 0.0005, 0.05, 1.0, (0.2, 1.0), 2, 0, True)

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
FRAME_SKIP = 5  # gymnasium v5 and rllab both: 5 physics steps of 0.01 s per env step


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_float(name: str, value: object, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return float(value)


def _check_generator(generator: object) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return generator


class LocomotionEnv(TaskEnv):
    """T tasks × R rollouts of one robot and task kind (``"velocity"`` or ``"direction"``), each
    episode its own MuJoCo simulation (see :class:`~maml_ext.rl.envs.mujoco_sim.MujocoBatch`)."""

    task_dim = 1

    def __init__(
        self,
        robot: Robot,
        task: str,
        *,
        horizon: int = 200,
        observation: str = "rllab",
        reset_noise_scale: float = 0.1,
        velocity_range: tuple[float, float] = (0.0, 2.0),
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if observation not in OBSERVATIONS:
            raise ValueError(f"observation must be one of {OBSERVATIONS}, got {observation!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        if len(velocity_range) != 2:
            raise ValueError(f"velocity_range must be (low, high), got {velocity_range!r}")
        low = _check_float("velocity_range[0]", velocity_range[0])
        high = _check_float("velocity_range[1]", velocity_range[1])
        if low > high:
            raise ValueError(f"velocity_range must have low <= high, got {velocity_range!r}")
        self.robot = robot
        self.task = task
        self.horizon = _check_int("horizon", horizon, 1)
        self.observation = observation
        self.reset_noise_scale = _check_float("reset_noise_scale", reset_noise_scale, 0.0)
        self.velocity_range = (low, high)
        self.dtype = dtype
        self.sim = MujocoBatch(
            robot.xml_file, FRAME_SKIP, contact_forces=robot.contact_cost > 0,
            # rllab's observation is of the final state: the cheetah's needs only the COM, the
            # Ant's contact forces need the whole forward pass.
            after_step="none" if observation == "gymnasium" else "forward" if robot.contact_cost else "positions",
        )
        self.dt = self.sim.dt
        self.act_dim = self.sim.nu
        self._torso = self.sim.body_id("torso")
        self._scale = (self.sim.ctrl_high - self.sim.ctrl_low) / 2
        self._init_qpos = self.sim.model.qpos0.copy()
        self._init_qvel = np.zeros(self.sim.nv)
        nbody, nq, nv = self.sim.model.nbody, self.sim.nq, self.sim.nv
        contact = 6 * nbody if robot.contact_cost > 0 else 0
        if observation == "gymnasium":
            self.obs_dim = nq - robot.gym_skip_qpos + nv + (contact - 6 if contact else 0)
        else:
            self.obs_dim = nq - robot.rllab_skip_qpos + nv + contact + 9 * robot.rllab_xmat + 3
        self._shape: tuple[int, int] | None = None
        self.velocity: Tensor | None = None  # last step's forward velocity [T, R] (for logging)

    # ---------------------------------------------------------------- tasks and resets
    def sample_tasks(self, num_tasks: int, generator: torch.Generator) -> Tensor:
        """Goal velocities ``U[low, high]`` or directions ±1 (probability 1/2 each), ``[T, 1]``."""
        _check_int("num_tasks", num_tasks, 1)
        _check_generator(generator)
        if self.task == "velocity":
            low, high = self.velocity_range
            u = torch.rand(num_tasks, 1, generator=generator, dtype=torch.float64)
            return (low + (high - low) * u).to(self.dtype)
        coin = torch.randint(0, 2, (num_tasks, 1), generator=generator)
        return (2 * coin - 1).to(self.dtype)

    def _check_tasks(self, tasks: Tensor) -> np.ndarray:
        if not isinstance(tasks, Tensor) or tasks.dim() != 2 or tasks.shape[1] != 1 or tasks.shape[0] < 1:
            shape = tuple(tasks.shape) if isinstance(tasks, Tensor) else type(tasks).__name__
            raise ValueError(f"tasks must be a tensor [T >= 1, 1], got {shape}")
        goal = tasks.detach().to("cpu", torch.float64).numpy()[:, 0]
        if not np.isfinite(goal).all():
            raise ValueError("tasks must be finite")
        if self.task == "direction" and not np.isin(goal, (-1.0, 1.0)).all():
            raise ValueError(f"direction tasks must be -1 or +1, got {np.unique(goal).tolist()}")
        return goal

    def reset(self, tasks: Tensor, rollouts: int, generator: torch.Generator) -> Tensor:
        goal = self._check_tasks(tasks)
        _check_int("rollouts", rollouts, 1)
        _check_generator(generator)
        n = goal.shape[0] * rollouts
        nq, nv, s = self.sim.nq, self.sim.nv, self.reset_noise_scale
        # gymnasium v5's reset_model noise, drawn from the caller's generator.
        u = torch.rand(n, nq, generator=generator, dtype=torch.float64).numpy()
        z = torch.randn(n, nv, generator=generator, dtype=torch.float64).numpy()
        return self._start(goal, rollouts, self._init_qpos + s * (2 * u - 1), self._init_qvel + s * z)

    def reset_state(self, tasks: Tensor, qpos: Tensor, qvel: Tensor) -> Tensor:
        """Start episodes from given joint positions ``[T, R, nq]`` and velocities ``[T, R, nv]``
        instead of the noisy default start (for tests and for replaying recorded starts)."""
        goal = self._check_tasks(tasks)
        nq, nv = self.sim.nq, self.sim.nv
        for name, value, size in (("qpos", qpos, nq), ("qvel", qvel, nv)):
            if not isinstance(value, Tensor) or value.dim() != 3 or value.shape[0] != goal.shape[0] \
                    or value.shape[1] < 1 or value.shape[2] != size:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"{name} must be a tensor [T={goal.shape[0]}, R >= 1, {size}], got {got}")
        if qpos.shape[1] != qvel.shape[1]:
            raise ValueError(f"qpos and qvel must have the same R, got {qpos.shape[1]} and {qvel.shape[1]}")
        p = qpos.detach().to("cpu", torch.float64).reshape(-1, nq).numpy()
        v = qvel.detach().to("cpu", torch.float64).reshape(-1, nv).numpy()
        if not (np.isfinite(p).all() and np.isfinite(v).all()):
            raise ValueError("qpos and qvel must be finite")
        return self._start(goal, qpos.shape[1], p, v)

    def _start(self, goal: np.ndarray, rollouts: int, qpos: np.ndarray, qvel: np.ndarray) -> Tensor:
        self.sim.reset(qpos, qvel)
        self._shape = (goal.shape[0], rollouts)
        self._goal = np.repeat(goal, rollouts)
        self._done = np.zeros(goal.shape[0] * rollouts, dtype=bool)
        self._t = 0
        self.velocity = None
        return self._observe()

    # ---------------------------------------------------------------- stepping
    def _check_action(self, action: Tensor) -> np.ndarray:
        if self._shape is None:
            raise RuntimeError("call reset(tasks, rollouts, generator) before step()")
        expected = (*self._shape, self.act_dim)
        if not isinstance(action, Tensor) or tuple(action.shape) != expected:
            got = tuple(action.shape) if isinstance(action, Tensor) else type(action).__name__
            raise ValueError(f"action must be a tensor {list(expected)} ([T, R, act_dim]), got {got}")
        a = action.detach().to("cpu", torch.float64).reshape(-1, self.act_dim).numpy()
        if not np.isfinite(a).all():
            raise ValueError("action must be finite (got NaN or inf)")
        return np.clip(a, self.sim.ctrl_low, self.sim.ctrl_high)

    def step(self, action: Tensor) -> Step:
        a = self._check_action(action)
        sim, robot = self.sim, self.robot
        active = np.flatnonzero(~self._done)
        x_before = sim.qpos[:, 0].copy()
        sim.step(a, active)
        velocity = (sim.qpos[:, 0] - x_before) / self.dt  # 0 for frozen episodes
        if self.task == "velocity":
            reward = -np.abs(velocity - self._goal) + robot.velocity_bonus
        else:
            reward = self._goal * velocity
        reward -= robot.ctrl_cost * np.square(a / self._scale).sum(axis=1)
        if robot.contact_cost:
            forces = np.clip(sim.cfrc_ext, -1.0, 1.0)
            reward -= robot.contact_cost * np.square(forces).reshape(len(a), -1).sum(axis=1)
        reward += robot.survive_reward
        reward[self._done] = 0.0
        if robot.healthy_z is not None:
            z = sim.qpos[:, 2]
            finite = np.isfinite(sim.qpos).all(axis=1) & np.isfinite(sim.qvel).all(axis=1)
            healthy = finite & (z >= robot.healthy_z[0]) & (z <= robot.healthy_z[1])
            self._done |= ~healthy
        self._t += 1
        if self._t >= self.horizon:
            self._done[:] = True
        shape = self._shape
        self.velocity = self._tensor(velocity, shape)
        return Step(self._observe(), self._tensor(reward, shape), torch.from_numpy(self._done.reshape(shape).copy()))

    def _tensor(self, array: np.ndarray, shape: tuple[int, ...]) -> Tensor:
        # numpy's cast is several times cheaper than torch's .to() on these small arrays.
        np_dtype = _NUMPY_DTYPES.get(self.dtype)
        if np_dtype is None:
            return torch.from_numpy(array).to(self.dtype).reshape(shape)
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np_dtype).reshape(shape))

    def _observe(self) -> Tensor:
        sim, robot = self.sim, self.robot
        n = sim.size
        if self.observation == "gymnasium":
            parts = [sim.qpos[:, robot.gym_skip_qpos:], sim.qvel]
            if robot.contact_cost:
                parts.append(np.clip(sim.cfrc_ext[:, 1:], -1.0, 1.0).reshape(n, -1))
        else:
            parts = [sim.qpos[:, robot.rllab_skip_qpos:], sim.qvel]
            if robot.contact_cost:
                parts.append(np.clip(sim.cfrc_ext, -1.0, 1.0).reshape(n, -1))
            if robot.rllab_xmat:
                parts.append(sim.body_xmat(self._torso))
            parts.append(sim.body_com(self._torso))
        obs = np.concatenate(parts, axis=1)
        assert self._shape is not None
        return self._tensor(obs, (*self._shape, self.obs_dim))


# -------------------------------------------------------------------- plugin factories
# Keyword options are the config's [task] table. Real functions (not partials), so the registry
# can read their return type without building an environment.
def _velocity_factory(robot: Robot, high: float) -> Callable[..., LocomotionEnv]:
    def build(horizon: int = 200, observation: str = "rllab", reset_noise_scale: float = 0.1,
              min_velocity: float = 0.0, max_velocity: float = high) -> LocomotionEnv:
        return LocomotionEnv(robot, "velocity", horizon=horizon, observation=observation,
                             reset_noise_scale=reset_noise_scale, velocity_range=(min_velocity, max_velocity))

    build.__doc__ = f"{robot.name} goal velocity, v* ~ U[min_velocity, max_velocity] (paper: U[0, {high:g}])."
    return _named(build, f"build_{robot.name}_vel")


def _direction_factory(robot: Robot) -> Callable[..., LocomotionEnv]:
    def build(horizon: int = 200, observation: str = "rllab", reset_noise_scale: float = 0.1) -> LocomotionEnv:
        return LocomotionEnv(robot, "direction", horizon=horizon, observation=observation,
                             reset_noise_scale=reset_noise_scale)

    build.__doc__ = f"{robot.name} forward/backward: reward d·v with d = ±1 (probability 1/2 each)."
    return _named(build, f"build_{robot.name}_dir")


def _named(function: Callable[..., LocomotionEnv], name: str) -> Callable[..., LocomotionEnv]:
    function.__name__ = function.__qualname__ = name
    return function


build_halfcheetah_vel = _velocity_factory(HALF_CHEETAH, 2.0)
build_halfcheetah_dir = _direction_factory(HALF_CHEETAH)
build_ant_vel = _velocity_factory(ANT, 3.0)
build_ant_dir = _direction_factory(ANT)
