"""A user's own ``nn.Sequential`` MLP: the automatically detected fused path against the generic
(vmap) path, same model, same batch, same run.

    python benchmarks/bench_front.py [--threads 1] [--reps 30]

One line per configuration: median wall time of one meta-iteration (meta_loss + backward).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from maml_ext.algorithms import MAML
from maml_ext.tasks.sinusoid import Sinusoid

CONFIGS = (  # hidden width, tasks, inner steps, α (the paper's sinusoid config; the large one)
    (40, 25, 1, 0.01),
    (256, 100, 5, 0.001),
)


def median_ms(learner: MAML, batch, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        learner.zero_grad(set_to_none=True)
        learner.meta_loss(batch).backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for hidden, tasks, steps, lr in CONFIGS:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        batch = Sinusoid().sample(tasks, 10, 10, torch.Generator().manual_seed(0))
        fused, generic = MAML(model, lr=lr, steps=steps), MAML(model, lr=lr, steps=steps, fused=False)
        assert fused.fused_spec is not None, "the plain MLP was not detected"
        reps = max(3, args.reps // (10 if hidden > 100 else 1))
        median_ms(fused, batch, 2), median_ms(generic, batch, 2)  # warm-up
        f, g = median_ms(fused, batch, reps), median_ms(generic, batch, reps)
        print(f"nn.Sequential 1-{hidden}-{hidden}-1, {tasks} tasks, K=10, {steps} step(s), {args.threads} thread(s): "
              f"auto-fused {f:.2f} ms, generic {g:.2f} ms ({g / f:.1f}x)")


if __name__ == "__main__":
    main()
