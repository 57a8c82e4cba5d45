"""Meta-RL speed. 2D navigation: ours (all tasks batched, fused ops) vs a per-task loop (plain
torch autograd), in the same run. HalfCheetah-vel (``--cheetah``): where a MAML-TRPO meta-step's
time goes and what TRPO's KL-Hessian products cost with each implementation.

    python benchmarks/bench_rl.py [--quick] [--write]
    python benchmarks/bench_rl.py --cheetah [--tasks 40 --rollouts 20] [--write]

Rows, each timed for both implementations on identical settings and seeds:

* sampling: environment steps per second of rollout collection with the Gaussian policy (one
  batched policy call and one environment step for all T × R episodes per time step, vs a loop
  over tasks stepping each task's R episodes together);
* meta-iteration: one full MAML-TRPO iteration (pre-update rollouts, advantages, inner step,
  post-update rollouts, exact meta-gradient, 10 CG iterations of KL Hessian-vector products,
  line search), as ``maml-ext train point-nav`` runs it. The per-task loop differentiates through
  each task's inner step with autograd (``create_graph``) and gets the KL Hessian-vector products
  by autograd's double backward (``LoopedMetaRL(hvp="exact")``) or by the paper's finite
  differences of the KL gradient (``hvp="finite_difference"``).

Wall and CPU seconds (process time, robust to a shared machine) are both reported, with the
ratios loop / ours. ``--write`` replaces this script's section of benchmarks/RESULTS.md.

``--cheetah`` (needs the ``rl`` extra) collects one meta-batch of pre- and post-update rollouts
(the paper's 40 tasks × 20 rollouts × horizon 200 by default) and times, on that same data and
from the same parameters: the rollouts (+ advantages and inner step), the pieces of the meta-step
(meta-gradient, one KL-Hessian product of each implementation, building the cached passes, one
line-search candidate), and the whole TRPO meta-step with ``kl_products="fused"`` (three fused
``mlp_hvp`` calls per product, each recomputing its passes), ``"cached"`` (exact, the default)
and ``"cached"`` with ``cg_subsample`` (rllab's subsample_factor; approximate). A meta-iteration's
time is the rollouts' time plus the meta-step's, both measured in this run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from maml_ext import ops
from maml_ext.rl.algorithms import MetaObjective, adapt
from maml_ext.rl.kl_hessian import KLHessian
from maml_ext.rl.algorithms import MetaRL
from maml_ext.rl.envs.point_nav import PointNav
from maml_ext.rl.policy import GaussianMLPPolicy
from maml_ext.rl.rollouts import sample
from results_md import cpu_model, replace_section

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the per-task reference is a test oracle
from rl_looped import LoopedMetaRL  # noqa: E402


def _time(fn: Callable[[], object], repeats: int, warm_up: bool = True) -> tuple[float, float]:
    """Median wall and CPU seconds of ``fn`` over ``repeats`` calls, after one warm-up call unless
    ``warm_up`` is False (calls of seconds)."""
    if warm_up:
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def _policy() -> GaussianMLPPolicy:
    torch.manual_seed(0)
    return GaussianMLPPolicy(2, 2, hidden=(100, 100))


def sampling_rows(tasks: int, rollouts: int, repeats: int) -> list[tuple[str, float, float, int]]:
    env = PointNav(action_scale=0.1)
    goals = env.sample_tasks(tasks, torch.Generator().manual_seed(0))
    params = [p.detach() for p in _policy().params()]
    gen = torch.Generator().manual_seed(1)
    steps = tasks * rollouts * env.horizon

    def batched() -> None:
        sample(env, goals, params, rollouts, gen)

    def looped() -> None:
        for t in range(tasks):
            sample(env, goals[t:t + 1], params, rollouts, gen)

    return [(name, *_time(fn, repeats), steps) for name, fn in (("ours (batched)", batched), ("per-task loop", looped))]


def iteration_rows(tasks: int, rollouts: int, repeats: int, with_fd: bool) -> list[tuple[str, float, float, int]]:
    env = PointNav(action_scale=0.1)
    rows = []
    makers = [("ours (batched, fused)", lambda: MetaRL(_policy())),
              ("per-task loop, autograd HVP", lambda: LoopedMetaRL(_policy(), hvp="exact"))]
    if with_fd:
        makers.append(("per-task loop, finite-difference HVP", lambda: LoopedMetaRL(_policy(), hvp="finite_difference")))
    for name, make in makers:
        learner = make()
        task_gen, noise_gen = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)

        def step() -> None:
            learner.iteration(env, env.sample_tasks(tasks, task_gen), rollouts, noise_gen)  # noqa: B023 (timed within this iteration)

        rows.append((name, *_time(step, repeats), 1))
    return rows


NOTES = [
    "Where the time goes: a meta-iteration is dominated by TRPO's 10 KL Hessian-vector products "
    "(the CG iterations; sᵀHs comes from their results) on 20 tasks x 2,000 samples through a 100-wide MLP; ours "
    "runs directional passes on forward/backward passes kept for the meta-step (`maml_ext/rl/kl_hessian.py`), "
    "large batched matmuls that a per-task loop also runs at near full "
    "speed (2,000 x 100 per task), so batching gains less there than in sampling, where the loop pays "
    "Python and small-kernel overhead per task and time step. The finite-difference loop needs two KL "
    "gradients per product instead of a double backward, hence its smaller gap; it is also wrong at "
    "ReLU kinks (see tests/rl_looped.py).",
    "",
]


def cheetah_lines(tasks: int, rollouts: int, repeats: int, subsample: float) -> list[str]:
    """HalfCheetah-vel: rollouts, meta-step pieces and whole meta-steps, on one meta-batch."""
    from maml_ext.rl.envs.locomotion import build_halfcheetah_vel  # the rl extra

    env = build_halfcheetah_vel()
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(env.obs_dim, env.act_dim, hidden=(100, 100))
    state = {k: v.clone() for k, v in policy.state_dict().items()}
    goals = env.sample_tasks(tasks, torch.Generator().manual_seed(0))
    learner = MetaRL(policy)
    params = learner.params()
    data = {}

    def collect() -> None:
        gen = torch.Generator().manual_seed(1)
        pre = learner.process(sample(env, goals, params, rollouts, gen))
        adapted = adapt(params, pre, learner.lr)
        data.update(pre=pre, adapted=adapted, post=learner.process(sample(env, goals, adapted, rollouts, gen)))

    rollout_wall, rollout_cpu = _time(collect, 1, warm_up=False)
    pre, post, adapted = data["pre"], data["post"], data["adapted"]
    objective = MetaObjective(params, pre, post, learner.lr, adapted=adapted)
    v = [torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) for p in params]
    objective.kl_hvp(v)  # builds the cached passes
    pieces = [
        ("meta-gradient (one fused `mlp_maml_grad`)", lambda: objective.gradient()),
        ("one KL-Hessian product, fused (3 `mlp_hvp` calls)", lambda: objective.kl_hvp_fused(v)),
        ("one KL-Hessian product, cached", lambda: objective.kl_hvp(v)),
        ("keeping the passes (`KLHessian`, once per meta-step)",
         lambda: KLHessian(params, adapted, pre.obs, pre.actions, pre.weight, post.obs, post.valid, learner.lr,
                           "relu")),
        ("one line-search candidate (inner step + surrogate + KL)", lambda: objective.evaluate(params)),
    ]
    piece_rows = [(name, *_time(fn, repeats, warm_up=False)) for name, fn in pieces]
    variants = [("fused KL products (before)", {"kl_products": "fused"}),
                ("cached KL products (exact)", {}),
                (f"cached, cg_subsample={subsample:g} (approximate)", {"cg_subsample": subsample})]
    step_rows, infos = [], []
    for name, options in variants:
        timed = MetaRL(policy, **options)

        def step() -> None:
            policy.load_state_dict(state)  # every call from the same θ
            infos.append(timed.meta_step(pre, post, adapted))  # noqa: B023 (called within this iteration)

        step_rows.append((name, *_time(step, repeats, warm_up=False)))
    policy.load_state_dict(state)
    samples = tasks * rollouts * env.horizon
    lines = [
        f"HalfCheetah-vel, Gaussian MLP {env.obs_dim}-100-100-{env.act_dim} ReLU, {tasks} tasks x {rollouts} "
        f"rollouts x horizon {env.horizon} ({samples:,} samples per pre/post set), float32, "
        f"{torch.get_num_threads()} thread(s), compiled kernels: {ops.extension_available()}, torch {torch.__version__}, "
        f"{cpu_model()}, {os.cpu_count()} logical CPUs, shared and loaded (the CPU column is the steadier one). "
        f"TRPO: 10 CG iterations, line search from the paper's constants. Medians of {repeats} call(s).",
        "",
        "**Pieces of one meta-step** (same data, same θ)",
        "",
        "| piece | wall s | CPU s |",
        "|---|---|---|",
        f"| pre- and post-update rollouts + advantages + inner step | {rollout_wall:.2f} | {rollout_cpu:.2f} |",
        *[f"| {name} | {wall:.3f} | {cpu:.3f} |" for name, wall, cpu in piece_rows],
        "",
        "**Whole meta-step and meta-iteration** (iteration = the rollouts above + the meta-step)",
        "",
        "| TRPO meta-step | meta-step wall s | meta-step CPU s | iteration wall s | iteration CPU s | "
        "speed-up of the iteration (CPU) | surrogate change | KL |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = rollout_cpu + step_rows[0][2]
    for (name, wall, cpu), info in zip(step_rows, infos[::repeats]):
        lines.append(f"| {name} | {wall:.2f} | {cpu:.2f} | {rollout_wall + wall:.1f} | {rollout_cpu + cpu:.1f} | "
                     f"{base / (rollout_cpu + cpu):.2f}x | {info['surrogate_change']:.3g} | {info['kl']:.3g} |")
    fused_product = piece_rows[1][2]
    lines += ["", f"Before this change TRPO also spent an 11th product on sᵀHs (now accumulated from CG's own products): "
              f"the code before took the fused meta-step plus one fused product, {step_rows[0][2] + fused_product:.2f} s "
              f"of CPU per meta-step, {rollout_cpu + step_rows[0][2] + fused_product:.1f} s per iteration "
              f"({(rollout_cpu + step_rows[0][2] + fused_product) / (rollout_cpu + step_rows[1][2]):.2f}x the exact "
              f"cached iteration, {(step_rows[0][2] + fused_product) / step_rows[1][2]:.2f}x its meta-step)."]
    return lines + [""]


def _rate(x: float) -> str:
    return f"{x:.3f}" if x < 10 else f"{x:,.0f}"


def _table(title: str, rows: list[tuple[str, float, float, int]], unit: str, per: str) -> list[str]:
    base_wall, base_cpu = rows[0][1], rows[0][2]
    lines = [f"**{title}**", "", f"| implementation | {unit} (wall) | {unit} (CPU) | wall s {per} | loop / ours (wall) | loop / ours (CPU) |",
             "|---|---|---|---|---|---|"]
    for name, wall, cpu, count in rows:
        lines.append(f"| {name} | {_rate(count / wall)} | {_rate(count / cpu)} | {wall:.3f} | "
                     f"{wall / base_wall:.2f} | {cpu / base_cpu:.2f} |")
    return lines + [""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, one repeat (a smoke test, not a measurement)")
    p.add_argument("--write", action="store_true", help="replace this script's section of RESULTS.md")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cheetah", action="store_true", help="the HalfCheetah-vel meta-step section instead")
    p.add_argument("--tasks", type=int, default=40, help="--cheetah: tasks per meta-batch (paper: 40)")
    p.add_argument("--rollouts", type=int, default=20, help="--cheetah: rollouts per task (paper: 20)")
    p.add_argument("--repeats", type=int, default=1, help="--cheetah: timed calls per row (median)")
    p.add_argument("--subsample", type=float, default=0.2, help="--cheetah: cg_subsample of the approximate row")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.cheetah:
        text = "\n".join(cheetah_lines(args.tasks, args.rollouts, args.repeats, args.subsample))
        print(text)
        if args.write:
            replace_section("bench_rl_cheetah", ["## Meta-RL: HalfCheetah-vel meta-step (benchmarks/bench_rl.py --cheetah)",
                                                 "", text])
        return
    tasks, rollouts = (4, 5) if args.quick else (20, 20)
    repeats = 1 if args.quick else 3
    header = [
        f"2D navigation, Gaussian MLP 2-100-100-2 ReLU, {tasks} tasks x {rollouts} rollouts x horizon 100 "
        f"({'a smoke-test size' if args.quick else 'the paper meta-batch'}), float32, {args.threads} thread(s), compiled kernels: "
        f"{ops.extension_available()}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} logical CPUs (shared machine: the CPU column is the steadier one). "
        "Medians of " + (f"{repeats} timed calls after one warm-up." if repeats > 1 else "1 call (quick)."),
        "",
    ]
    lines = header + _table("Rollout sampling (policy + environment)", sampling_rows(tasks, rollouts, 5 * repeats),
                            "env steps/s", "per call")
    lines += _table("One MAML-TRPO meta-iteration", iteration_rows(tasks, rollouts, repeats, with_fd=True),
                    "meta-iterations/s", "per iteration")
    lines += NOTES
    text = "\n".join(lines)
    print(text)
    if args.write and not args.quick:
        replace_section("bench_rl", ["## Meta-RL: 2D navigation (benchmarks/bench_rl.py)", "", text])


if __name__ == "__main__":
    main()
