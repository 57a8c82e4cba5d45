"""Microbenchmarks of the fused ops against the pure-PyTorch reference and torch.func, same run.

    python benchmarks/bench_ops.py [--threads 1] [--dtype float32] [--device cpu] [--write]

Prints one line per configuration with the time of each implementation and the ratios, and with
``--write`` replaces the generated section of benchmarks/RESULTS.md. A "meta-gradient" is one
meta-batch: the inner loop of every task, the query losses and the exact gradient w.r.t. the
initialisation (second order unless marked first order).
"""

from __future__ import annotations

import argparse
import os
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


def maml_step(impl: str, cfg: MamlConfig, problem, first_order: bool, checkpoint: bool = False):
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
                                 first_order=first_order, checkpoint=checkpoint)
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
        name = impl + (" + checkpoint √S" if ckpt else "")
        rows.append(f"| {name} | {'first' if first_order else 'second'} | {nbytes / 2**20:.2f} MiB |")
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per row")
    p.add_argument("--quick", action="store_true", help="paper config only")
    p.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device")
    torch.set_num_threads(args.threads)
    header = environment(args)
    print(header, flush=True)
    rows = run(args)
    if args.write:
        write_run("bench_ops", header, rows)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
