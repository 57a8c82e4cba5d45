"""Meta-iterations per second of data-parallel training (torch.distributed, gloo) with 1 and 2 processes.

    python benchmarks/bench_scaling.py [--quick] [--write]

One meta-iteration is what ``maml-ext train`` does per step: every rank samples the full
meta-batch from the shared generator and keeps its slice, computes its tasks' meta-gradient,
all-reduces gradients and loss, and takes the Adam step (no checkpoints or metrics). Every setting
runs in processes started by ``maml_ext.train.distributed.launch`` (``--nproc``'s launcher), the
1-process rows too, so all rows pay the same start-up and none is timed. Printed per setting:
processes x threads, median meta-iterations/s over the timed blocks, and the share of an
iteration spent sampling the full meta-batch on every rank (the price of identical tasks).
``--write`` replaces this script's section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from maml_ext.train import config, distributed, loop
from results_md import replace_section


# name -> (config overrides on the packaged sinusoid config, iterations per timed block)
SETTINGS = {
    "sinusoid paper: MLP 1-40-40-1, 25 tasks, K=10, 1 step": ([], 300),
    "large MLP 1-256-256-1, 100 tasks, K=10, 5 steps": (["model.hidden=[256, 256]", "train.meta_batch=100", "algorithm.steps=5"], 12),
}
LAYOUTS = ((1, 1), (1, 2), (2, 1))  # (processes, threads per process)


def _measure(overrides: list[str], iterations: int, blocks: int, threads: int, result: Path) -> None:
    torch.set_num_threads(threads)  # after launch's default share
    shard = distributed.current()
    run = loop.build(config.load("sinusoid", overrides))
    learner, tcfg = run.learner, run.config["train"]
    optimizer = torch.optim.Adam(learner.parameters(), lr=tcfg["meta_lr"])
    tasks = torch.Generator().manual_seed(0)
    shard.prepare(learner, tcfg["meta_batch"])

    def step(it: int) -> float:
        t = time.perf_counter()
        batch = run.family.sample(tcfg["meta_batch"], tcfg["k_support"], tcfg["k_query"], tasks)
        sampled = time.perf_counter() - t
        optimizer.zero_grad(set_to_none=True)
        shard.backward(learner, batch, it)
        optimizer.step()
        return sampled

    for it in range(max(3, iterations // 10)):  # warm-up
        step(it)
    rates, sampling = [], 0.0
    for _ in range(blocks):
        t0 = time.perf_counter()
        sampling += sum(step(it) for it in range(iterations))
        rates.append(iterations / (time.perf_counter() - t0))
    if shard.is_main:
        share = sampling / sum(iterations / r for r in rates)
        result.write_text(json.dumps({"it_s": statistics.median(rates), "sampling": share}))


def measure(overrides: list[str], iterations: int, blocks: int, procs: int, threads: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        distributed.launch(procs, _measure, overrides, iterations, blocks, threads, result)
        return json.loads(result.read_text())


def table(quick: bool) -> str:
    blocks = 2 if quick else 5
    lines = [
        f"`python benchmarks/bench_scaling.py{' --quick' if quick else ''}`: torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, float32, gloo, "
        f"median of {blocks} timed blocks after a warm-up; 1-minute load average before: {os.getloadavg()[0]:.1f}.",
        "",
        "| setting | processes x threads | meta-iterations/s | vs 1x1 | sampling share |",
        "|---|---|---|---|---|",
    ]
    for name, (overrides, iterations) in SETTINGS.items():
        if quick:
            iterations = max(3, iterations // 10)
        base = None
        for procs, threads in LAYOUTS:
            r = measure(overrides, iterations, blocks, procs, threads)
            base = base or r["it_s"]
            lines.append(f"| {name} | {procs} x {threads} | {r['it_s']:.1f} | {r['it_s'] / base:.2f} | {100 * r['sampling']:.1f} % |")
            print(lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few iterations (a smoke test, not a measurement)")
    p.add_argument("--write", action="store_true", help="replace this script's section of RESULTS.md")
    args = p.parse_args()
    text = table(args.quick)
    print(text)
    if args.write:
        replace_section("bench_scaling", [text])


if __name__ == "__main__":
    main()
