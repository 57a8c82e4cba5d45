"""maml_ext against the peer libraries (higher, torchopt, learn2learn) and torch.func, same run.

    python benchmarks/bench_peers.py [--threads 1] [--min-time 3] [--quick] [--no-memory] [--write]

One meta-iteration = the inner loop of every task of one meta-batch, the query losses and the
exact meta-gradient in the model's ``.grad`` (second order unless the workload says first order);
batch sampling is excluded. Workloads: the paper's sinusoid (MLP 1-40-40-1, 25 tasks, K = 10, one
step, α = 0.01; second and first order), bench_ops' large MLP (1-256-256-1, 100 tasks, 5 steps)
and bench_classification's Omniglot-shaped conv4 settings "5-way 1-shot" and "20-way 1-shot"
(batches from its ``make_batch``). Implementations, each written the way its README or examples
do MAML:

- ``maml_ext``: ``MAML(model, lr, steps).meta_loss(batch).backward()`` (fused MLP kernel for the
  MLPs; task-batched grouped convolutions for conv4);
- ``maml_ext generic``: the same learner with ``fused=False`` (MLP) or ``task_batched=False``
  (conv4): the model under ``vmap``, per-task gradients from one batched backward;
- ``maml_ext nn.Sequential`` (MLP workloads): the user's own ``nn.Sequential`` of the same
  ``nn.Linear`` and ``nn.ReLU`` modules (no fused-MLP declaration) through ``MAML(model, lr, steps)``
  with default options: whatever path the front end picks for a plain model;
- ``torch.func``: ``vmap`` over an unrolled per-task ``grad`` (bench_ops.torch_func_maml for MLPs);
- ``higher``: ``innerloop_ctx`` per task, ``diffopt.step(loss)``, per-task ``backward``;
- ``torchopt``: ``MetaSGD`` with ``extract_state_dict``/``recover_state_dict`` per task, one
  ``backward`` of the mean (its maml_omniglot example); first order through its functional API
  (``torchopt.sgd`` on detached gradients, since ``MetaSGD.step`` always builds the graph);
- ``learn2learn``: ``l2l.algorithms.MAML(model, lr).clone()`` + ``adapt`` per task.

Before timing, every implementation's meta-gradient is compared with maml_ext's on the same batch
and weights in float64 (the gate, ``TOLERANCE_F64``), and its float32 meta-gradient with that
float64 one (rounding error, printed, loose gate ``TOLERANCE_F32``); one that differs is reported
and not timed. Time: median over per-call samples (wall and process CPU time) after a warm-up,
rounds interleaved across implementations; ``--threads2 N`` also times every implementation with N
threads in the same rounds (the 2-thread columns). Memory: a fresh subprocess per implementation (see
:func:`measure_memory`). Peers that are not installed or cannot be imported are listed with the
reason. ``--write`` replaces this script's section of benchmarks/RESULTS.md.

The peers' virtual environment (peers always with ``--no-deps`` so pip can never replace torch):

    python3 -m venv .venv-peers
    .venv-peers/bin/pip install "torch==2.13.0" "numpy>=1.22" "pybind11>=2.12,<3.2" \\
        "scikit-build-core>=0.10" "cmake>=3.18" "ninja>=1.10" "pytest>=7" "matplotlib>=3.5" "setuptools>=61"
    .venv-peers/bin/pip install --no-build-isolation --no-deps -C build-dir=build/peers .
    .venv-peers/bin/pip install --no-deps higher==0.2.1 torchopt==0.7.3 optree==0.20.0 \\
        typing-extensions==4.16.0 graphviz==0.21
    # learn2learn 0.2.0 (sdist): its shipped C files include longintrepr.h (gone in Python 3.11),
    # so the Cython sources are regenerated at build time (build_ext makes setup.py cythonize):
    .venv-peers/bin/pip install --no-deps cython==3.3.1
    .venv-peers/bin/pip install --no-deps --no-build-isolation -C--build-option=build_ext learn2learn==0.2.0
    .venv-peers/bin/pip install --no-deps requests==2.34.2 charset-normalizer==3.5.2 idna==3.20 \\
        urllib3==2.8.0 certifi==2026.10.18 tqdm==4.70.1 gym==0.26.2 cloudpickle==3.1.2 gym-notices==0.1.0
    # `import learn2learn` still fails: its __init__ imports learn2learn.vision, whose datasets
    # import torchvision at module level (not installed here), so it is reported, not timed.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

import bench_ops
from bench_classification import SETTINGS, Setting, make_batch
from maml_ext import ops
from maml_ext.algorithms import MAML
from maml_ext.models import conv4, mlp
from maml_ext.tasks import TaskBatch
from maml_ext.tasks.sinusoid import Sinusoid
from results_md import cpu_model, write_run

# The meta-gradient check (relative_difference, same batch and weights). The gate is float64: there
# the same computation in another order agrees with maml_ext to ~1e-12, and a different one (a
# missing second-order term, a wrong loss scale, a wrong batching rule) is off by > 1e-4. In float32,
# rounding alone reaches a few 1e-2 on the 1-shot conv4 settings (batch-statistics BatchNorm over
# 5-20 images, up to 5 steps), as large as real errors; so each implementation's float32
# meta-gradient is compared with the float64 one (its rounding error, printed for every row,
# maml_ext's included) and only gated loosely, against float32-only breakage.
TOLERANCE_F64 = 1e-8
TOLERANCE_F32 = 1e-1

OURS = "maml_ext"
PEERS = {"higher": "higher", "torchopt": "torchopt", "learn2learn": "learn2learn"}  # name: module


@dataclass(frozen=True)
class Workload:
    key: str
    name: str
    tasks: int
    steps: int
    lr: float
    first_order: bool = False
    widths: tuple[int, ...] = ()  # MLP workloads
    k: int = 10  # MLP support = query size
    setting: Setting | None = None  # conv4 workloads
    filters: int = 64

    @property
    def loss(self) -> str:
        return "mse" if self.setting is None else "cross_entropy"

    @property
    def label(self) -> str:
        if self.setting is None:
            order = "first" if self.first_order else "second"
            return (f"{self.name}, {order} order: MLP {'-'.join(map(str, self.widths))}, T={self.tasks}, "
                    f"K={self.k}, S={self.steps}, α={self.lr}")
        s = self.setting
        filters = "" if self.filters == 64 else f" ({self.filters} filters)"
        return (f"Omniglot conv4{filters} {s.name}: T={self.tasks}, {s.n_way * s.k_shot} + {s.n_way * s.k_shot} "
                f"images 28×28, S={self.steps}, α={self.lr}")


def _setting(name: str) -> Setting:
    return next(s for s in SETTINGS if s.name == name)


def _mlp_workload(key: str, cfg: bench_ops.MamlConfig, first_order: bool = False) -> Workload:
    return Workload(key, cfg.name, cfg.tasks, cfg.steps, cfg.lr, first_order, cfg.widths, cfg.k)


def _conv_workload(key: str, name: str) -> Workload:
    s = _setting(name)
    return Workload(key, s.name, s.tasks, s.steps, s.lr, setting=s)


WORKLOADS = {
    w.key: w
    for w in (
        _mlp_workload("sinusoid", bench_ops.PAPER),
        _mlp_workload("sinusoid-fo", bench_ops.PAPER, first_order=True),
        _mlp_workload("large-mlp", bench_ops.LARGE),
        _conv_workload("conv4-5way", "5-way 1-shot"),
        _conv_workload("conv4-20way", "20-way 1-shot"),
    )
}


def tiny(w: Workload) -> Workload:
    """The same kind of workload at test size: few tasks, narrow layers, two inner steps."""
    if w.setting is None:
        return replace(w, tasks=3, steps=2, widths=(1, 8, 8, 1), k=5)
    return replace(w, tasks=2, steps=2, filters=8, setting=replace(w.setting, tasks=2, steps=2))


def build(w: Workload, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, TaskBatch]:
    """The model (seeded initialisation) and one meta-batch of the workload, in ``dtype``."""
    torch.manual_seed(seed)
    if w.setting is None:
        model = mlp.build(w.widths[0], w.widths[-1], hidden=w.widths[1:-1])
        batch = Sinusoid().sample(w.tasks, w.k, w.k, torch.Generator().manual_seed(seed))
    else:
        model = conv4.build(1, w.setting.n_way, filters=w.filters)
        batch = make_batch(w.setting, "cpu", seed)
    cast = lambda t: t.to(dtype) if t.is_floating_point() else t  # noqa: E731 - labels stay integer
    batch = TaskBatch(cast(batch.x_support), cast(batch.y_support), cast(batch.x_query), cast(batch.y_query))
    return model.to(dtype), batch


def _loss_fn(w: Workload) -> Callable[[Tensor, Tensor], Tensor]:
    """Per-task loss on one task's ``[K, ...]`` outputs: the same as maml_ext's task_loss."""
    return F.mse_loss if w.loss == "mse" else F.cross_entropy


# Each factory returns step(): zero the model's gradients, then compute the meta-gradient of the
# mean query loss into them, exactly as a training loop before meta_opt.step() would.
Step = Callable[[], None]


def _ours(model: nn.Module, batch: TaskBatch, w: Workload, generic: bool = False) -> Step:
    flag = {} if not generic else ({"fused": False} if w.setting is None else {"task_batched": False})
    learner = MAML(model, lr=w.lr, steps=w.steps, first_order=w.first_order, loss=w.loss, **flag)
    if not generic and w.setting is None and learner.fused_spec is None:
        raise RuntimeError("maml_ext did not take its fused MLP path")

    def step() -> None:
        model.zero_grad(set_to_none=True)
        learner.meta_loss(batch).backward()

    return step


def _own_sequential(model: nn.Module, batch: TaskBatch, w: Workload) -> Step:
    if w.setting is not None:
        raise ValueError(f"maml_ext nn.Sequential: MLP workloads only, got {w.label}")
    # The same Linear modules (so the same parameters receive the meta-gradient) in a plain
    # nn.Sequential, as a user would write it: nothing declares it a fused MLP.
    own = nn.Sequential(*model)
    learner = MAML(own, lr=w.lr, steps=w.steps, first_order=w.first_order, loss=w.loss)

    def step() -> None:
        own.zero_grad(set_to_none=True)
        learner.meta_loss(batch).backward()

    return step


def _torch_func(model: nn.Module, batch: TaskBatch, w: Workload) -> Step:
    params = list(model.parameters())
    b = batch
    if w.setting is None:  # bench_ops' hand-written MLP version, reused
        def losses() -> Tensor:
            return bench_ops.torch_func_maml(params, b.x_support, b.y_support, b.x_query, b.y_query,
                                             lr=w.lr, steps=w.steps, first_order=w.first_order)
    else:
        names = [n for n, _ in model.named_parameters()]
        loss_fn = _loss_fn(w)

        def task_loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
            return loss_fn(functional_call(model, p, (x,)), y)

        def one_task(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> Tensor:
            fast = dict(zip(names, params))
            for _ in range(w.steps):
                g = grad(task_loss)(fast, xs, ys)
                fast = {n: p - w.lr * (g[n].detach() if w.first_order else g[n]) for n, p in fast.items()}
            return task_loss(fast, xq, yq)

        def losses() -> Tensor:
            return vmap(one_task)(b.x_support, b.y_support, b.x_query, b.y_query)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        losses().mean().backward()

    return step


def _higher(model: nn.Module, batch: TaskBatch, w: Workload) -> Step:
    import higher

    inner_opt = torch.optim.SGD(model.parameters(), lr=w.lr)
    loss_fn = _loss_fn(w)
    # First order: higher's own switch (track_higher_grads=False) cuts the graph to the initial
    # weights too (higher#63); detaching the inner gradients is exactly FOMAML.
    callback = (lambda gs: [g.detach() for g in gs]) if w.first_order else None
    T = batch.num_tasks

    def step() -> None:
        model.zero_grad(set_to_none=True)
        for t in range(T):
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
                for _ in range(w.steps):
                    diffopt.step(loss_fn(fmodel(batch.x_support[t]), batch.y_support[t]), grad_callback=callback)
                (loss_fn(fmodel(batch.x_query[t]), batch.y_query[t]) / T).backward()

    return step


def _torchopt(model: nn.Module, batch: TaskBatch, w: Workload) -> Step:
    import torchopt

    loss_fn = _loss_fn(w)
    T = batch.num_tasks
    if w.first_order:
        # Functional API: SGD updates of detached gradients, applied out of place.
        sgd = torchopt.sgd(lr=w.lr)
        names = [n for n, _ in model.named_parameters()]

        def step() -> None:
            model.zero_grad(set_to_none=True)
            losses = []
            for t in range(T):
                params = tuple(model.parameters())
                state = sgd.init(params)
                for _ in range(w.steps):
                    out = functional_call(model, dict(zip(names, params)), (batch.x_support[t],))
                    grads = torch.autograd.grad(loss_fn(out, batch.y_support[t]), params)
                    updates, state = sgd.update(grads, state, params=params, inplace=False)
                    params = torchopt.apply_updates(params, updates, inplace=False)
                out = functional_call(model, dict(zip(names, params)), (batch.x_query[t],))
                losses.append(loss_fn(out, batch.y_query[t]))
            torch.stack(losses).mean().backward()

        return step

    inner_opt = torchopt.MetaSGD(model, lr=w.lr)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        net_state = torchopt.extract_state_dict(model, by="reference", detach_buffers=True)
        opt_state = torchopt.extract_state_dict(inner_opt, by="reference")
        losses = []
        for t in range(T):
            for _ in range(w.steps):
                inner_opt.step(loss_fn(model(batch.x_support[t]), batch.y_support[t]))
            losses.append(loss_fn(model(batch.x_query[t]), batch.y_query[t]))
            torchopt.recover_state_dict(model, net_state)
            torchopt.recover_state_dict(inner_opt, opt_state)
        torch.stack(losses).mean().backward()

    return step


def _learn2learn(model: nn.Module, batch: TaskBatch, w: Workload) -> Step:
    import learn2learn as l2l

    maml = l2l.algorithms.MAML(model, lr=w.lr, first_order=w.first_order)
    loss_fn = _loss_fn(w)
    T = batch.num_tasks

    def step() -> None:
        model.zero_grad(set_to_none=True)
        for t in range(T):
            learner = maml.clone()
            for _ in range(w.steps):
                learner.adapt(loss_fn(learner(batch.x_support[t]), batch.y_support[t]))
            (loss_fn(learner(batch.x_query[t]), batch.y_query[t]) / T).backward()

    return step


IMPLEMENTATIONS: dict[str, Callable[[nn.Module, TaskBatch, Workload], Step]] = {
    OURS: _ours,
    "maml_ext generic": lambda m, b, w: _ours(m, b, w, generic=True),
    "maml_ext nn.Sequential": _own_sequential,
    "torch.func": _torch_func,
    "higher": _higher,
    "torchopt": _torchopt,
    "learn2learn": _learn2learn,
}


def peer_status(name: str) -> tuple[str | None, str]:
    """(None, version) when the peer imports; else (reason, version or "") with the reason short
    and exact: "not installed", or the import error and the peer's own line that raised it."""
    module = PEERS[name]
    if importlib.util.find_spec(module) is None:
        return "not installed", ""
    version = importlib.metadata.version(name)
    try:
        with warnings.catch_warnings():  # peers' deprecation noise under a new torch is not ours
            warnings.simplefilter("ignore")
            importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure makes the peer unusable here
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f"/{module}/" in f.filename]
        where = ""
        if frames:
            f = frames[-1]
            where = f" at {module}{f.filename.split(f'/{module}', 1)[1]}:{f.lineno} (`{f.line}`)"
        return f"installed but not importable: {type(exc).__name__}: {exc}{where}", version
    return None, version


