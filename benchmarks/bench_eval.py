"""Evaluation time of a fused-MLP learner: one op call for all steps, the per-step fused kernels
and the generic evaluation, alternating in one run.

    python benchmarks/bench_eval.py [--config sinusoid] [--repeats 3] [--threads 1] [--write]

Runs ``maml_ext.train.evaluate.evaluate`` (what ``maml-ext eval`` runs: every shot count of the
config, ``eval.num_tasks`` tasks, 0..``eval.steps`` steps, with the regression calibration pass)
on the config's model at its initialisation (the time does not depend on the weights), in three
ways, alternately: "one call" (now: ``train/fused_eval.py``, one ``ops.mlp_maml_eval`` call per
chunk of tasks for every step's query outputs), "per step" (the fused path before it: one
``ops.mlp_hvp`` and one ``ops.inner_update`` call per step, the query outputs by a batched
forward per step; kept below as the baseline) and "generic" (the generic inner loop and the grid
search of the mixture likelihood for every learner, as before both). It reports the medians of
wall and process CPU time and checks that all three give the same metrics. A second table times
only what the fused paths replace: ``predictive_samples`` (the query outputs after 0..steps steps)
on the held-out tasks of the first shot count, in the evaluator's chunks.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from maml_ext import ops, reference
from maml_ext.train import config, evaluate, fused_eval, loop
from results_md import cpu_model, write_run

MODES = ("generic", "per step", "one call")


def _generic(*args, **kwargs):
    return None  # evaluate.predictive_samples then runs the generic inner loop


def _grid_search_noise(samples, y, grid=evaluate.NOISE_GRID):
    """The noise fit as it was for every learner: the mixture likelihood at each grid value."""
    grid = grid.to(samples.dtype)
    scores = torch.stack([evaluate.mixture_log_likelihood(samples, y, s).flatten(1).mean(1) for s in grid], 1)
    return grid[scores.argmax(1)]


@torch.no_grad()
def _per_step(learner, batch, steps, lr):
    """The fused evaluation before ops.mlp_maml_eval: two op calls and a forward per step."""
    activation = learner.fused_spec.activation
    params = [p.detach() for p in learner._fused_call.params()]
    rates, per_step = fused_eval._rates(learner, steps, lr)
    outs = [reference.mlp_forward(params, batch.x_query, activation)]
    tasks = batch.x_support.shape[0]
    for s in range(steps):
        per_task = params if s else [p.expand(tasks, *p.shape) for p in params]
        _, grads, _ = ops.mlp_hvp(per_task, batch.x_support, batch.y_support, activation=activation, loss=learner.loss)
        params = ops.inner_update(params, grads, rates, s if per_step else None)
        outs.append(reference.mlp_forward(params, batch.x_query, activation))
    return torch.stack(outs)


def _timed(fn, mode: str) -> tuple[float, float, object]:
    originals = evaluate.fused_query_outputs, evaluate.fit_noise
    if mode == "generic":
        evaluate.fused_query_outputs, evaluate.fit_noise = _generic, _grid_search_noise
    elif mode == "per step":
        evaluate.fused_query_outputs = _per_step
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        results = fn()
        return time.perf_counter() - wall, time.process_time() - cpu, results
    finally:
        evaluate.fused_query_outputs, evaluate.fit_noise = originals


def _table(times: dict[str, list[tuple[float, float]]], what: str) -> list[str]:
    rows = [f"| {what} | wall s | CPU s | generic / this (CPU) | per step / this (wall) |", "|---|---|---|---|---|"]
    med = {m: (statistics.median(w for w, _ in times[m]), statistics.median(c for _, c in times[m])) for m in times}
    for mode in MODES:
        rows.append(f"| {mode} | {med[mode][0]:.3f} | {med[mode][1]:.3f} | {med['generic'][1] / med[mode][1]:.2f}x | "
                    f"{med['per step'][0] / med[mode][0]:.2f}x |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="sinusoid")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="replace this script's section of RESULTS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = config.load(args.config)
    run = loop.build(cfg)
    ecfg = cfg["eval"]
    batch = evaluate.held_out(run, ecfg["shots"][0], cfg)

    def adapt_only():
        gen = torch.Generator().manual_seed(0)
        return [evaluate.predictive_samples(run.learner, c, ecfg["steps"], ecfg.get("lr"), gen)
                for c in evaluate._chunks(batch, ecfg["chunk"])]

    whole: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
    adapt: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
    results, samples = {}, {}
    for _ in range(args.repeats):
        for mode in MODES:
            wall, cpu, results[mode] = _timed(lambda: evaluate.evaluate(run, cfg, progress=False), mode)
            whole[mode].append((wall, cpu))
            wall, cpu, samples[mode] = _timed(adapt_only, mode)
            adapt[mode].append((wall, cpu))
    for mode in MODES[:-1]:  # the same outputs and metrics every way
        for a, b in zip(samples["one call"], samples[mode]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        for shots, r in results["one call"]["shots"].items():
            for key in (k for k, v in r.items() if isinstance(v, dict) and "mean" in v):
                want = results[mode]["shots"][shots][key]["mean"]
                assert all(abs(x - y) <= 1e-4 * max(1.0, abs(y)) for x, y in zip(r[key]["mean"], want)), (mode, key)
    header = (f"{cpu_model()}; torch {torch.__version__}; threads {args.threads}; "
              f"{args.config}: {ecfg['num_tasks']} tasks x shots {ecfg['shots']} x 0..{ecfg['steps']} steps, "
              f"{ecfg['k_query']} query examples, chunks of {ecfg['chunk']}; median of {args.repeats}, alternating")
    rows = [*_table(whole, "`evaluate()` (all of `maml-ext eval`)"), "",
            *_table(adapt, f"adaptation only: `predictive_samples`, {ecfg['shots'][0]}-shot")]
    print(header)
    print("\n".join(rows))
    if args.write:
        write_run("bench_eval_one_call", header, rows,
                  heading="Evaluation in one op call per chunk (`bench_eval.py`, issue 14.5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
