"""Microbenchmarks of the fused ops against the pure-PyTorch reference and torch.func, same run.

    python benchmarks/bench_ops.py [--threads 1] [--dtype float32] [--device cpu] [--write]
    python benchmarks/bench_ops.py --scaling [--scaling-threads 1,2] [--repeats 9] [--write]
    python benchmarks/bench_ops.py --front-end [--repeats 15] [--write]

Prints one line per configuration with the time of each implementation and the ratios, and with
``--write`` replaces the generated section of benchmarks/RESULTS.md. A "meta-gradient" is one
meta-batch: the inner loop of every task, the query losses and the exact gradient w.r.t. the
initialisation (second order unless marked first order).

``--scaling``: ``mlp_maml_grad`` at each thread count, the counts alternating in one process
(``--repeats`` rounds, medians of wall time per call), with the meta-gradients checked bitwise equal
across thread counts. ``--front-end``: one whole meta-iteration through the learner API
(``zero_grad``, ``MAML(...).meta_loss(batch).backward()``, ``Adam.step()``; and the training loop's
``learner.meta_grad(batch)`` with its lean fused Adam) against the bare ``ops.mlp_maml_grad`` call,
alternating, medians of process CPU time, one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.utils.benchmark as tbench

import maml_ext
from maml_ext import ops, reference
from results_md import cpu_model, write_run



@dataclass(frozen=True)
class MamlConfig:
    name: str
    widths: tuple[int, ...]
    tasks: int
    k: int
    steps: int
    lr: float = 0.01


PAPER = MamlConfig("sinusoid (paper)", (1, 40, 40, 1), tasks=25, k=10, steps=1)
# α = 0.001: with He init and x in [-5, 5], five steps at 0.01 diverge (inf/NaN losses and
# meta-gradients), which would time arithmetic on non-finite numbers.
LARGE = MamlConfig("large MLP", (1, 256, 256, 1), tasks=100, k=10, steps=5, lr=0.001)


def make_problem(cfg: MamlConfig, dtype: torch.dtype, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    params = []
    for d_in, d_out in zip(cfg.widths[:-1], cfg.widths[1:]):
        params.append((torch.randn(d_out, d_in, generator=g) * (2 / d_in) ** 0.5).to(dtype))
        params.append(torch.zeros(d_out, dtype=dtype))
    params = [p.to(device).requires_grad_() for p in params]

    def batch():
        x = torch.rand(cfg.tasks, cfg.k, cfg.widths[0], generator=g, dtype=dtype) * 10 - 5
        amp = torch.rand(cfg.tasks, 1, 1, generator=g, dtype=dtype) * 4.9 + 0.1
        phase = torch.rand(cfg.tasks, 1, 1, generator=g, dtype=dtype) * torch.pi
        return x.to(device), (amp * torch.sin(x - phase)).to(device)

    return params, *batch(), *batch()


def torch_func_maml(params, xs, ys, xq, yq, *, lr, steps, first_order):
    """A hand-written torch.func MAML: vmap over tasks of an unrolled inner loop."""
    from torch.func import grad, vmap

    def task_loss(ps, x, y, xq_, yq_):
        def support_loss(p):
            return (reference.mlp_forward(p, x, "relu") - y).pow(2).mean()

        for _ in range(steps):
            g = grad(support_loss)(ps)
            if first_order:
                g = [t.detach() for t in g]
            ps = [p - lr * gi for p, gi in zip(ps, g)]
        return (reference.mlp_forward(ps, xq_, "relu") - yq_).pow(2).mean()

    return vmap(task_loss, in_dims=(None, 0, 0, 0, 0))(params, xs, ys, xq, yq)


def maml_step(impl: str, cfg: MamlConfig, problem, first_order: bool, snapshots: bool = False):
    params, xs, ys, xq, yq = problem
    if impl == "torch.func":
        def run():
            losses = torch_func_maml(params, xs, ys, xq, yq, lr=cfg.lr, steps=cfg.steps,
                                     first_order=first_order)
            return torch.autograd.grad(losses.mean(), params)
        return run
    if impl == "maml_ext grad":
        def run():
            return ops.mlp_maml_grad(params, xs, ys, xq, yq, lr=cfg.lr, steps=cfg.steps,
                                     first_order=first_order)[1]
        return run
    mod = ops if impl == "maml_ext" else reference

    def run():
        losses, _ = mod.mlp_maml(params, xs, ys, xq, yq, lr=cfg.lr, steps=cfg.steps,
                                 first_order=first_order, snapshots=snapshots)
        return torch.autograd.grad(losses.mean(), params)

    return run


def time_it(fn: Callable[[], object], threads: int, min_run_time: float) -> float:
    fn()  # warm-up (and one-time allocations)
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    return timer.blocked_autorange(min_run_time=min_run_time).median


def cpu_time_it(fn: Callable[[], object], min_run_time: float) -> float:
    """CPU seconds per call of this process: unlike wall time, not inflated when other jobs
    share the cores (one thread: CPU time is the time the call computes)."""
    fn()
    calls, start, wall = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - wall < min_run_time:
        fn()
        calls += 1
    return (time.process_time() - start) / calls


def saved_bytes(fn: Callable[[], object]) -> int:
    """Bytes that autograd keeps for the backward of one call (parameters excluded)."""
    total = 0

    def pack(t):
        nonlocal total
        if not t.is_leaf or not t.requires_grad:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def environment(args) -> str:
    device = torch.cuda.get_device_name() if args.device == "cuda" else cpu_model()
    cap = maml_ext._extension.C.cpu_capability() if ops.extension_available() else "n/a"
    return (f"device: {device}; torch {torch.__version__}; threads {args.threads}; "
            f"dtype {args.dtype}; CPU kernels: {cap}; extension loaded: {ops.extension_available()}")


def run(args) -> list[str]:
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    rows = ["| config | order | maml_ext `mlp_maml_grad` | maml_ext `mlp_maml` + backward | reference (batched autograd) | torch.func | ref / ours | func / ours | ours: meta-grads/s (wall) | ours: CPU time per meta-grad |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    configs = [PAPER] if args.quick else [PAPER, LARGE]
    for cfg in configs:
        problem = make_problem(cfg, dtype, args.device)
        for first_order in (False, True):
            grads = maml_step("maml_ext grad", cfg, problem, first_order)()
            if not all(torch.isfinite(g).all() for g in grads):
                raise SystemExit(f"{cfg.name}: the meta-gradient is not finite at lr={cfg.lr}: timing it "
                                 "would measure arithmetic on inf/NaN")
            times = {impl: time_it(maml_step(impl, cfg, problem, first_order), args.threads,
                                   args.min_time)
                     for impl in ("maml_ext grad", "maml_ext", "reference", "torch.func")}
            ours = times["maml_ext grad"]
            cpu = cpu_time_it(maml_step("maml_ext grad", cfg, problem, first_order), args.min_time)
            label = (f"{cfg.name}: MLP {'-'.join(map(str, cfg.widths))}, T={cfg.tasks}, "
                     f"K={cfg.k}, S={cfg.steps}, α={cfg.lr}")
            order = "first" if first_order else "second"
            rows.append(
                f"| {label} | {order} | {ours * 1e3:.3f} ms | {times['maml_ext'] * 1e3:.3f} ms | "
                f"{times['reference'] * 1e3:.3f} ms | "
                f"{times['torch.func'] * 1e3:.3f} ms | {times['reference'] / ours:.2f}x | "
                f"{times['torch.func'] / ours:.2f}x | {1 / ours:.0f} | {cpu * 1e3:.3f} ms ({1 / cpu:.0f}/s) |"
            )
            print(rows[-1], flush=True)
    rows += ["", "Memory kept for the backward, S = 100 steps (sinusoid MLP, T=25, K=10):", "",
             "| implementation | order | saved for backward |", "|---|---|---|"]
    long = MamlConfig("long inner loop", PAPER.widths, PAPER.tasks, PAPER.k, steps=100)
    problem = make_problem(long, dtype, args.device)
    for impl, first_order, ckpt in (("maml_ext", False, False), ("maml_ext", False, True),
                                    ("maml_ext", True, False), ("reference", False, False),
                                    ("reference", True, False)):
        nbytes = saved_bytes(maml_step(impl, long, problem, first_order, ckpt))
        name = impl + (" + snapshots √S" if ckpt else "")
        rows.append(f"| {name} | {'first' if first_order else 'second'} | {nbytes / 2**20:.2f} MiB |")
        print(rows[-1], flush=True)
    return rows


def _per_call(fn: Callable[[], object], seconds: float, clock: Callable[[], float]) -> float:
    calls, start, wall = 0, clock(), time.perf_counter()
    while time.perf_counter() - wall < seconds or calls < 2:
        fn()
        calls += 1
    return (clock() - start) / calls


def _clocks(fn: Callable[[], object], seconds: float) -> tuple[float, float, float]:
    """Per call: wall, process CPU (all threads) and calling-thread CPU seconds."""
    calls, wall, cpu, own = 0, time.perf_counter(), time.process_time(), time.thread_time()
    while time.perf_counter() - wall < seconds or calls < 2:
        fn()
        calls += 1
    return ((time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls,
            (time.thread_time() - own) / calls)


def scaling(args) -> list[str]:
    """``mlp_maml_grad`` at each thread count, alternating (see the module docstring). Besides the
    wall time (which a loaded machine inflates), the calling thread's share of the process's CPU
    time shows whether the work is split: 1/n when n threads share it, 1 when it runs serially."""
    dtype = getattr(torch, args.dtype)
    threads = [int(n) for n in args.scaling_threads.split(",")]
    rows = ["| config | order | threads | wall per call | CPU per call (all threads) | calling thread's CPU share | wall speed-up vs 1 | bitwise equal to 1 thread |",
            "|---|---|---|---|---|---|---|---|"]
    for cfg in [PAPER, LARGE]:
        problem = make_problem(cfg, dtype, args.device)
        for first_order in (False, True):
            fn = maml_step("maml_ext grad", cfg, problem, first_order)
            samples: dict[int, list[tuple[float, float, float]]] = {n: [] for n in threads}
            grads = {}
            for n in threads:
                torch.set_num_threads(n)
                grads[n] = fn()
            for _ in range(args.repeats):
                for n in threads:
                    torch.set_num_threads(n)
                    samples[n].append(_clocks(fn, args.min_time))
            label = f"{cfg.name}: MLP {'-'.join(map(str, cfg.widths))}, T={cfg.tasks}, K={cfg.k}, S={cfg.steps}"
            wall1 = statistics.median(w for w, _, _ in samples[threads[0]])
            for n in threads:
                wall = statistics.median(w for w, _, _ in samples[n])
                cpu = statistics.median(c for _, c, _ in samples[n])
                share = statistics.median(o / c for _, c, o in samples[n])
                equal = all(torch.equal(a, b) for a, b in zip(grads[n], grads[threads[0]]))
                rows.append(f"| {label} | {'first' if first_order else 'second'} | {n} | {wall * 1e3:.2f} ms | "
                            f"{cpu * 1e3:.2f} ms | {share:.2f} | {wall1 / wall:.2f}x | {'yes' if equal else 'NO'} |")
                print(rows[-1], flush=True)
    torch.set_num_threads(args.threads)
    return rows


def front_end_times(repeats: int, min_time: float) -> dict[str, float]:
    """Median CPU µs per call of the bare op and of whole meta-iterations through the API."""
    from maml_ext.algorithms import MAML
    from maml_ext.models import mlp
    from maml_ext.tasks import TaskBatch
    from maml_ext.train import optim as train_optim

    cfg = PAPER
    torch.manual_seed(0)
    model = mlp.build(cfg.widths[0], cfg.widths[-1], hidden=cfg.widths[1:-1])
    _, xs, ys, xq, yq = make_problem(cfg, torch.float32, "cpu")
    batch = TaskBatch(xs, ys, xq, yq)
    learner = MAML(model, lr=cfg.lr, steps=cfg.steps)
    params = [p.detach() for p in model.parameters()]
    default_adam = torch.optim.Adam(learner.parameters(), lr=1e-3)
    fused_adam = torch.optim.Adam(learner.parameters(), lr=1e-3, fused=True)
    lean_adam = train_optim.adam(learner.parameters(), lr=1e-3)

    def iteration(opt):
        def run():
            opt.zero_grad(set_to_none=True)
            learner.meta_loss(batch).backward()
            opt.step()
        return run

    def loss_backward():
        default_adam.zero_grad(set_to_none=True)
        learner.meta_loss(batch).backward()

    def loop_iteration():
        # What the training loop runs: learner.meta_grad (no autograd engine) and the lean Adam.
        lean_adam.zero_grad(set_to_none=True)
        learner.meta_grad(batch)
        lean_adam.step()

    def grad_only():
        lean_adam.zero_grad(set_to_none=True)
        learner.meta_grad(batch)

    fns = {
        "bare": lambda: ops.mlp_maml_grad(params, xs, ys, xq, yq, lr=cfg.lr, steps=cfg.steps),
        "meta_loss + backward": loss_backward,
        "iteration, Adam (default)": iteration(default_adam),
        "iteration, Adam (fused)": iteration(fused_adam),
        "meta_grad": grad_only,
        "iteration, meta_grad + lean fused Adam (training loop)": loop_iteration,
    }
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        _per_call(fn, min_time, time.process_time)
    for _ in range(repeats):
        for k, fn in fns.items():
            samples[k].append(_per_call(fn, min_time, time.process_time) * 1e6)
    return {k: statistics.median(v) for k, v in samples.items()}


def front_end(args) -> list[str]:
    times = front_end_times(args.repeats, args.min_time)
    rows = [f"Front end, {PAPER.name} (MLP {'-'.join(map(str, PAPER.widths))}, T={PAPER.tasks}, K={PAPER.k}, "
            f"S={PAPER.steps}, second order), one thread, median CPU µs per call:", "",
            "| what | CPU µs | vs bare op |", "|---|---|---|"]
    for k, v in times.items():
        rows.append(f"| {k} | {v:.1f} | {v / times['bare']:.2f}x |")
    print("\n".join(rows), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per row")
    p.add_argument("--quick", action="store_true", help="paper config only")
    p.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    p.add_argument("--scaling", action="store_true", help="mlp_maml_grad at several thread counts")
    p.add_argument("--scaling-threads", default="1,2", help="thread counts for --scaling")
    p.add_argument("--front-end", action="store_true", help="API meta-iteration vs the bare op")
    p.add_argument("--json", action="store_true", help="--front-end: print the times as JSON only")
    p.add_argument("--repeats", type=int, default=9, help="alternating rounds (--scaling, --front-end)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device")
    torch.set_num_threads(args.threads)
    if args.front_end and args.json:
        print(json.dumps(front_end_times(args.repeats, args.min_time)))
        return 0
    header = environment(args)
    if args.scaling:
        header += f"; thread counts {args.scaling_threads}, {args.repeats} alternating rounds, medians of wall time"
    print(header, flush=True)
    section, rows = (("bench_ops_scaling", scaling(args)) if args.scaling else
                     ("bench_ops_front_end", front_end(args)) if args.front_end else ("bench_ops", run(args)))
    if args.write:
        write_run(section, header, rows)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