MLP_ONLY = ("maml_ext nn.Sequential",)


def available(name: str, w: Workload | None = None) -> str | None:
    """None when the implementation can run here (on workload ``w``), else why not."""
    if name in MLP_ONLY and w is not None and w.setting is not None:
        return "MLP workloads only"
    return peer_status(name)[0] if name in PEERS else None


def make_step(name: str, w: Workload, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Step]:
    """A fresh model (same weights for every implementation) and that implementation's step."""
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {list(IMPLEMENTATIONS)}, got {name!r}")
    model, batch = build(w, seed, dtype)
    return model, IMPLEMENTATIONS[name](model, batch, w)


def meta_gradient(name: str, w: Workload, seed: int = 0, dtype: torch.dtype = torch.float32) -> list[Tensor]:
    model, step = make_step(name, w, seed, dtype)
    step()
    return [p.grad.detach().clone() for p in model.parameters()]


def relative_difference(grads: list[Tensor], reference: list[Tensor]) -> float:
    """Largest |g - ref| of each tensor relative to that tensor's largest |ref| entry, floored at
    1e-3 of the largest entry of all tensors: some true meta-gradients are exactly zero (a conv
    bias before batch-statistics BatchNorm), and there only rounding noise is left to compare."""
    if len(grads) != len(reference):
        raise ValueError(f"{len(grads)} gradients against {len(reference)} reference gradients")
    floor = 1e-3 * max((r.abs().max().item() for r in reference), default=0.0)
    worst = 0.0
    for g, r in zip(grads, reference):
        if g is None or g.shape != r.shape:
            return float("inf")
        scale = max(r.abs().max().item(), floor) or 1.0
        worst = max(worst, (g - r).abs().max().item() / scale)
    return worst


