"""Meta-iterations per second of MAML on Omniglot-shaped conv4 batches, five implementations, same run.

    python benchmarks/bench_classification.py [--threads 1] [--device cpu] [--quick] [--write]

One meta-iteration = meta-batch sampling excluded: the inner loop of every task (second order),
the query losses, the exact meta-gradient (backward) and nothing else. Implementations:

- ``grouped``: maml_ext's MAML with conv4's task-batched forward (one grouped convolution per
  layer for all tasks) and the fused ``inner_update``;
- ``grouped, task_chunk=8``: the same in chunks of 8 tasks, one graph per chunk (what
  ``train.task_chunk`` does: less memory, and on a CPU the activations of a chunk stay in cache);
- ``maml_ext vmap``: the same learner forced onto its generic path (``task_batched=False``:
  the model under ``torch.func.vmap``, per-task gradients from one batched backward);
- ``per-task loop``: the textbook reference, a Python loop over tasks with ``autograd.grad``;
- ``torch.func``: ``vmap`` over a per-task ``grad`` transform (the functorch MAML example); see
  the check below.

Before timing, every implementation's meta-gradient is checked against the loop's in float64 on
the same model and batch (relative to the largest entry, tolerance 1e-8); one that disagrees is
reported and not timed. ``torch.func`` fails it: ``vmap`` of ``grad`` through batch-statistics
BatchNorm gets the second-order terms wrong (pytorch/functorch#534; exact without ``vmap``).
The float32 runs print their largest difference to the loop (rounding).
``--write`` replaces this script's section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from maml_ext.algorithms import build_algorithm
from maml_ext.models.conv4 import Conv4
from maml_ext.tasks import TaskBatch
from results_md import write_run


@dataclass(frozen=True)
class Setting:
    name: str
    n_way: int
    k_shot: int
    tasks: int
    steps: int
    lr: float


# The paper's Omniglot settings (Appendix A.1): K query examples per class.
SETTINGS = (
    Setting("5-way 1-shot", 5, 1, tasks=32, steps=1, lr=0.4),
    Setting("5-way 5-shot", 5, 5, tasks=32, steps=1, lr=0.4),
    Setting("20-way 1-shot", 20, 1, tasks=16, steps=5, lr=0.1),
)


def make_batch(s: Setting, device: str, seed: int = 0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    n = s.n_way * s.k_shot
    x = lambda: torch.rand(s.tasks, n, 1, 28, 28, generator=g).to(device)  # noqa: E731
    y = torch.arange(s.n_way).repeat_interleave(s.k_shot).expand(s.tasks, -1).contiguous().to(device)
    return TaskBatch(x(), y, x(), y)


CHUNK = 8  # tasks per pass for the chunked row (the best of 1–32 on the development CPU)


def implementations(model: Conv4, s: Setting) -> dict[str, Callable[[TaskBatch], list[torch.Tensor]]]:
    params = dict(model.named_parameters())
    learners = {
        batched: build_algorithm("maml", model, lr=s.lr, steps=s.steps, loss="cross_entropy", task_batched=batched)
        for batched in (True, False)
    }

    def loss_fn(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    def loop(b: TaskBatch) -> torch.Tensor:
        total = 0.0
        for t in range(b.num_tasks):
            fast = params
            for _ in range(s.steps):
                g = torch.autograd.grad(loss_fn(fast, b.x_support[t], b.y_support[t]), list(fast.values()), create_graph=True)
                fast = {n: p - s.lr * gi for (n, p), gi in zip(fast.items(), g)}
            total = total + loss_fn(fast, b.x_query[t], b.y_query[t])
        return total / b.num_tasks

    def one_task(xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor, yq: torch.Tensor) -> torch.Tensor:
        fast = params
        for _ in range(s.steps):
            g = grad(loss_fn)(fast, xs, ys)
            fast = {n: p - s.lr * g[n] for n, p in fast.items()}
        return loss_fn(fast, xq, yq)

    def chunked(b: TaskBatch) -> list[torch.Tensor]:
        # What `train.task_chunk` does: one graph per chunk of tasks, gradients summed.
        total = [torch.zeros_like(p) for p in params.values()]
        for start in range(0, b.num_tasks, CHUNK):
            part = b.slice(start, min(start + CHUNK, b.num_tasks))
            loss = learners[True].meta_loss(part) * (part.num_tasks / b.num_tasks)
            for acc, g in zip(total, torch.autograd.grad(loss, list(params.values()))):
                acc += g
        return total

    def gradient_of(loss: Callable[[TaskBatch], torch.Tensor]) -> Callable[[TaskBatch], list[torch.Tensor]]:
        return lambda b: list(torch.autograd.grad(loss(b), list(params.values())))

    return {
        "grouped (maml_ext)": gradient_of(lambda b: learners[True].meta_loss(b)),
        f"grouped, task_chunk={CHUNK}": chunked,
        "maml_ext vmap": gradient_of(lambda b: learners[False].meta_loss(b)),
        "per-task loop": gradient_of(loop),
        "torch.func vmap(grad)": gradient_of(lambda b: vmap(one_task)(b.x_support, b.y_support, b.x_query, b.y_query).mean()),
    }


GATE = 1e-8  # float64 relative agreement with the loop required before an implementation is timed


def float64_errors(s: Setting, device: str) -> dict[str, float]:
    """Each implementation's meta-gradient error relative to the loop's largest entry, in float64."""
    torch.manual_seed(0)
    model = Conv4(1, s.n_way).to(device).double()
    b = make_batch(s, device)
    batch = TaskBatch(b.x_support.double(), b.y_support, b.x_query.double(), b.y_query)
    impls = implementations(model, s)
    ref = impls["per-task loop"](batch)
    scale = max(r.abs().max().item() for r in ref)
    return {name: max((a - r).abs().max().item() for a, r in zip(fn(batch), ref)) / scale for name, fn in impls.items()}


def rate(fn: Callable[[TaskBatch], list[torch.Tensor]], batch: TaskBatch, min_time: float, sync: Callable[[], None]) -> tuple[float, float]:
    """Meta-iterations per second of wall time and of this process's CPU time (on a shared machine
    the CPU-time rate of a 1-thread run is the one that other jobs do not distort)."""
    fn(batch)  # warm-up
    sync()
    start, cpu, n = time.perf_counter(), time.process_time(), 0
    while n < 2 or time.perf_counter() - start < min_time:
        fn(batch)
        sync()
        n += 1
    return n / (time.perf_counter() - start), n / (time.process_time() - cpu)


def run(args: argparse.Namespace) -> list[str]:
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    # On a GPU the CPU time only measures the launching thread: compare the wall-time columns there.
    rows = [
        "| setting | tasks × (support + query) images, inner steps | implementation | meta-it/s (wall) | meta-it/s (CPU time) | vs loop (CPU time) | max abs. Δ meta-grad vs loop, float32 (float64 relative) |",
        "|---|---|---|---|---|---|---|",
    ]
    print(rows[0], flush=True)
    for s in SETTINGS[:1] if args.quick else SETTINGS:
        torch.manual_seed(0)
        model = Conv4(1, s.n_way).to(args.device)
        batch = make_batch(s, args.device)
        errors = float64_errors(s, args.device)
        impls = implementations(model, s)
        ref = impls["per-task loop"](batch)
        rates = {name: rate(fn, batch, args.min_time, sync) for name, fn in impls.items() if errors[name] <= GATE}
        shape = f"{s.tasks} × ({s.n_way * s.k_shot} + {s.n_way * s.k_shot}) 28×28, {s.steps}"
        for name, fn in impls.items():
            if name not in rates:
                rows.append(f"| {s.name} | {shape} | {name} | not timed: float64 meta-gradient off by {errors[name]:.1e} "
                            f"(relative; tolerance {GATE:.0e}) | | | {errors[name]:.1e} (float64) |")
                print(rows[-1], flush=True)
                continue
            diff = max((a - b).abs().max().item() for a, b in zip(fn(batch), ref))
            wall, cpu = rates[name]
            rows.append(
                f"| {s.name} | {shape} | {name} | {wall:.3f} | {cpu:.3f} | {cpu / rates['per-task loop'][1]:.2f}× | "
                f"{diff:.1e} (float64: {errors[name]:.0e}) |"
            )
            print(rows[-1], flush=True)
    return rows


def environment(args: argparse.Namespace) -> str:
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return (
        f"torch {torch.__version__}, {device}, {torch.get_num_threads()} thread(s), float32, "
        f"conv4 64 filters strided (Omniglot), second-order MAML"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--min-time", type=float, default=5.0, help="seconds of timing per row")
    p.add_argument("--quick", action="store_true", help="5-way 1-shot only")
    p.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device")
    torch.set_num_threads(args.threads)
    header = environment(args)
    print(header, flush=True)
    rows = run(args)
    if args.write:
        write_run("bench_classification", header, rows, "Few-shot classification: conv4 MAML meta-iterations/s")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
