"""Environment steps per second of the MuJoCo locomotion envs: maml_ext's batched env vs gymnasium.

    python benchmarks/bench_envs.py [--min-time S] [--quick] [--write]

For HalfCheetah and Ant at 1, 20, 100 and 400 simultaneous episodes, same run, random actions
in [-1, 1], one thread:

* ``maml_ext LocomotionEnv`` (both observation variants): the task env the RL loop uses, one
  Python loop over ``MjData`` per step, torch actions in, observations/rewards/done out. Episodes
  are reset once all have ended (horizon 200, or every Ant left its healthy torso height: with
  random actions it bounces above 1.0 after ~75 steps); reset time is included. Ended Ant
  episodes are frozen and cost no simulation, so only simulated episode-steps are counted.
* ``gymnasium SyncVectorEnv``: ``gymnasium.make_vec(..., vectorization_mode="sync")`` of
  HalfCheetah-v5 / Ant-v5 with its default wrappers and autoreset (numpy actions).
* ``raw mj_step loop``: only ``ctrl = a; mj_step(nstep=5)`` (+ ``mj_rnePostConstraint`` for the
  Ant) per episode: the floor every closed-loop implementation pays.
* ``mujoco.rollout``: MuJoCo's native multi-episode rollout, used closed-loop: one call per env
  step of ``nstep=5`` from the episodes' full physics states, with 1 and 2 threads.

Printed per row: env-steps/s of wall time and of this process's CPU time (on a shared machine
the CPU-time rate of a one-thread row is the one other jobs do not distort; the 2-thread rollout
row's CPU time counts both threads). ``--write`` replaces this script's section of RESULTS.md.

``--runs DIR ...`` adds, per meta-RL run directory of ``maml-ext train`` (its config.json and
metrics.jsonl), the measured seconds per meta-iteration, the projected time of the paper's 500
iterations and the average return every few iterations (``--only-runs`` skips the env rows).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import mujoco
import mujoco.rollout
from maml_ext.rl.envs import locomotion as L
from results_md import write_run

SIZES = ((1, 1), (1, 20), (5, 20), (20, 20))  # (tasks, rollouts): 1, 20, 100, 400 episodes
ROBOTS = {"HalfCheetah": ("HalfCheetah-v5", L.build_halfcheetah_vel), "Ant": ("Ant-v5", L.build_ant_vel)}


def ours(build: Callable[..., L.LocomotionEnv], observation: str, tasks: int, rollouts: int) -> Callable[[], int]:
    env = build(observation=observation)
    g = torch.Generator().manual_seed(0)
    pool = [2 * torch.rand(tasks, rollouts, env.act_dim, generator=g) - 1 for _ in range(16)]
    state = {"t": env.horizon, "running": 0}

    def step() -> int:
        if state["t"] >= env.horizon or state["running"] == 0:
            env.reset(env.sample_tasks(tasks, g), rollouts, g)
            state["t"], state["running"] = 0, tasks * rollouts
        simulated = state["running"]  # episodes that run in this step
        out = env.step(pool[state["t"] % len(pool)])
        state["t"] += 1
        state["running"] = int((~out.done).sum())
        return simulated

    return step


def gym_sync(env_id: str, n: int) -> Callable[[], int]:
    import tempfile

    import gymnasium as gym

    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:  # gymnasium's cheetah model warns into ./MUJOCO_LOG.TXT
        os.chdir(tmp)
        try:
            env = gym.make_vec(env_id, num_envs=n, vectorization_mode="sync")
        finally:
            os.chdir(cwd)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    pool = [rng.uniform(-1, 1, (n, *env.single_action_space.shape)) for _ in range(16)]
    count = [0]

    def step() -> int:
        env.step(pool[count[0] % len(pool)])
        count[0] += 1
        return n

    return step


def _model_and_starts(build: Callable[..., L.LocomotionEnv], n: int) -> tuple[mujoco.MjModel, list[mujoco.MjData], np.ndarray]:
    env = build()
    env.reset(env.sample_tasks(n, torch.Generator().manual_seed(0)), 1, torch.Generator().manual_seed(1))
    datas = env.sim.datas
    return env.sim.model, datas, np.random.default_rng(0).uniform(-1, 1, (16, n, env.act_dim))


def raw_loop(build: Callable[..., L.LocomotionEnv], n: int, contact: bool) -> Callable[[], int]:
    model, datas, pool = _model_and_starts(build, n)
    count = [0]

    def step() -> int:
        a = pool[count[0] % len(pool)]
        for i, d in enumerate(datas):
            d.ctrl[:] = a[i]
            mujoco.mj_step(model, d, nstep=L.FRAME_SKIP)
            if contact:
                mujoco.mj_rnePostConstraint(model, d)
        count[0] += 1
        return n

    return step


def native_rollout(build: Callable[..., L.LocomotionEnv], n: int, threads: int) -> Callable[[], int]:
    model, datas, pool = _model_and_starts(build, n)
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    state = np.stack([_state(model, d, spec) for d in datas])
    workers = [mujoco.MjData(model) for _ in range(threads)]
    count = [0]

    def step() -> int:
        nonlocal state
        ctrl = np.repeat(pool[count[0] % len(pool)][:, None, :], L.FRAME_SKIP, axis=1)
        out, _ = mujoco.rollout.rollout(model, workers, state, ctrl, nstep=L.FRAME_SKIP)
        state = out[:, -1]
        count[0] += 1
        return n

    return step


def _state(model: mujoco.MjModel, data: mujoco.MjData, spec: int) -> np.ndarray:
    out = np.empty(mujoco.mj_stateSize(model, spec))
    mujoco.mj_getState(model, data, out, spec)
    return out


def rate(steppers: dict[str, Callable[[], int]], min_time: float, rounds: int = 2) -> dict[str, tuple[float, float]]:
    """Env-steps per second of wall time and of CPU time of each stepper, timed in ``rounds``
    interleaved turns of ``min_time / rounds`` seconds (a load change on the shared machine then
    hits every implementation alike)."""
    totals = {name: [0, 0.0, 0.0] for name in steppers}
    for step in steppers.values():
        for _ in range(3):
            step()  # warm-up
    for _ in range(rounds):
        for name, step in steppers.items():
            start, cpu, steps = time.perf_counter(), time.process_time(), 0
            while time.perf_counter() - start < min_time / rounds:
                steps += step()
            acc = totals[name]
            acc[0] += steps
            acc[1] += time.perf_counter() - start
            acc[2] += time.process_time() - cpu
    return {name: (n / wall, n / cpu) for name, (n, wall, cpu) in totals.items()}


def run(args: argparse.Namespace) -> list[str]:
    rows = [
        "| robot | episodes (tasks × rollouts) | implementation | env-steps/s (wall) | env-steps/s (CPU time) | vs gymnasium sync (CPU time) |",
        "|---|---|---|---|---|---|",
    ]
    print(rows[0], flush=True)
    sizes = SIZES[:2] if args.quick else SIZES
    verdict = []
    for robot, (env_id, build) in ROBOTS.items():
        contact = robot == "Ant"
        for tasks, rollouts in sizes:
            n = tasks * rollouts
            steppers = {
                "gymnasium SyncVectorEnv": gym_sync(env_id, n),
                "maml_ext LocomotionEnv, observation=rllab": ours(build, "rllab", tasks, rollouts),
                "maml_ext LocomotionEnv, observation=gymnasium": ours(build, "gymnasium", tasks, rollouts),
                "raw mj_step loop (physics only)": raw_loop(build, n, contact),
                "mujoco.rollout, 1 thread (no contact forces)": native_rollout(build, n, 1),
                "mujoco.rollout, 2 threads (no contact forces)": native_rollout(build, n, 2),
            }
            rates = rate(steppers, args.min_time)
            base = rates["gymnasium SyncVectorEnv"][1]
            for name, (wall, cpu) in rates.items():
                rows.append(f"| {robot} | {n} ({tasks} × {rollouts}) | {name} | {wall:,.0f} | {cpu:,.0f} | {cpu / base:.2f}× |")
                print(rows[-1], flush=True)
        ratio = {name: cpu / base for name, (_, cpu) in rates.items()}
        verdict.append(
            f"{robot}, {n} episodes, CPU-time rate relative to gymnasium's sync vector env: maml_ext "
            f"{ratio['maml_ext LocomotionEnv, observation=gymnasium']:.2f}× (gymnasium observation) / "
            f"{ratio['maml_ext LocomotionEnv, observation=rllab']:.2f}× (rllab observation), raw mj_step loop "
            f"{ratio['raw mj_step loop (physics only)']:.2f}×, mujoco.rollout "
            f"{ratio['mujoco.rollout, 1 thread (no contact forces)']:.2f}× (1 thread)."
        )
    return [*rows, "", *verdict, "", CHOICE]


CHOICE = (
    "Choice: maml_ext steps its own loop over `MjData` (the raw-loop rows plus building observations and "
    "rewards). `mujoco.rollout` runs the bare physics fastest (no Python call per episode), but used "
    "closed-loop it cannot return contact forces (the Ant's observation and contact cost need "
    "`cfrc_ext`), does not carry the constraint solver's warm start from one call to the next (results "
    "then no longer equal gymnasium's step for step), and the rllab observation's centre of mass would "
    "need a Python call per episode again. Its second thread gains little wall time here (the other "
    "core is busy with other jobs) and is not what a shared 2-core machine should be given. "
    "Worker processes (gymnasium's async vector env) were measured slower than sync here "
    "(machine-notes.md §3). The wall-time columns are distorted by the other jobs on the machine; "
    "compare the CPU-time columns."
)


def training_summary(run: Path, every: int) -> list[str]:
    """Seconds per meta-iteration, projected 500-iteration time and the return curve of a run."""
    cfg = json.loads((run / "config.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if not records:
        raise SystemExit(f"{run}: metrics.jsonl is empty")
    # it_s is cumulative (iterations done in this process / seconds since its loop started).
    elapsed = [r["iteration"] / r["it_s"] for r in records]
    per_it = [b - a for a, b in zip([0.0, *elapsed[:-1]], elapsed)]
    sec = statistics.median(per_it)
    t, task = cfg["train"], cfg["task"]
    steps = 2 * t["meta_batch"] * t["rollouts"] * task["horizon"]
    lines = [
        f"**{run.name}** (`{task['name']}`, {t['meta_batch']} tasks × {t['rollouts']} rollouts × horizon "
        f"{task['horizon']}, TRPO, {t['threads']} thread): {len(records)} meta-iterations in "
        f"{elapsed[-1] / 60:.1f} min, median {sec:.1f} s per meta-iteration "
        f"({1 / sec:.4f} it/s; ≤ {steps:,} env-steps each, pre- and post-update), "
        f"so 500 iterations (the paper's \"up to 500\") of this configuration: {500 * sec / 3600:.1f} h.",
        "",
        "| iteration | average return before adaptation | after 1 step |",
        "|---|---|---|",
    ]
    shown = [r for r in records if r["iteration"] == 1 or r["iteration"] % every == 0 or r is records[-1]]
    lines += [f"| {r['iteration']} | {r['return_pre']:.1f} | {r['return_post']:.1f} |" for r in shown]
    # Each iteration samples new goal velocities, so single iterations are noisy: compare windows.
    k = max(1, min(10, len(records) // 3))
    summary = []
    for key, label in (("return_pre", "before adaptation"), ("return_post", "after 1 step")):
        windows = [[r[key] for r in records[:k]], [r[key] for r in records[-k:]]]
        summary.append(f"{label}: {_mean_se(windows[0])} → {_mean_se(windows[1])}")
    lines += ["", f"Mean return of the first vs the last {k} iteration(s) (± standard error over iterations), "
              + "; ".join(summary) + ".", ""]
    return lines + eval_summary(run)


def _mean_se(values: list[float]) -> str:
    mean = statistics.mean(values)
    if len(values) < 2:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {statistics.stdev(values) / len(values) ** 0.5:.1f}"


def eval_summary(run: Path) -> list[str]:
    """The run's eval.json (``maml-ext eval``): the trained policy against its own random
    initialisation on the same fixed test tasks, with the paired per-task difference."""
    path = run / "eval.json"
    if not path.is_file():
        return []
    res = json.loads(path.read_text())
    returns = res["returns"]
    if "maml" not in returns or "random_init" not in returns:
        return []
    lines = [
        f"`maml-ext eval {run.as_posix()}` at iteration {res['iteration']}: {res['num_tasks']} fixed test tasks "
        f"(seed {res['seed']}) × {res['rollouts']} rollouts, inner step size {res['lr']}; mean ± 95% CI over tasks, "
        "and the per-task paired difference trained − initial.",
        "",
        "| adaptation steps | trained policy | its random initialisation | paired difference | tasks improved |",
        "|---|---|---|---|---|",
    ]
    trained, initial = returns["maml"], returns["random_init"]
    for step in range(len(trained["mean"])):
        diff = [a[step] - b[step] for a, b in zip(trained["per_task"], initial["per_task"])]
        half = 1.96 * statistics.stdev(diff) / len(diff) ** 0.5 if len(diff) > 1 else float("nan")
        lines.append(
            f"| {step} | {trained['mean'][step]:.1f} ± {trained['ci95'][step]:.1f} | "
            f"{initial['mean'][step]:.1f} ± {initial['ci95'][step]:.1f} | {statistics.mean(diff):+.1f} ± {half:.1f} | "
            f"{sum(d > 0 for d in diff)}/{len(diff)} |"
        )
    return [*lines, ""]


def environment() -> str:
    import gymnasium

    return (
        f"torch {torch.__version__}, mujoco {mujoco.__version__}, gymnasium {gymnasium.__version__}, "
        f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
        f"{torch.get_num_threads()} torch thread(s), frame skip {L.FRAME_SKIP}, random actions"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--min-time", type=float, default=2.0, help="seconds of timing per row")
    p.add_argument("--quick", action="store_true", help="1 and 20 episodes only")
    p.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    p.add_argument("--runs", nargs="*", type=Path, default=[], help="meta-RL run directories to summarise")
    p.add_argument("--every", type=int, default=10, help="return table: every N-th iteration")
    p.add_argument("--only-runs", action="store_true", help="summarise --runs only, no env timing")
    args = p.parse_args(argv)
    for run_dir in args.runs:
        if not (run_dir / "metrics.jsonl").is_file() or not (run_dir / "config.json").is_file():
            p.error(f"--runs {run_dir}: no metrics.jsonl and config.json there")
    torch.set_num_threads(1)
    header = environment()
    print(header, flush=True)
    rows = [] if args.only_runs else run(args)
    runs = [line for run_dir in args.runs for line in training_summary(run_dir, args.every)]
    print("\n".join(runs), flush=True)
    if args.write:
        write_run("bench_envs", header, rows, "MuJoCo locomotion envs: env-steps/s and meta-RL iteration time", runs)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