def check(names: list[str], w: Workload, seed: int = 0) -> dict[str, tuple[float, float]]:
    """For each implementation, on the same batch and weights: (relative difference of its float64
    meta-gradient to maml_ext's float64 one, relative error of its float32 meta-gradient against
    that float64 value). ``names`` may include maml_ext itself (its float32 rounding error)."""
    truth = meta_gradient(OURS, w, seed, torch.float64)
    out = {}
    for name in names:
        f64 = 0.0 if name == OURS else relative_difference(meta_gradient(name, w, seed, torch.float64), truth)
        f32 = relative_difference([g.double() for g in meta_gradient(name, w, seed, torch.float32)], truth)
        out[name] = (f64, f32)
    return out


def agrees(diff: tuple[float, float]) -> bool:
    return diff[0] <= TOLERANCE_F64 and diff[1] <= TOLERANCE_F32


def time_steps(steps: dict[str, Step], min_time: float, rounds: int = 3, min_calls: int = 2,
               threads: tuple[int, ...] = (1,)) -> dict[tuple[str, int], tuple[float, float]]:
    """Median seconds per call (wall, process CPU) of each step at each thread count, keyed by
    (name, threads), after one warm-up call. The implementations and thread counts take turns in
    ``rounds`` rounds of at least ``min_calls`` calls and ``min_time / rounds`` seconds each, so a
    load change on the shared machine hits all of them."""
    before = torch.get_num_threads()
    samples: dict[tuple[str, int], tuple[list[float], list[float]]] = {
        (n, t): ([], []) for n in steps for t in threads}
    for fn in steps.values():
        fn()
    for _ in range(rounds):
        for name, fn in steps.items():
            for t in threads:
                torch.set_num_threads(t)
                walls, cpus = samples[name, t]
                start, calls = time.perf_counter(), 0
                while calls < min_calls or time.perf_counter() - start < min_time / rounds:
                    w0, c0 = time.perf_counter(), time.process_time()
                    fn()
                    cpus.append(time.process_time() - c0)
                    walls.append(time.perf_counter() - w0)
                    calls += 1
    torch.set_num_threads(before)
    return {k: (statistics.median(w), statistics.median(c)) for k, (w, c) in samples.items()}


