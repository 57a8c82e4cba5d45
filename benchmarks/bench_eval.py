"""Evaluation time of a fused-MLP learner: the fused multi-step evaluation against the generic one.

    python benchmarks/bench_eval.py [--config sinusoid] [--repeats 3] [--threads 1] [--write]

Runs ``maml_ext.train.evaluate.evaluate`` (what ``maml-ext eval`` runs: every shot count of the
config, ``eval.num_tasks`` tasks, 0..``eval.steps`` steps, with the regression calibration pass)
on the config's model at its initialisation (the time does not depend on the weights), alternately
as now (the fused path of ``train/fused_eval.py`` and the closed-form noise fit of point learners)
and as before (the generic inner loop and the grid search of the mixture likelihood for every
learner), and reports the medians of wall and process CPU time. Both give the same metrics (checked here).
A second table times only what the fused path replaces: ``predictive_samples`` (the query outputs
after 0..steps steps) on the held-out tasks of the first shot count, in the evaluator's chunks;
the rest of ``evaluate`` (the calibration noise fit, the metrics) is the same either way.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from maml_ext.train import config, evaluate, loop
from results_md import cpu_model, write_run


def _generic(*args, **kwargs):
    return None  # evaluate.predictive_samples then runs the generic inner loop


def _grid_search_noise(samples, y, grid=evaluate.NOISE_GRID):
    """The noise fit as it was for every learner: the mixture likelihood at each grid value."""
    grid = grid.to(samples.dtype)
    scores = torch.stack([evaluate.mixture_log_likelihood(samples, y, s).flatten(1).mean(1) for s in grid], 1)
    return grid[scores.argmax(1)]


def _timed(fn, fused: bool) -> tuple[float, float, object]:
    originals = evaluate.fused_query_outputs, evaluate.fit_noise
    if not fused:
        evaluate.fused_query_outputs, evaluate.fit_noise = _generic, _grid_search_noise
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        results = fn()
        return time.perf_counter() - wall, time.process_time() - cpu, results
    finally:
        evaluate.fused_query_outputs, evaluate.fit_noise = originals


def _table(times: dict[bool, list[tuple[float, float]]], what: str, before: str, now: str) -> list[str]:
    rows = [f"| {what} | wall s | CPU s | before / now (CPU) |", "|---|---|---|---|"]
    med = {f: (statistics.median(w for w, _ in times[f]), statistics.median(c for _, c in times[f])) for f in times}
    for fused, name in ((False, f"before: {before}"), (True, f"now: {now}")):
        rows.append(f"| {name} | {med[fused][0]:.2f} | {med[fused][1]:.2f} | {med[False][1] / med[fused][1]:.2f}x |")
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

    whole: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    adapt: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    results = {}
    for _ in range(args.repeats):
        for fused in (False, True):
            wall, cpu, results[fused] = _timed(lambda: evaluate.evaluate(run, cfg), fused)
            whole[fused].append((wall, cpu))
            wall, cpu, _ = _timed(adapt_only, fused)
            adapt[fused].append((wall, cpu))
    for shots, r in results[True]["shots"].items():  # the same numbers either way
        for key in ("mean", "noise_std"):
            want = results[False]["shots"][shots][key]
            assert all(abs(a - b) <= 1e-4 * max(1.0, abs(b)) for a, b in zip(r[key], want)), (shots, key)
    header = (f"{cpu_model()}; torch {torch.__version__}; threads {args.threads}; "
              f"{args.config}: {ecfg['num_tasks']} tasks x shots {ecfg['shots']} x 0..{ecfg['steps']} steps, "
              f"{ecfg['k_query']} query examples, chunks of {ecfg['chunk']}; median of {args.repeats}, alternating")
    rows = [*_table(whole, "`evaluate()` (all of `maml-ext eval`)", "generic inner loop, grid-search noise fit",
                    "fused kernels, closed-form noise fit"), "",
            *_table(adapt, f"adaptation only: `predictive_samples`, {ecfg['shots'][0]}-shot", "generic inner loop",
                    "fused kernels")]
    print(header)
    print("\n".join(rows))
    if args.write:
        write_run("bench_eval", header, rows, heading="Evaluation: fused multi-step vs generic (`bench_eval.py`)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
