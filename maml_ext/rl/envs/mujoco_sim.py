"""A batch of independent MuJoCo simulations of one model, stepped in one Python loop.

This is the simulator under the locomotion task families (:mod:`maml_ext.rl.envs.locomotion`).
It loads gymnasium's MuJoCo models (``half_cheetah.xml`` and ``ant.xml`` of HalfCheetah-v5 /
Ant-v5, found on disk without importing gymnasium) and keeps one ``mujoco.MjData`` per episode.

Why a plain loop over ``MjData``: on the 2-core development machine it was measured against
gymnasium's synchronous vector env (about 1.6x slower: per-env Python wrappers, info dicts,
autoreset) and ``mujoco.rollout`` (open-loop only: one call per env step, no solver warm start
carried between calls, no ``cfrc_ext`` in its output, and only ~10% faster with one thread); see
benchmarks/bench_envs.py and its section of benchmarks/RESULTS.md.

Semantics follow gymnasium v5 exactly: a reset is ``mj_resetData`` + the start state + ``mj_forward``
(``MujocoEnv.set_state``), a step is ``ctrl = action; mj_step(nstep=frame_skip)`` and, when contact
forces are wanted, ``mj_rnePostConstraint`` (MuJoCo >= 2 no longer fills ``cfrc_ext`` itself).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np

try:
    import mujoco
except ImportError as exc:  # pragma: no cover - exercised only without the optional extra
    raise ImportError(
        "the MuJoCo locomotion tasks need the 'rl' extra: "
        "pip install 'gymnasium[mujoco]==1.4.0' 'mujoco==4.0.0'"
    ) from exc


def gymnasium_asset(xml_file: str) -> Path:
    """Path of one of gymnasium's bundled MuJoCo model files (gymnasium is not imported)."""
    spec = importlib.util.find_spec("gymnasium")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the MuJoCo locomotion tasks use gymnasium's model files: "
            "pip install 'gymnasium[mujoco]==1.4.0'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "envs" / "mujoco" / "assets" / xml_file
    if not path.is_file():
        raise FileNotFoundError(f"gymnasium model file {xml_file!r} not found at {path}")
    return path


AFTER_STEP = ("none", "positions", "forward")
_TOTALMASS = re.compile(r'\s+settotalmass="([^"]+)"')


def load_model(path: Path) -> mujoco.MjModel:
    """Compile a model file. HalfCheetah's ``settotalmass`` compiler attribute is deprecated in
    MuJoCo 4 (a warning on every load, appended to ./MUJOCO_LOG.TXT); it is applied instead the
    way the warning advises, ``mj_setTotalmass`` + ``mj_setConst``, which gives the same model
    (tests compare every step with gymnasium's own env)."""
    text = path.read_text()
    found = _TOTALMASS.search(text)
    if found is None:
        return mujoco.MjModel.from_xml_path(str(path))
    model = mujoco.MjModel.from_xml_string(text[: found.start()] + text[found.end():])
    mujoco.mj_setTotalmass(model, float(found.group(1)))
    mujoco.mj_setConst(model, mujoco.MjData(model))
    return model