# --- memory: one fresh process per implementation -------------------------------------------

_KIB = re.compile(r"(VmHWM|VmRSS):\s+(\d+) kB")
# glibc keeps freed heap memory resident and raises its mmap threshold dynamically, so a buffer
# freed by one allocation would be reused later without showing in the RSS. A fixed low threshold
# makes every allocation of >= 4 KiB its own mapping, returned to the system when freed; with the
# heap trimmed on every free, the resident size follows the live memory to within a page per buffer.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4096", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_TOP_PAD_": "0"}


def _rss_kib() -> dict[str, int]:
    return {k: int(v) for k, v in _KIB.findall(Path("/proc/self/status").read_text())}


def warmup(w: Workload) -> Workload:
    """A smaller workload than even :func:`tiny` of the same kind: run once before the measured
    iterations, it triggers the one-time costs (lazy imports of torch.func and the peers, library
    initialisation) without pre-allocating what the measured size needs."""
    if w.setting is None:
        return replace(w, tasks=1, steps=1, widths=(1, 4, 4, 1), k=3)
    return replace(w, tasks=1, steps=1, filters=4, setting=replace(w.setting, tasks=1, steps=1))


def _measure_here(name: str, w: Workload, threads: int) -> dict[str, float]:
    """In this (fresh) process: peak RSS above the settled RSS during the first and the second
    meta-iteration at the workload's size, after one warm-up iteration at :func:`warmup` size.
    The first includes what the implementation allocates once for this size and keeps (e.g.
    maml_ext's per-thread workspaces); the second is the steady state."""
    torch.set_num_threads(threads)
    make_step(name, warmup(w))[1]()
    model, step = make_step(name, w)
    peaks = []
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        base = _rss_kib()["VmRSS"]
        step()
        # The kernel's RSS counters are per-CPU and approximate (a few pages): a peak within that
        # of the baseline can read below it.
        peaks.append(max(0.0, (_rss_kib()["VmHWM"] - base) / 1024))
    return {"first_mib": peaks[0], "steady_mib": peaks[1]}


