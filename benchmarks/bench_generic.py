"""maml_ext's generic path against torch.func and a hand-batched autograd loop, same run (issue 14.3).

    python benchmarks/bench_generic.py [--threads 1] [--min-time 2] [--rounds 3] [--workloads ...] [--memory | --profile]

The generic path is ``MAML(model, fused=False, task_batched=False)``: the user's module under
``vmap`` over tasks, recorded once per input signature and replayed (``trace``; the default for
torch.nn and maml_ext modules, ``trace=True`` here so the custom ``ResBN`` is recorded too), per-task
gradients from one batched backward. ``generic, vmap per call`` is the same learner with
``trace=False`` (the path before recording); ``generic, memory not reused`` replays
without reusing freed buffers (before :func:`maml_ext.algorithms.whole.reused_memory`);
``generic, sums not reassociated`` records the whole meta-gradient without :mod:`maml_ext.algorithms.sums`'s
rewrites (the path before them); ``generic, sums not in place`` records the whole
meta-gradient without running sums whose operand dies there in place (before
:func:`maml_ext.algorithms.whole.in_place_candidates`); ``generic, forward recorded`` records only the
batched forward, not the whole meta-gradient (the path before :mod:`maml_ext.algorithms.whole`).
Workloads (second order, CPU):

- ``sinusoid``: the paper's MLP 1-40-40-1 as a plain ``nn.Sequential``, T=25, K=10, S=1, α=0.01;
- ``layernorm-mlp``: 1-40-40-1 with LayerNorm after each hidden Linear, same sizes;
- ``resbn``: 1-64 → residual block [Linear, BatchNorm1d, ReLU, Linear, BatchNorm1d] + skip → ReLU
  → 64-1, batch-statistics BatchNorm, same sizes;
- ``conv4-5way``: Omniglot-shaped conv4 (64 filters), 5-way 1-shot, T=32, S=1, α=0.4;
- ``conv4-20way``: the same, 20-way 1-shot, T=16, S=1, α=0.1.

Implementations: ``maml_ext generic``; ``generic, vmap per call``; ``torch.func`` (``vmap`` over an unrolled per-task
``grad`` of ``functional_call``, the functorch MAML example); ``hand-batched`` (parameters
expanded to ``[T, ...]``, a batched forward written by hand: ``baddbmm``, per-task LayerNorm /
BatchNorm statistics, conv4's grouped convolutions; ``autograd.grad(create_graph=True)``).
Gate: before timing, each meta-gradient is compared in float64 with a per-task autograd loop
(relative to its largest entry, ``GATE``); one that disagrees is reported and not timed
(torch.func through batch-statistics BatchNorm: pytorch/functorch#534).
Time: per-call process CPU time, median, rounds interleaved across implementations.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from maml_ext.algorithms import MAML, whole
from maml_ext.models import conv4
from maml_ext.tasks import TaskBatch

GATE = 1e-10
IMPLS = ("maml_ext generic", "generic, memory not reused", "generic, sums not reassociated", "generic, sums not in place", "generic, forward recorded", "generic, vmap per call", "torch.func", "hand-batched")
Batched = Callable[[dict[str, Tensor], Tensor], Tensor]  # (params [T, ...], x [T, N, ...]) -> [T, N, out]


def _linear(h: Tensor, w: Tensor, b: Tensor) -> Tensor:
    return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))


def _affine(h: Tensor, w: Tensor, b: Tensor) -> Tensor:
    return h * w.unsqueeze(1) + b.unsqueeze(1)


class ResBN(nn.Module):
    """A residual block with batch-statistics BatchNorm between two Linear layers."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.inp, self.head = nn.Linear(1, width), nn.Linear(width, 1)
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)
        self.bn1 = nn.BatchNorm1d(width, track_running_stats=False)
        self.bn2 = nn.BatchNorm1d(width, track_running_stats=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        r = self.bn2(self.fc2(F.relu(self.bn1(self.fc1(h)))))
        return self.head(F.relu(h + r))


def _bn_tasks(h: Tensor, w: Tensor, b: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-task batch statistics over the N examples of ``h [T, N, C]``."""
    mean, var = h.mean(1, keepdim=True), h.var(1, unbiased=False, keepdim=True)
    return _affine((h - mean) / torch.sqrt(var + eps), w, b)


def _mlp_tasks(p: dict[str, Tensor], x: Tensor) -> Tensor:
    return _linear(F.relu(_linear(F.relu(_linear(x, p["0.weight"], p["0.bias"])), p["2.weight"], p["2.bias"])),
                   p["4.weight"], p["4.bias"])


def _ln_tasks(p: dict[str, Tensor], x: Tensor) -> Tensor:
    h = x
    for lin, norm in ((0, 1), (3, 4)):
        h = _linear(h, p[f"{lin}.weight"], p[f"{lin}.bias"])
        h = F.relu(_affine(F.layer_norm(h, h.shape[-1:]), p[f"{norm}.weight"], p[f"{norm}.bias"]))
    return _linear(h, p["6.weight"], p["6.bias"])


def _resbn_tasks(p: dict[str, Tensor], x: Tensor) -> Tensor:
    h = _linear(x, p["inp.weight"], p["inp.bias"])
    r = F.relu(_bn_tasks(_linear(h, p["fc1.weight"], p["fc1.bias"]), p["bn1.weight"], p["bn1.bias"]))
    r = _bn_tasks(_linear(r, p["fc2.weight"], p["fc2.bias"]), p["bn2.weight"], p["bn2.bias"])
    return _linear(F.relu(h + r), p["head.weight"], p["head.bias"])


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    build: Callable[[], nn.Module]
    batched: Callable[[nn.Module], Batched]
    tasks: int
    steps: int
    lr: float
    loss: str  # "mse" (sinusoid regression) or "cross_entropy" (n-way labels)
    ways: int = 5  # classes per task (cross_entropy)


def _sinusoid_batch(tasks: int, k: int, g: torch.Generator) -> TaskBatch:
    amp, phase = torch.rand(tasks, 1, 1, generator=g) * 4.9 + 0.1, torch.rand(tasks, 1, 1, generator=g) * torch.pi
    x = lambda: torch.rand(tasks, k, 1, generator=g) * 10 - 5  # noqa: E731
    xs, xq = x(), x()
    return TaskBatch(xs, amp * torch.sin(xs - phase), xq, amp * torch.sin(xq - phase))


def _image_batch(tasks: int, n_way: int, g: torch.Generator) -> TaskBatch:
    x = lambda: torch.rand(tasks, n_way, 1, 28, 28, generator=g)  # noqa: E731
    y = torch.arange(n_way).expand(tasks, -1).contiguous()
    return TaskBatch(x(), y, x(), y)


MLP = lambda: nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))  # noqa: E731
LN_MLP = lambda: nn.Sequential(nn.Linear(1, 40), nn.LayerNorm(40), nn.ReLU(), nn.Linear(40, 40), nn.LayerNorm(40),  # noqa: E731
                               nn.ReLU(), nn.Linear(40, 1))
WORKLOADS = {
    w.key: w
    for w in (
        Workload("sinusoid", "MLP 1-40-40-1 (nn.Sequential), T=25, K=10, S=1, α=0.01", MLP, lambda m: _mlp_tasks, 25, 1, 0.01, "mse"),
        Workload("layernorm-mlp", "MLP 1-40-40-1 + LayerNorm, T=25, K=10, S=1, α=0.01", LN_MLP, lambda m: _ln_tasks, 25, 1, 0.01, "mse"),
        Workload("resbn", "residual block 1-64-[64-BN-64-BN]+skip-1, T=25, K=10, S=1, α=0.01", ResBN, lambda m: _resbn_tasks,
                 25, 1, 0.01, "mse"),
        Workload("conv4-5way", "conv4 (64 filters) 5-way 1-shot 28×28, T=32, S=1, α=0.4", lambda: conv4.build(1, 5),
                 lambda m: m.forward_tasks, 32, 1, 0.4, "cross_entropy"),
        Workload("conv4-20way", "conv4 (64 filters) 20-way 1-shot 28×28, T=16, S=1, α=0.1", lambda: conv4.build(1, 20),
                 lambda m: m.forward_tasks, 16, 1, 0.1, "cross_entropy", ways=20),
    )
}


def make(w: Workload, dtype: torch.dtype) -> tuple[nn.Module, TaskBatch]:
    torch.manual_seed(0)
    model = w.build().to(dtype)
    g = torch.Generator().manual_seed(0)
    b = _sinusoid_batch(w.tasks, 10, g) if w.loss == "mse" else _image_batch(w.tasks, w.ways, g)
    cast = lambda t: t.to(dtype) if t.is_floating_point() else t  # noqa: E731
    return model, TaskBatch(*(cast(t) for t in (b.x_support, b.y_support, b.x_query, b.y_query)))


MetaLoss = Callable[[TaskBatch], Tensor]


def implementations(model: nn.Module, w: Workload) -> dict[str, MetaLoss]:
    """Each returns the mean query loss whose gradient w.r.t. the model's parameters is the meta-gradient."""
    params = dict(model.named_parameters())
    loss_fn = F.mse_loss if w.loss == "mse" else F.cross_entropy
    learner, untraced = (MAML(model, lr=w.lr, steps=w.steps, loss=w.loss, fused=False, task_batched=False, trace=trace)
                         for trace in (True, False))
    forward_only = MAML(model, lr=w.lr, steps=w.steps, loss=w.loss, fused=False, task_batched=False, trace=True)
    forward_only.whole_recorder = None  # the learner before the whole meta-gradient was recorded (for before/after)
    forward_tasks = w.batched(model)

    def without(flag: str) -> MetaLoss:
        """The recorded meta-gradient with one of whole.py's passes off (``flag`` False while it records and replays)."""
        other = MAML(model, lr=w.lr, steps=w.steps, loss=w.loss, fused=False, task_batched=False, trace=True)

        def meta_loss(b: TaskBatch) -> Tensor:
            setattr(whole, flag, False)
            try:
                return other.meta_loss(b)
            finally:
                setattr(whole, flag, True)
        return meta_loss

    def task_loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return loss_fn(functional_call(model, p, (x,)), y)

    def loop(b: TaskBatch) -> Tensor:
        total = 0.0
        for t in range(b.x_support.shape[0]):
            fast = params
            for _ in range(w.steps):
                g = torch.autograd.grad(task_loss(fast, b.x_support[t], b.y_support[t]), list(fast.values()), create_graph=True)
                fast = {n: p - w.lr * gi for (n, p), gi in zip(fast.items(), g)}
            total = total + task_loss(fast, b.x_query[t], b.y_query[t])
        return total / b.x_support.shape[0]

    def one_task(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> Tensor:
        fast = params
        for _ in range(w.steps):
            g = grad(task_loss)(fast, xs, ys)
            fast = {n: p - w.lr * g[n] for n, p in fast.items()}
        return task_loss(fast, xq, yq)

    def batched_losses(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = forward_tasks(p, x)
        if w.loss == "mse":
            return (out - y).pow(2).flatten(1).mean(1)
        return F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)

    def hand_batched(b: TaskBatch) -> Tensor:
        tasks = b.x_support.shape[0]
        fast = {n: p.expand(tasks, *p.shape) for n, p in params.items()}
        for _ in range(w.steps):
            g = torch.autograd.grad(batched_losses(fast, b.x_support, b.y_support).sum(), list(fast.values()), create_graph=True)
            fast = {n: p - w.lr * gi for (n, p), gi in zip(fast.items(), g)}
        return batched_losses(fast, b.x_query, b.y_query).mean()

    return {
        "per-task loop": loop,
        "maml_ext generic": learner.meta_loss,
        "generic, sums not in place": without("REUSE_BUFFERS"),
        "generic, sums not reassociated": without("REASSOCIATE_SUMS"),
        "generic, memory not reused": without("REUSE_MEMORY"),
        "generic, forward recorded": forward_only.meta_loss,
        "generic, vmap per call": untraced.meta_loss,
        "torch.func": lambda b: vmap(one_task)(b.x_support, b.y_support, b.x_query, b.y_query).mean(),
        "hand-batched": hand_batched,
    }


def float64_errors(w: Workload) -> dict[str, float]:
    """Each implementation's meta-gradient error relative to the per-task loop's largest entry, in float64."""
    model, batch = make(w, torch.float64)
    params = list(model.parameters())
    grads = {name: torch.autograd.grad(fn(batch), params) for name, fn in implementations(model, w).items()}
    ref = grads["per-task loop"]
    scale = max(r.abs().max().item() for r in ref)
    return {name: max((a - r).abs().max().item() for a, r in zip(g, ref)) / scale for name, g in grads.items()}


def cpu_ms(w: Workload, names: list[str], min_time: float, rounds: int) -> dict[str, float]:
    """Median process CPU milliseconds per meta-iteration (zero_grad + meta-loss + backward), float32."""
    model, batch = make(w, torch.float32)
    impls = implementations(model, w)

    def step(fn: MetaLoss) -> None:
        model.zero_grad(set_to_none=True)
        fn(batch).backward()

    samples: dict[str, list[float]] = {n: [] for n in names}
    for n in names:
        step(impls[n])  # warm-up
    for _ in range(rounds):
        for n in names:
            start = time.process_time()
            while True:
                t = time.process_time()
                step(impls[n])
                samples[n].append(time.process_time() - t)
                if time.process_time() - start >= min_time / rounds and len(samples[n]) >= 2:
                    break
    return {n: statistics.median(s) * 1e3 for n, s in samples.items()}


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_memory_mb(w: Workload, names: list[str]) -> dict[str, tuple[float, float]]:
    """Peak resident memory above the resident memory before the call (MB), float32: the first
    call (which records) and a later one. Linux only: the peak is reset through
    /proc/self/clear_refs before each call."""
    model, batch = make(w, torch.float32)
    impls = implementations(model, w)
    found = {}
    for n in names:
        calls = []
        for _ in range(2):
            model.zero_grad(set_to_none=True)
            gc.collect()
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident size
            base = _status_kb("VmRSS")
            impls[n](batch).backward()
            calls.append((_status_kb("VmHWM") - base) / 1024)
        found[n] = (calls[0], calls[1])
    return found


def op_table(w: Workload, names: list[str], calls: int = 3, rows: int = 16) -> str:
    """A markdown table of ``torch.profiler``'s self CPU ms per operator per meta-iteration (mean
    of ``calls`` profiled calls, interleaved; float32), the operators taking most time first."""
    from torch.profiler import ProfilerActivity, profile

    model, batch = make(w, torch.float32)
    impls = implementations(model, w)
    ms = {n: dict[str, float]() for n in names}
    count = {n: dict[str, int]() for n in names}
    for n in names:  # warm-up (records)
        impls[n](batch).backward()
    for _ in range(calls):
        for n in names:
            model.zero_grad(set_to_none=True)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                impls[n](batch).backward()
            for e in prof.key_averages():
                ms[n][e.key] = ms[n].get(e.key, 0.0) + e.self_cpu_time_total / 1e3 / calls
                count[n][e.key] = e.count
    ops = sorted({k for m in ms.values() for k in m}, key=lambda k: -sum(m.get(k, 0.0) for m in ms.values()))
    lines = ["| operator | " + " | ".join(f"{n}: ms (calls)" for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {k} | " + " | ".join(f"{ms[n].get(k, 0.0):.1f} ({count[n].get(k, 0)})" for n in names) + " |" for k in ops[:rows]]
    lines.append("| all (profiled) | " + " | ".join(f"{sum(ms[n].values()):.1f}" for n in names) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-time", type=float, default=2.0, help="CPU seconds per implementation and workload")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--memory", action="store_true", help="peak resident memory per meta-iteration instead of time (Linux)")
    parser.add_argument("--profile", action="store_true", help="torch.profiler's per-operator table, generic vs hand-batched")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
          f"{args.threads} thread(s), load average {os.getloadavg()[0]:.1f}; float32 CPU ms per meta-iteration (median), "
          f"gate: float64 meta-gradient vs per-task loop <= {GATE:g}")
    if args.profile:
        for key in args.workloads:
            print(f"\n{key}: {WORKLOADS[key].label}; self CPU ms per meta-iteration under torch.profiler\n")
            print(op_table(WORKLOADS[key], ["maml_ext generic", "hand-batched"]))
        return
    if args.memory:
        names = ["maml_ext generic", "generic, memory not reused", "generic, sums not reassociated", "generic, sums not in place", "generic, forward recorded", "hand-batched"]
        print("peak resident MB above the resident size before the call: first call (records) / a later call")
        for key in args.workloads:
            found = peak_memory_mb(WORKLOADS[key], names)
            print(f"{key}: " + "; ".join(f"{n} {a:.1f} / {b:.1f}" for n, (a, b) in found.items()))
        return
    for key in args.workloads:
        w = WORKLOADS[key]
        errors = float64_errors(w)
        timed = [n for n in IMPLS if errors[n] <= GATE]
        ms = cpu_ms(w, timed, args.min_time, args.rounds)
        ours = ms.get("maml_ext generic")
        print(f"\n{key}: {w.label}")
        for n in IMPLS:
            if n in ms:
                ratio = f"  ({ms[n] / ours:.2f}x generic's time)" if ours else ""
                print(f"  {n:22s} {ms[n]:9.3f} ms   f64 error {errors[n]:.1e}{ratio}")
            else:
                print(f"  {n:22s}   not timed: f64 error {errors[n]:.1e} > {GATE:g}")


if __name__ == "__main__":
    main()