class MujocoBatch:
    """N simulations of one model. After :meth:`reset` / :meth:`step` the arrays ``qpos [N, nq]``,
    ``qvel [N, nv]`` (and ``cfrc_ext [N, nbody, 6]`` when ``contact_forces``) hold every
    simulation's current values.

    ``after_step`` says which derived quantities are brought to the final state after each step:
    ``"none"`` leaves them at the last sub-step's start, as gymnasium v5 does; ``"positions"``
    recomputes body poses and subtree COMs (``mj_kinematics`` + ``mj_comPos``); ``"forward"``
    runs ``mj_forward`` (then contact forces too), as rllab's ``model.forward()`` after a step did.
    The physics state is the same in all three."""

    def __init__(
        self, xml_file: str, frame_skip: int, contact_forces: bool, after_step: str = "none"
    ) -> None:
        if frame_skip < 1:
            raise ValueError(f"frame_skip must be >= 1, got {frame_skip}")
        self.model = load_model(gymnasium_asset(xml_file))
        self.frame_skip = frame_skip
        self.contact_forces = contact_forces
        if after_step not in AFTER_STEP:
            raise ValueError(f"after_step must be one of {AFTER_STEP}, got {after_step!r}")
        self.after_step = after_step
        self.dt = float(self.model.opt.timestep) * frame_skip
        self.ctrl_low = self.model.actuator_ctrlrange[:, 0].copy()
        self.ctrl_high = self.model.actuator_ctrlrange[:, 1].copy()
        self._datas: list[mujoco.MjData] = []
        self.size = 0
        self._alloc(0)

    @property
    def nq(self) -> int:
        return int(self.model.nq)

    @property
    def nv(self) -> int:
        return int(self.model.nv)

    @property
    def nu(self) -> int:
        return int(self.model.nu)

    @property
    def datas(self) -> list[mujoco.MjData]:
        """The simulations of the current batch (for tools that step them directly)."""
        return self._datas[: self.size]

    def body_id(self, name: str) -> int:
        return int(mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, name))

    def _alloc(self, n: int) -> None:
        # MjData objects are reused across resets (mj_resetData makes each start clean).
        while len(self._datas) < n:
            self._datas.append(mujoco.MjData(self.model))
        self.size = n
        self.qpos = np.zeros((n, self.nq))
        self.qvel = np.zeros((n, self.nv))
        self.cfrc_ext = np.zeros((n, self.model.nbody, 6))

    def reset(self, qpos: np.ndarray, qvel: np.ndarray) -> None:
        """Start ``len(qpos)`` simulations from the given joint positions and velocities."""
        n = qpos.shape[0]
        if qpos.shape != (n, self.nq) or qvel.shape != (n, self.nv):
            raise ValueError(
                f"start state must be qpos [N, {self.nq}] and qvel [N, {self.nv}], "
                f"got {tuple(qpos.shape)} and {tuple(qvel.shape)}"
            )
        self._alloc(n)
        m = self.model
        for i in range(n):
            d = self._datas[i]
            mujoco.mj_resetData(m, d)
            d.qpos[:] = qpos[i]
            d.qvel[:] = qvel[i]
            mujoco.mj_forward(m, d)
            self._gather(i, d)

    def step(self, ctrl: np.ndarray, active: np.ndarray) -> None:
        """Advance the simulations listed in ``active`` by ``frame_skip`` steps under ``ctrl [N, nu]``
        (already within the control range); the others are left untouched."""
        m, fs, contact = self.model, self.frame_skip, self.contact_forces
        forward, positions = self.after_step == "forward", self.after_step == "positions"
        for i in active.tolist():
            d = self._datas[i]
            d.ctrl[:] = ctrl[i]
            mujoco.mj_step(m, d, nstep=fs)
            if forward:
                mujoco.mj_forward(m, d)
            elif positions:
                mujoco.mj_kinematics(m, d)
                mujoco.mj_comPos(m, d)
            if contact:
                mujoco.mj_rnePostConstraint(m, d)
            self._gather(i, d)

    def _gather(self, i: int, d: mujoco.MjData) -> None:
        self.qpos[i] = d.qpos
        self.qvel[i] = d.qvel
        if self.contact_forces:
            self.cfrc_ext[i] = d.cfrc_ext

    def body_com(self, body: int) -> np.ndarray:
        """Centre of mass of ``body``'s subtree, ``[N, 3]`` (rllab's ``get_body_com``)."""
        return np.array([d.subtree_com[body] for d in self._datas[: self.size]]).reshape(self.size, 3)

    def body_xmat(self, body: int) -> np.ndarray:
        """Orientation matrix of ``body``, flattened ``[N, 9]`` (rllab's ``get_body_xmat``)."""
        return np.array([d.xmat[body] for d in self._datas[: self.size]]).reshape(self.size, 9)
