"""BMAML / PLATIPUS meta-iterations per second on the sinusoid, fused MLP op vs the generic path.

One meta-iteration = ``meta_loss`` + ``backward`` for a meta-batch of 25 tasks, K = 10 support
and 10 query points, 1-40-40-1 ReLU MLP, one inner step (the paper's sinusoid setting). MAML
(fused ``mlp_maml_loss``) is the reference, on the 25 tasks and on 25·S tasks ("the same
particles": as many adapted parameter sets as a learner with S sets per task adapts). The last
column is each row's CPU time over that of MAML on 25·S tasks. Five BMAML rows rerun earlier
implementations in the same process, for before/after in one run: "loss node over the composed
ops" runs the Chaser loss as one autograd node over ``mlp_hvp`` + ``svgd_step`` calls
(``ComposedChaser``, the implementation before the engine op ``mlp_bmaml_chaser`` that
``_MLPChaser`` calls now), "steps as _MLPSVGDStep nodes" runs one node per SVGD step and the Chaser
loss in autograd (the implementation before that), "query loss by the generic forward" computes the likelihood's
query losses by the generic batched forward instead of ``_MLPRowLoss``, "steps as composed ops" runs the
fused ops ``mlp_hvp`` and ``svgd_step`` composed through autograd instead of one
``_MLPSVGDStep`` node per SVGD step (the implementation before issue 14.4's step node), "SVGD in
composed PyTorch ops" also replaces ``ops.svgd_step`` by ``maml_ext.reference.svgd_step`` (before
the fused SVGD op); "its compiled ops alone" times the bare op sequence of that iteration without
autograd (see ``compiled_ops_only``). ``--write`` updates this script's section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from bench_classification import rate
from maml_ext import ops, reference
from maml_ext.algorithms import bmaml, build_algorithm
from maml_ext.algorithms.base import task_loss
from maml_ext.algorithms.bayes import expand_rows
from maml_ext.models.mlp import MLP
from maml_ext.tasks import TaskBatch
from maml_ext.tasks.sinusoid import Sinusoid
from results_md import write_run

ROWS: list[tuple[str, str, dict[str, Any]]] = [
    ("MAML", "maml", {}),
    ("MAML, 125 tasks (25 × 5 sets)", "maml", {}),
    ("BMAML M=1, likelihood", "bmaml", {"particles": 1, "objective": "likelihood"}),
    ("BMAML M=5, Chaser", "bmaml", {"particles": 5}),
    ("BMAML M=5, Chaser, loss node over the composed ops", "bmaml", {"particles": 5}),
    ("BMAML M=5, Chaser, steps as _MLPSVGDStep nodes", "bmaml", {"particles": 5}),
    ("BMAML M=5, Chaser, steps as composed ops", "bmaml", {"particles": 5}),
    ("BMAML M=5, Chaser, SVGD in composed PyTorch ops", "bmaml", {"particles": 5}),
    ("BMAML M=5, Chaser, its compiled ops alone", "bmaml", {"particles": 5}),
    ("BMAML M=5, likelihood", "bmaml", {"particles": 5, "objective": "likelihood"}),
    ("BMAML M=5, likelihood, query loss by the generic forward", "bmaml", {"particles": 5, "objective": "likelihood"}),
    ("BMAML M=5, Chaser, first-order", "bmaml", {"particles": 5, "first_order": True}),
    ("PLATIPUS, 1 sample", "platipus", {}),
    ("PLATIPUS, 5 samples", "platipus", {"samples": 5}),
]


def step(learner: torch.nn.Module):
    def run(batch: TaskBatch) -> list[torch.Tensor]:
        learner.zero_grad(set_to_none=True)
        learner.meta_loss(batch).backward()
        return [p.grad for p in learner.parameters() if p.grad is not None]

    return run


def sets_rows(sets: list[Tensor]) -> list[Tensor]:
    """``[T, M, ...]`` -> rows ``[T·M, ...]`` (views)."""
    return [s.view(-1, *s.shape[2:]) for s in sets]


class ComposedChaser(torch.autograd.Function):
    """The previous ``bmaml._MLPChaser`` (before ``mlp_bmaml_chaser``), kept here for the
    before/after row: the Chaser loss of a fused MLP on CPU as one autograd node over the compiled ops, from the
    initial particles ``[M, ...]`` (one tensor per parameter) to

        chase = Σ_t Σ_m ‖θ^n_{t,m} − stopgrad(θ^{n+s}_{t,m})‖² / T

    and the particles' mean query loss (not differentiable; the reported value).
    Forward: n SVGD steps (``mlp_hvp`` gradients + ``svgd_step``) from every task's copy of the
    particles, then s leader steps on support + query. Backward: from d chase / dθ^n =
    2 (θ^n − θ^{n+s}) / T, per inner step in reverse ``svgd_step_backward`` + one ``mlp_hvp`` with
    the scores' cotangent as direction (dθ = θ̄ + H ḡ), and the sum over tasks. This is the
    meta-gradient of :class:`bmaml._MLPSVGDStep` nodes composed with the Chaser loss through autograd,
    without the per-step nodes, the task-copy expansion's graph and the loss's elementwise nodes.
    ``first_order``: every step's Jacobian is the identity (as :class:`bmaml._MLPSVGDStep`'s).
    """

    @staticmethod
    def forward(ctx, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor, x_all: Tensor, y_all: Tensor, steps: int,
                leader_steps: int, lr: float, first_order: bool, activation: str, loss: str,
                *init: Tensor) -> tuple[Tensor, Tensor]:
        hvp, svgd = torch.ops.maml_ext.mlp_hvp, torch.ops.maml_ext.svgd_step
        tasks = xs.shape[0] // init[0].shape[0]
        sets = [p.detach().unsqueeze(0).expand(tasks, *p.shape).contiguous() for p in init]
        saved: list[Tensor] = []  # per step: its particles, scores, kernel and bandwidth

        def step(sets: list[Tensor], x: Tensor, y: Tensor, keep: bool) -> list[Tensor]:
            _, grads, _ = hvp(sets_rows(sets), x, y, [], None, activation, loss)
            scores = [g.view(s.shape) for g, s in zip(grads, sets)]
            moved, kernel, bandwidth = svgd(sets, scores, -1.0, lr)
            if keep:
                saved.extend([*sets, *scores, kernel, bandwidth])
            return list(moved)

        for _ in range(steps):
            sets = step(sets, xs, ys, not first_order)
        query, _, _ = hvp(sets_rows(sets), xq, yq, [], None, activation, loss)  # the op's loss, no R-pass
        leader = sets
        for _ in range(leader_steps):
            leader = step(leader, x_all, y_all, False)
        diffs = [c - lead for c, lead in zip(sets, leader)]
        chase = sum(torch.dot(d.view(-1), d.view(-1)) for d in diffs) / tasks
        ctx.args = (tasks, len(init), steps, lr, first_order, activation, loss)
        ctx.save_for_backward(xs, ys, *diffs, *saved)
        query = query.mean()
        ctx.mark_non_differentiable(query)
        return chase, query

    @staticmethod
    @once_differentiable
    def backward(ctx, d_chase: Tensor, _: Tensor | None) -> tuple[Tensor | None, ...]:
        tasks, n, steps, lr, first_order, activation, loss = ctx.args
        xs, ys, *rest = ctx.saved_tensors
        d = [diff * (d_chase * (2.0 / tasks)) for diff in rest[:n]]
        per_step = 2 * n + 2
        for s in reversed(range(0 if first_order else steps)):
            block = rest[n + s * per_step: n + (s + 1) * per_step]
            sets, scores, (kernel, bandwidth) = block[:n], block[n:2 * n], block[2 * n:]
            d_sets, d_scores = torch.ops.maml_ext.svgd_step_backward(d, list(sets), list(scores), -1.0, lr, kernel,
                                                                     bandwidth)
            _, _, hv = torch.ops.maml_ext.mlp_hvp(sets_rows(list(sets)), xs, ys, sets_rows(list(d_scores)), None,
                                                  activation, loss)
            d = [ds.add_(h.view(ds.shape)) for ds, h in zip(d_sets, hv)]
        return (None,) * 12 + tuple(x.sum(0) for x in d)


def composed_chaser_loss(learner: bmaml.BMAML):
    """``learner.meta_loss`` (Chaser objective) with the loss as one :class:`ComposedChaser` node."""

    def meta_loss(batch: TaskBatch, iteration: int = 0) -> Tensor:
        m, spec, init = learner.num_particles, learner.fused_spec, learner.initial_particles()
        x_all, y_all = learner._leader_data(batch)
        chase, query = ComposedChaser.apply(
            expand_rows(batch.x_support, m), expand_rows(batch.y_support, m), expand_rows(batch.x_query, m),
            expand_rows(batch.y_query, m), x_all, y_all, learner.steps, learner.leader_steps, learner.lr,
            learner.first_order, spec.activation, learner.loss, *(init[n] for n in spec.param_names))
        return query + chase - chase.detach()

    return meta_loss


def check_same_meta_grad(learner: bmaml.BMAML, meta_loss, batch: TaskBatch, what: str) -> None:
    """``meta_loss``'s meta-gradient equals the learner's own (checked before timing)."""
    expected = step(learner)(batch)
    learner.zero_grad(set_to_none=True)
    meta_loss(batch).backward()
    got = [p.grad for p in learner.parameters() if p.grad is not None]
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6, msg=what)


def compiled_ops_only(learner: bmaml.BMAML):
    """The Chaser meta-gradient (one inner step, one leader step) as the bare sequence of its
    compiled ops, without autograd or the learner's bookkeeping: a lower bound for any
    composition of today's ops (checked against the learner's own meta-gradient before timing)."""
    hvp, svgd, svgd_back = torch.ops.maml_ext.mlp_hvp, torch.ops.maml_ext.svgd_step, torch.ops.maml_ext.svgd_step_backward
    names, act, m, lr = learner.fused_spec.param_names, learner.fused_spec.activation, learner.num_particles, learner.lr

    def rows_of(t: torch.Tensor) -> torch.Tensor:  # [T, M, ...] -> [T·M, ...]
        return t.view(-1, *t.shape[2:])

    @torch.no_grad()
    def run(batch: TaskBatch) -> list[torch.Tensor]:
        tasks = batch.num_tasks
        init = learner.initial_particles()
        sets = [init[n].unsqueeze(0).expand(tasks, *init[n].shape).contiguous() for n in names]
        x, y = expand_rows(batch.x_support, m), expand_rows(batch.y_support, m)
        _, g0, _ = hvp([rows_of(s) for s in sets], x, y, [], None, act, learner.loss)
        scores = [g.view(s.shape) for g, s in zip(g0, sets)]
        chaser, kernel, bandwidth = svgd(sets, scores, -1.0, lr)
        hvp([rows_of(c) for c in chaser], expand_rows(batch.x_query, m), expand_rows(batch.y_query, m), [], None,
            act, learner.loss)  # the reported query loss
        x_all = expand_rows(torch.cat([batch.x_support, batch.x_query], 1), m)
        y_all = expand_rows(torch.cat([batch.y_support, batch.y_query], 1), m)
        _, g1, _ = hvp([rows_of(c) for c in chaser], x_all, y_all, [], None, act, learner.loss)
        leader, _, _ = svgd(list(chaser), [g.view(c.shape) for g, c in zip(g1, chaser)], -1.0, lr)
        d_chaser = [(c - lead).mul_(2.0 / tasks) for c, lead in zip(chaser, leader)]
        d_sets, d_scores = svgd_back(d_chaser, sets, scores, -1.0, lr, kernel, bandwidth)
        _, _, hv = hvp([rows_of(s) for s in sets], x, y, [rows_of(d) for d in d_scores], None, act, learner.loss)
        return [d.add_(h.view(d.shape)).sum(0) for d, h in zip(d_sets, hv)]

    return run


def check_compiled_ops_only(learner: bmaml.BMAML, batch: TaskBatch) -> None:
    learner.zero_grad(set_to_none=True)
    learner.meta_loss(batch).backward()
    named = dict(learner.model.named_parameters())
    expected = {n: torch.cat([named[n].grad.unsqueeze(0), e.grad]) for n, e in zip(learner.adapt_names, learner.extra)}
    got = compiled_ops_only(learner)(batch)
    for n, g in zip(learner.fused_spec.param_names, got):
        torch.testing.assert_close(g, expected[n], rtol=1e-4, atol=1e-6, msg=f"compiled ops alone: {n}")


def generic_row_losses(learner: bmaml.BMAML):
    """The row losses by the generic batched forward (before ``_MLPRowLoss``)."""
    return lambda rows, x, y: task_loss(learner.row_predict(rows, x), y, learner.loss)


def sets_of(options: dict[str, Any]) -> int:
    return options.get("particles", options.get("samples", 1))


def run(args: argparse.Namespace) -> list[str]:
    batches = {n: Sinusoid().sample(n, 10, 10, torch.Generator().manual_seed(0)) for n in (25, 125)}
    rows = [
        "| algorithm | path | meta-it/s (wall) | meta-it/s (CPU time) | fused vs generic (CPU time) | CPU time vs MAML on 25·S tasks |",
        "|---|---|---|---|---|---|",
    ]
    print(rows[0], flush=True)
    maml_cpu: dict[int, float] = {}
    fused_step, node = ops.svgd_step, bmaml.step_node_available
    for label, name, options in ROWS:
        found = {}
        tasks = 125 if label.startswith("MAML, 125") else 25
        composed = "composed" in label
        step_nodes = "_MLPSVGDStep nodes" in label
        generic_loss = "generic forward" in label
        loss_node = "loss node over" in label
        single = name == "maml" or composed or step_nodes or generic_loss or loss_node or "alone" in label
        for path in (("fused",) if single else ("fused", "generic")):
            torch.manual_seed(0)
            extra = {} if name == "maml" else {"fused": path == "fused"}
            learner = build_algorithm(name, MLP(1, 1, init="trunc_normal"), **options, **extra)
            if composed:
                bmaml.step_node_available = lambda t: False
            if step_nodes:
                learner._chaser_node_available = lambda t: False
            if generic_loss:
                learner.row_losses = generic_row_losses(learner)
            if "PyTorch ops" in label:
                ops.svgd_step = reference.svgd_step
            fn = step(learner)
            if loss_node:
                check_same_meta_grad(learner, composed_chaser_loss(learner), batches[tasks], label)
                learner.meta_loss = composed_chaser_loss(learner)
            if "compiled ops alone" in label:
                check_compiled_ops_only(learner, batches[tasks])
                fn = compiled_ops_only(learner)
            try:
                found[path] = rate(fn, batches[tasks], args.min_time, lambda: None)
            finally:
                ops.svgd_step, bmaml.step_node_available = fused_step, node
        if name == "maml":
            maml_cpu[tasks] = found["fused"][1]
        for path, (wall, cpu) in found.items():
            speedup = f"{cpu / found['generic'][1]:.2f}×" if path == "fused" and "generic" in found else "–"
            same_sets = maml_cpu.get(25 * sets_of(options)) if name != "maml" else maml_cpu[tasks] if tasks == 25 else None
            ratio = f"{same_sets / cpu:.1f}×" if same_sets else "–"
            rows.append(f"| {label} | {path} | {wall:.1f} | {cpu:.1f} | {speedup} | {ratio} |")
            print(rows[-1], flush=True)
    return rows


def interleaved(rounds: int, iterations: int) -> list[str]:
    """MAML-125 and the M = 5 Chaser iteration (engine op, and the previous loss node over the
    composed ops) timed in alternating rounds of ``iterations`` meta-iterations in one process
    (CPU time): the best and median round ratios, less exposed to load drifting between rows."""
    batches = {n: Sinusoid().sample(n, 10, 10, torch.Generator().manual_seed(0)) for n in (25, 125)}
    torch.manual_seed(0)
    maml = step(build_algorithm("maml", MLP(1, 1, init="trunc_normal")))
    torch.manual_seed(0)
    learner = build_algorithm("bmaml", MLP(1, 1, init="trunc_normal"), particles=5, fused=True)
    op = step(learner)
    torch.manual_seed(0)
    before = build_algorithm("bmaml", MLP(1, 1, init="trunc_normal"), particles=5, fused=True)
    check_same_meta_grad(before, composed_chaser_loss(before), batches[25], "loss node over the composed ops")
    before.meta_loss = composed_chaser_loss(before)
    runs = {"MAML-125": (maml, batches[125]), "Chaser, engine op": (op, batches[25]),
            "Chaser, loss node over the composed ops": (step(before), batches[25])}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for fn, batch in runs.values():
        fn(batch)  # warm-up
    for _ in range(rounds):
        for name, (fn, batch) in runs.items():
            start = time.process_time()
            for _ in range(iterations):
                fn(batch)
            times[name].append((time.process_time() - start) / iterations * 1e3)
    lines = [f"interleaved: {rounds} rounds of {iterations} meta-iterations, CPU ms per iteration (best / median), "
             "ratio to MAML-125 (best / median)"]
    base = times["MAML-125"]
    for name, ts in times.items():
        lines.append(f"  {name}: {min(ts):.3f} / {statistics.median(ts):.3f} ms, "
                     f"{min(ts) / min(base):.2f}× / {statistics.median(ts) / statistics.median(base):.2f}×")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--min-time", type=float, default=3.0, help="seconds of timing per row")
    p.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    p.add_argument("--interleave", type=int, metavar="ROUNDS", default=0,
                   help="instead of the table: MAML-125 and the M = 5 Chaser rows in alternating rounds")
    p.add_argument("--iterations", type=int, default=30, help="meta-iterations per round (--interleave)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    header = (f"torch {torch.__version__}, CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
              f"{torch.get_num_threads()} thread(s), float32, sinusoid meta-batch 25, K = 10, 1 inner step")
    print(header, flush=True)
    if args.interleave:
        print("\n".join(interleaved(args.interleave, args.iterations)))
        return 0
    rows = run(args)
    if args.write:
        write_run("bench_bayes", header, rows, "BMAML and PLATIPUS: meta-iterations/s, fused MLP op vs generic path")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