def measure_memory(name: str, key: str, threads: int, tiny_size: bool = False) -> dict[str, float]:
    """Peak memory of one meta-iteration of ``name`` in a fresh subprocess (imports, model and
    batch are built before the baseline; the peak high-water mark is reset right before the
    iteration through /proc/self/clear_refs, so setup peaks do not mask it as they would with
    ru_maxrss, which cannot be reset)."""
    if key not in WORKLOADS or name not in IMPLEMENTATIONS:
        raise ValueError(f"need a workload of {list(WORKLOADS)} and an implementation of {list(IMPLEMENTATIONS)}, got {key!r}, {name!r}")
    cmd = [sys.executable, __file__, "--memory-child", key, name, "--threads", str(threads)]
    if tiny_size:
        cmd.append("--tiny")
    env = {**os.environ, **MALLOC_ENV, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory run of {name} on {key} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Row:
    workload: Workload
    name: str
    status: str = ""  # empty: measured
    diff: tuple[float, float] | None = None  # (float64, float32)
    wall: float | None = None
    cpu: float | None = None
    wall2: float | None = None  # with --threads2 threads
    memory: dict[str, float] | None = None


def environment(args: argparse.Namespace) -> str:
    peers = []
    for name in PEERS:
        reason, version = peer_status(name)
        peers.append(f"{name} {version or '-'}" + ("" if reason is None else f" ({reason.split(':')[0]})"))
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    built = f" built from {args.built_from}" if args.built_from else ""
    return (f"device: {cpu_model()} ({os.cpu_count()} cores); torch {torch.__version__}; "
            f"maml_ext {importlib.metadata.version('maml_ext')}{built} (extension loaded: {ops.extension_available()}); "
            f"peers: {', '.join(peers)}; threads {args.threads}"
            + (f" (and {args.threads2} in the same rounds)" if args.threads2 else "")
            + f"; dtype float32; load average at start {load}")


def run(args: argparse.Namespace) -> list[Row]:
    keys = ["sinusoid", "sinusoid-fo"] if args.quick else (args.workloads or list(WORKLOADS))
    names = args.impls or list(IMPLEMENTATIONS)
    total = sum(available(n, WORKLOADS[k]) is None for k in keys for n in names)
    done, rows = 0, []
    t0 = time.perf_counter()
    threads = (args.threads, args.threads2) if args.threads2 else (args.threads,)
    for key in keys:
        w = tiny(WORKLOADS[key]) if args.tiny else WORKLOADS[key]
        unavailable = {n: r for n in names if (r := available(n, w)) is not None}
        runnable = [n for n in names if n not in unavailable]
        diffs = check(runnable, w)
        agree = [n for n in runnable if agrees(diffs[n])]
        steps = {n: make_step(n, w)[1] for n in agree}
        times = time_steps(steps, args.min_time, threads=threads) if steps else {}
        for name in names:
            row = Row(w, name)
            if name in unavailable:
                row.status = unavailable[name]
            else:
                row.diff = diffs[name]
                if (name, args.threads) in times:
                    row.wall, row.cpu = times[name, args.threads]
                    if args.threads2:
                        row.wall2 = times[name, args.threads2][0]
                    if not args.no_memory:
                        row.memory = measure_memory(name, key, args.threads, args.tiny)
                else:
                    row.status = (f"NOT TIMED: meta-gradient differs from maml_ext's (tolerance {TOLERANCE_F64:g} "
                                  f"in float64, {TOLERANCE_F32:g} for float32 against float64)")
                done += 1
            rows.append(row)
            print(f"[{done}/{total}, {time.perf_counter() - t0:.0f} s] {format_row(row, rows)}", flush=True)
    return rows


def _ours_row(row: Row, rows: list[Row]) -> Row:
    return next(r for r in rows if r.workload == row.workload and r.name == OURS)


def format_row(row: Row, rows: list[Row]) -> str:
    head = f"| {row.workload.label} | {row.name} |"
    two = row.wall2 is not None or any(r.wall2 is not None for r in rows)
    if row.wall is None:
        diff = "" if row.diff is None else f"{row.diff[0]:.1e} ({row.diff[1]:.1e})"
        return f"{head} {diff} | {row.status} | | | | | | |" + (" | | |" if two else "")
    ours = _ours_row(row, rows)
    if ours.wall is None:  # maml_ext itself failed its float32 check: nothing to compare with
        return f"{head} {row.diff[0]:.1e} ({row.diff[1]:.1e}) | {row.wall * 1e3:.2f} | {row.cpu * 1e3:.2f} | - | - | | | |"
    mem = "not measured | | |"
    if row.memory is not None:
        first, steady = row.memory["first_mib"], row.memory["steady_mib"]
        ratio = f"{first / ours.memory['first_mib']:.2g}×" if ours.memory and ours.memory["first_mib"] > 0 else "-"
        mem = f"{first:.2f} | {steady:.2f} | {ratio} |"
    threads2 = ""
    if two:
        threads2 = (f" {row.wall2 * 1e3:.2f} | {row.wall / row.wall2:.2f}× | {row.wall2 / ours.wall2:.2f}× |"
                    if row.wall2 is not None and ours.wall2 is not None else " | | |")
    return (f"{head} {row.diff[0]:.1e} ({row.diff[1]:.1e}) | {row.wall * 1e3:.2f} | {row.cpu * 1e3:.2f} | "
            f"{row.wall / ours.wall:.2f}× | {row.cpu / ours.cpu:.2f}× | {mem}{threads2}")


HEADER = [
    "| workload | implementation | max rel. Δ meta-grad: float64 vs maml_ext (float32 vs float64) | wall ms / meta-it (median) | CPU ms / meta-it (median) | wall vs maml_ext | CPU vs maml_ext | peak MiB, 1st meta-it (fresh process) | peak MiB, 2nd meta-it | 1st-it memory vs maml_ext |",
    "|---|---|---|---|---|---|---|---|---|---|",
]


def table_head(threads2: int | None) -> list[str]:
    """The table head, with the --threads2 columns when they are measured."""
    if not threads2:
        return HEADER
    extra = (f" wall ms / meta-it, {threads2} threads | speed-up {threads2} threads vs 1 |"
             f" wall vs maml_ext, {threads2} threads |")
    return [HEADER[0] + extra, HEADER[1] + "---|---|---|"]


def plot(rows: list[Row], out: Path) -> Path:
    """Bars of CPU time and first-iteration memory relative to maml_ext, one group per workload."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display (as maml_ext.train.plots)
    import matplotlib.pyplot as plt

    timed = [r for r in rows if r.cpu is not None and _ours_row(r, rows).cpu is not None]
    workloads = list(dict.fromkeys(r.workload.key for r in timed))
    names = list(dict.fromkeys(r.name for r in timed))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    width = 0.8 / max(len(names), 1)
    for j, name in enumerate(names):
        for ax, value in ((axes[0], lambda r, o: r.cpu / o.cpu),
                          (axes[1], lambda r, o: r.memory["first_mib"] / o.memory["first_mib"]
                           if r.memory and o.memory and o.memory["first_mib"] > 0 else float("nan"))):
            xs, ys = [], []
            for i, key in enumerate(workloads):
                row = next((r for r in timed if r.workload.key == key and r.name == name), None)
                if row is not None:
                    xs.append(i + j * width)
                    ys.append(value(row, _ours_row(row, rows)))
            ax.bar(xs, ys, width, label=name)
    for ax, title in zip(axes, ("CPU time per meta-iteration vs maml_ext", "peak memory (1st meta-it) vs maml_ext")):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(workloads))], workloads, rotation=15)
        ax.set(yscale="log", title=title, ylabel="× maml_ext")
        ax.axhline(1.0, color="k", lw=0.8)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--min-time", type=float, default=3.0, help="seconds of timing per implementation and workload")
    p.add_argument("--quick", action="store_true", help="the sinusoid workloads only")
    p.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), help="default: all")
    p.add_argument("--threads2", type=int, help="also time every implementation with this many threads")
    p.add_argument("--tiny", action="store_true", help="test-sized workloads (tiny())")
    p.add_argument("--impls", nargs="+", choices=list(IMPLEMENTATIONS), help="default: all")
    p.add_argument("--no-memory", action="store_true", help="skip the per-implementation memory subprocesses")
    p.add_argument("--plot", type=Path, default=Path("runs/bench_peers.png"), help="bar chart of the ratios")
    p.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    p.add_argument("--built-from", default="", metavar="REV",
                   help="the commit the installed maml_ext was built from, recorded in the header")
    p.add_argument("--memory-child", nargs=2, metavar=("WORKLOAD", "IMPL"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if not args.min_time > 0:
        p.error(f"--min-time must be > 0 seconds, got {args.min_time}")
    if args.impls and OURS not in args.impls:
        p.error(f"--impls must include {OURS!r}: every ratio and check is relative to it")
    torch.set_num_threads(args.threads)
    if args.memory_child:
        key, name = args.memory_child
        if key not in WORKLOADS or name not in IMPLEMENTATIONS:
            p.error(f"--memory-child needs a workload of {list(WORKLOADS)} and an implementation of {list(IMPLEMENTATIONS)}")
        w = tiny(WORKLOADS[key]) if args.tiny else WORKLOADS[key]
        print(json.dumps(_measure_here(name, w, args.threads)))
        return 0
    header = environment(args)
    print(header, flush=True)
    print("\n".join(table_head(args.threads2)), flush=True)
    start = time.perf_counter()
    rows = run(args)
    lines = [*table_head(args.threads2), *(format_row(r, rows) for r in rows)]
    print(f"plot: {plot(rows, args.plot)}; wall time of the run {time.perf_counter() - start:.0f} s", flush=True)
    if args.write:
        extra = [f"- Meta-gradient check: same batch and weights, relative to each gradient's largest entry; "
                 f"tolerance {TOLERANCE_F64:g} in float64 against maml_ext's float64 meta-gradient (the gate); in "
                 f"brackets each implementation's float32 meta-gradient against that float64 one (its rounding "
                 f"error; gate {TOLERANCE_F32:g}).",
                 "- Memory: peak RSS above the settled RSS in a fresh process per implementation, after a warm-up "
                 "at a smaller size (glibc with a fixed 4 KiB mmap threshold, so freed buffers leave the RSS).",
                 f"- Load average at the end: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}; "
                 f"wall time of the run {time.perf_counter() - start:.0f} s."]
        if any(r.name == "torch.func" and r.workload.setting is not None and r.status for r in rows):
            extra.append("- torch.func on conv4 is not timed because its meta-gradient is wrong: `vmap` of `grad` "
                         "through batch-statistics BatchNorm gets the second-order terms wrong in torch "
                         f"{torch.__version__} (in float64 too; the same torch.func code without `vmap` is exact), "
                         "the open pytorch/functorch#534 (batch_norm backward batching rule).")
        write_run("bench_peers", header, lines, "maml_ext against the peer libraries (higher, torchopt, learn2learn)", extra)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
