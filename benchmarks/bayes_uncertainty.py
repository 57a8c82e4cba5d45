"""Do BMAML particles and PLATIPUS samples represent ambiguity? Sinusoid tasks whose support points
lie in a narrow x-window (ambiguous) vs spread over [−5, 5] (non-ambiguous), against MAML.

Every learner is meta-trained here on a 50/50 mix of both kinds of task (K support points,
``--k-query`` query points uniform on [−5, 5]), then evaluated on ``--eval-tasks`` fresh tasks of
each kind, with queries on a 100-point grid over [−5, 5]. Metrics use only the sampled functions
f_1..f_S after ``--eval-steps`` adaptation steps (no noise σ fitted to data):

- spread far / near / all: the std over the S functions, averaged over grid points farther than 1
  from every support point / within 0.5 of one / over the whole grid (MAML: S = 1, spread 0);
- spread other half: averaged over the half of [−5, 5] (x < 0 or x > 0) opposite the mean of the
  support x, the same rule for both kinds of task: on an ambiguous task it is the range the
  support does not constrain, on a non-ambiguous one it holds about half the support points;
  RMSE other half: the sample mean's RMSE there (a calibrated spread follows it);
- envelope coverage: the fraction of grid targets inside [min_s f_s, max_s f_s]. For S exchangeable
  draws from a calibrated predictive a new value falls inside with probability (S − 1)/(S + 1);
- NLL and 90% coverage of the moment-matched predictive N(mean_s f_s, var_s f_s + σ0²) with a
  fixed floor σ0 = ``--sigma0`` (a constant chosen in advance, the same for every learner, so that
  a point predictor such as MAML has a finite NLL);
- MSE of the sample mean;
- by distance to the nearest support point (bins BINS, pooled over tasks): the mean spread against
  the RMSE of the sample mean; a calibrated predictive has spread ≈ RMSE in every bin.

Each is a mean over tasks with a 95% CI (1.96·std/√n). ``--plot`` draws the sampled functions on
a few ambiguous tasks (the qualitative figures of the PLATIPUS and BMAML papers).
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import time
from pathlib import Path

import torch
from torch import Tensor

from maml_ext.algorithms import build_algorithm
from maml_ext.models.mlp import MLP
from maml_ext.tasks import TaskBatch
from maml_ext.tasks.sinusoid import Sinusoid
from maml_ext.train.evaluate import predictive_samples

WINDOW = 1.0  # width of the ambiguous tasks' support window
GRID = torch.linspace(-5.0, 5.0, 100).view(1, -1, 1)

# name -> (algorithm, options). MAML adapts with SGD; BMAML's particles by SVGD; PLATIPUS samples
# initialisations from its learned prior, then takes SGD steps. The Bayesian settings differ from
# the library defaults where those collapse the sets; "(uncertainty)" are the documented settings
# (docs/bayesian-uncertainty.md), the others the variants that show which setting matters.
LEARNERS: dict[str, tuple[str, dict]] = {
    "MAML": ("maml", {}),
    "BMAML (defaults)": ("bmaml", {"particles": 5}),
    "BMAML (likelihood, 1 step)": ("bmaml", {"particles": 5, "objective": "likelihood", "init_noise": 0.3}),
    "BMAML (uncertainty)": ("bmaml", {"particles": 5, "objective": "likelihood", "init_noise": 0.3, "steps": 3}),
    "BMAML (uncertainty, temperature 0.5)": ("bmaml", {"particles": 5, "objective": "likelihood", "init_noise": 0.3, "steps": 3, "temperature": 0.5}),
    "BMAML (uncertainty, M = 10)": ("bmaml", {"particles": 10, "objective": "likelihood", "init_noise": 0.3, "steps": 3}),
    "BMAML (Chaser, init_noise 0.3)": ("bmaml", {"particles": 5, "init_noise": 0.3}),
    "PLATIPUS (defaults)": ("platipus", {"samples": 5, "test_samples": 10}),
    "PLATIPUS (init_std 0.05, KL 0.01, 1 step)": ("platipus", {"samples": 5, "test_samples": 10, "init_std": 0.05, "kl_weight": 0.01}),
    "PLATIPUS (init_std 0.1, KL 0.01, 3 steps)": ("platipus", {"samples": 5, "test_samples": 10, "init_std": 0.1, "kl_weight": 0.01, "steps": 3}),
    "PLATIPUS (uncertainty)": ("platipus", {"samples": 5, "test_samples": 10, "init_std": 0.1, "kl_weight": 0.1, "steps": 3}),
    "PLATIPUS (uncertainty, temperature 0.3)": ("platipus", {"samples": 5, "test_samples": 10, "init_std": 0.1, "kl_weight": 0.1, "steps": 3, "temperature": 0.3}),
    "PLATIPUS (uncertainty, temperature 0.1)": ("platipus", {"samples": 5, "test_samples": 10, "init_std": 0.1, "kl_weight": 0.1, "steps": 3, "temperature": 0.1}),
    "PLATIPUS (uncertainty, temperature 0.1, S = 10)": ("platipus", {"samples": 10, "test_samples": 10, "init_std": 0.1, "kl_weight": 0.1, "steps": 3, "temperature": 0.1}),
    "PLATIPUS (init_std 0.05, KL 0.1, 3 steps)": ("platipus", {"samples": 5, "test_samples": 10, "init_std": 0.05, "kl_weight": 0.1, "steps": 3}),
    "PLATIPUS (init_std 0.25, 3 steps)": ("platipus", {"samples": 5, "test_samples": 10, "init_std": 0.25, "kl_weight": 0.01, "steps": 3}),
}
# Distance bins (to the nearest support point) of the calibration-by-distance table.
BINS = ((0.0, 0.5), (0.5, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, math.inf))  # [lo, hi)


def sample_tasks(family: Sinusoid, tasks: int, shots: int, queries: Tensor | int, ambiguous: bool,
                 gen: torch.Generator) -> TaskBatch:
    """Tasks with support in a window of width WINDOW (centre uniform in [−4, 4]) when
    ``ambiguous``, else uniform on [−5, 5]; queries: ``queries`` uniform points, or a fixed grid."""
    base = family.sample(tasks, shots, 1, gen)
    if ambiguous:
        centre = torch.rand(tasks, 1, 1, generator=gen) * 8.0 - 4.0
        xs = centre + (torch.rand(tasks, shots, 1, generator=gen) - 0.5) * WINDOW
    else:
        xs = torch.rand(tasks, shots, 1, generator=gen) * 10.0 - 5.0
    xq = torch.rand(tasks, queries, 1, generator=gen) * 10.0 - 5.0 if isinstance(queries, int) else queries.expand(tasks, -1, -1)
    return TaskBatch(xs, family.curve(base.info, xs), xq, family.curve(base.info, xq), base.info)


def scale_parameters(learner: torch.nn.Module) -> list[torch.nn.Parameter]:
    """PLATIPUS's log-variances and log-step-sizes (empty for other learners)."""
    return [p for n, p in learner.named_parameters() if n.split(".")[0] in ("prior_logvar", "q_logvar", "log_gamma_p", "log_gamma_q")]


def optimizer(learner: torch.nn.Module, args: argparse.Namespace) -> torch.optim.Adam:
    """Adam at --meta-lr; PLATIPUS's log-variances and log-step-sizes at --variance-lr if given."""
    scales = scale_parameters(learner) if args.variance_lr is not None else []
    rest = [p for p in learner.parameters() if all(p is not q for q in scales)]
    return torch.optim.Adam([{"params": rest}] + ([{"params": scales, "lr": args.variance_lr}] if scales else []), lr=args.meta_lr)


def platipus_state(learner: torch.nn.Module) -> str:
    """Per parameter tensor: mean σ_θ, mean √v_q, γ_p, γ_q (the learned scales of PLATIPUS)."""
    def row(values: list[float]) -> str:
        return " ".join(f"{v:.4f}" for v in values)

    return (f"sigma_theta [{row([(0.5 * t).exp().mean().item() for t in learner.prior_logvar])}] "
            f"sqrt_v_q [{row([(0.5 * t).exp().mean().item() for t in learner.q_logvar])}] "
            f"gamma_p [{row([t.exp().item() for t in learner.log_gamma_p])}] "
            f"gamma_q [{row([t.exp().item() for t in learner.log_gamma_q])}]")


def train(name: str, args: argparse.Namespace) -> tuple[torch.nn.Module, float]:
    algorithm, options = LEARNERS[name]
    torch.manual_seed(args.seed)
    options = {"lr": args.inner_lr, "steps": args.steps, **options, **dict(args.set)}
    learner = build_algorithm(algorithm, MLP(1, 1), **options)
    opt = optimizer(learner, args)
    trace = args.trace if algorithm == "platipus" else 0
    family, gen = Sinusoid(), torch.Generator().manual_seed(args.seed)
    half = args.meta_batch // 2
    start = time.process_time()
    for it in range(args.iterations):
        if trace and it % trace == 0:
            print(f"<!-- {name} iteration {it}: {platipus_state(learner)} -->", flush=True)
        parts = [sample_tasks(family, n, args.shots, args.k_query, amb, gen) for n, amb in ((half, True), (args.meta_batch - half, False))]
        batch = TaskBatch(*(torch.cat([getattr(p, f) for p in parts]) for f in ("x_support", "y_support", "x_query", "y_query")))
        opt.zero_grad(set_to_none=True)
        learner.meta_loss(batch).backward()
        opt.step()
    if trace:
        print(f"<!-- {name} iteration {args.iterations}: {platipus_state(learner)} -->", flush=True)
    return learner, time.process_time() - start


def mean_ci(v: Tensor) -> tuple[float, float]:
    return v.mean().item(), 1.96 * v.std().item() / math.sqrt(v.numel())


def support_distance(batch: TaskBatch) -> Tensor:
    """Distance ``[T, N]`` of every query point to its task's nearest support point."""
    return (batch.x_query - batch.x_support.transpose(1, 2)).abs().min(-1).values


@torch.no_grad()
def by_distance(samples: Tensor, batch: TaskBatch) -> list[tuple[float, float, float]]:
    """Per bin of BINS, pooled over tasks and grid points: (share of the grid, mean spread, RMSE of
    the sample mean). A calibrated predictive has spread ≈ RMSE in every bin."""
    dist, spread = support_distance(batch), samples.std(1, unbiased=False)[..., 0]
    err = (samples.mean(1) - batch.y_query)[..., 0]
    out = []
    for lo, hi in BINS:
        m = (dist >= lo) & (dist < hi)
        out.append((m.float().mean().item(), spread[m].mean().item(), err[m].pow(2).mean().sqrt().item()))
    return out


@torch.no_grad()
def metrics(samples: Tensor, batch: TaskBatch, sigma0: float) -> dict[str, Tensor]:
    """Per-task metrics ``[T]`` of ``samples [T, S, N, 1]`` on the grid (see the module docstring)."""
    y, s = batch.y_query, samples
    mean, std = s.mean(1), s.std(1, unbiased=False)
    dist = support_distance(batch)
    far, near = (dist > 1.0).float(), (dist < 0.5).float()
    other = (batch.x_query[..., 0] * batch.x_support.mean(1) < 0).float()  # [T, N]: the half opposite the support
    spread = std[..., 0]
    scale = (std.pow(2) + sigma0**2).sqrt()
    z = (y - mean) / scale
    nll = 0.5 * z.pow(2) + scale.log() + 0.5 * math.log(2 * math.pi)
    inside = ((y >= s.min(1).values) & (y <= s.max(1).values)).float()
    return {
        "spread far": (spread * far).sum(1) / far.sum(1).clamp_min(1),
        "spread near": (spread * near).sum(1) / near.sum(1).clamp_min(1),
        "spread other half": (spread * other).sum(1) / other.sum(1).clamp_min(1),
        "RMSE other half": ((mean - y)[..., 0].pow(2) * other).sum(1).div(other.sum(1).clamp_min(1)).sqrt(),
        "spread all": spread.mean(1),
        "envelope coverage": inside.flatten(1).mean(1),
        "NLL": nll.flatten(1).mean(1),
        "coverage 90%": (z.abs() <= 1.6449).float().flatten(1).mean(1),
        "MSE": (mean - y).pow(2).flatten(1).mean(1),
    }


def eval_seed(args: argparse.Namespace) -> int:
    """Seed of the evaluation tasks: ``--eval-seed``, else ``--seed`` + 1000."""
    return args.seed + 1000 if args.eval_seed is None else args.eval_seed


def evaluate(learner: torch.nn.Module, args: argparse.Namespace) -> dict[int, dict[str, tuple[dict[str, Tensor], list]]]:
    """Per number of test steps in ``--eval-steps``, per task kind: the per-task metrics and the
    by-distance bins (one adaptation run; the counts are read off its trajectory)."""
    gen = torch.Generator().manual_seed(eval_seed(args))
    out: dict[int, dict] = {k: {} for k in args.eval_steps}
    for kind, amb in (("ambiguous", True), ("non-ambiguous", False)):
        batch = sample_tasks(Sinusoid(), args.eval_tasks, args.shots, GRID, amb, gen)
        path = predictive_samples(learner, batch, max(args.eval_steps), None, torch.Generator().manual_seed(args.seed))
        for k in args.eval_steps:
            out[k][kind] = (metrics(path[k], batch, args.sigma0), by_distance(path[k], batch))
    return out


def plot(learners: dict[str, torch.nn.Module], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch = sample_tasks(Sinusoid(), 3, args.shots, GRID, True, torch.Generator().manual_seed(args.seed + 7))
    fig, axes = plt.subplots(len(learners), 3, figsize=(12, 2.6 * len(learners)), squeeze=False)
    x = GRID[0, :, 0]
    for row, (name, learner) in enumerate(learners.items()):
        samples = predictive_samples(learner, batch, args.eval_steps[-1], None, torch.Generator().manual_seed(args.seed))[-1]
        what = "particles" if hasattr(learner, "num_particles") else "samples" if samples.shape[1] > 1 else "adapted model"
        for t, ax in enumerate(axes[row]):
            centre = batch.x_support[t, :, 0].mean().item()
            ax.axvspan(0 if centre < 0 else -5, 5 if centre < 0 else 0, color="0.93", label="other half")
            for s in range(samples.shape[1]):
                ax.plot(x, samples[t, s, :, 0], color="tab:blue", lw=0.8, alpha=0.7,
                        label=f"{what} (S = {samples.shape[1]})" if s == 0 else None)
            ax.plot(x, batch.y_query[t, :, 0], "r--", lw=1.2, label="ground truth")
            ax.plot(batch.x_support[t, :, 0], batch.y_support[t, :, 0], "^", color="purple", label=f"data points (K = {args.shots})")
            ax.set_xlim(-5, 5)
            ax.set_ylim(-6, 6)
            if row == 0:
                ax.set_title(f"ambiguous task {t + 1}", fontsize=9)
            if row == len(learners) - 1:
                ax.set_xlabel("x")
            if t == 0:
                ax.set_ylabel(f"{name}\ny", fontsize=9)
        axes[row][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"ambiguous sinusoid tasks: {args.shots} data points in a window of width {WINDOW}, "
                 f"{args.eval_steps[-1]} adaptation steps")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` of ``--set``: VALUE as a Python literal (number, bool, None), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with an identifier KEY, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--learners", nargs="+", default=list(LEARNERS), choices=list(LEARNERS))
    p.add_argument("--iterations", type=int, default=3000)
    p.add_argument("--meta-batch", type=int, default=10)
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--k-query", type=int, default=10)
    p.add_argument("--steps", type=int, default=1, help="inner steps in meta-training")
    p.add_argument("--inner-lr", type=float, default=0.01)
    p.add_argument("--meta-lr", type=float, default=1e-3)
    p.add_argument("--variance-lr", type=float, default=None,
                   help="Adam lr of PLATIPUS's log-variances and log-step-sizes (default: --meta-lr)")
    p.add_argument("--trace", type=int, default=0, metavar="N",
                   help="print PLATIPUS's sigma_theta, sqrt(v_q), gamma_p, gamma_q every N iterations")
    p.add_argument("--eval-steps", type=int, nargs="+", default=[40],
                   help="test-time adaptation steps; several: one row per count, read off one adaptation run "
                        "(the figure uses the last)")
    p.add_argument("--eval-seed", type=int, default=None,
                   help="seed of the evaluation tasks (default: --seed + 1000); choose settings on another one")
    p.add_argument("--set", type=option, nargs="+", default=[], metavar="KEY=VALUE",
                   help="algorithm options that override the LEARNERS table's for every learner run "
                        "(e.g. temperature=0.1)")
    p.add_argument("--eval-tasks", type=int, default=200)
    p.add_argument("--sigma0", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", type=Path, default=None, help="write the sampled-functions figure here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    trained, bins = {}, []
    keys = ("spread far", "spread near", "spread other half", "RMSE other half", "spread all", "envelope coverage", "NLL", "coverage 90%", "MSE")
    print("| learner | tasks | S | " + " | ".join(keys) + " |\n|---|---|---|" + "---|" * len(keys), flush=True)
    for name in args.learners:
        learner, seconds = train(name, args)
        trained[name] = learner
        sets = getattr(learner, "num_particles", None) or getattr(learner, "test_samples", None) or 1
        for steps, kinds in evaluate(learner, args).items():
            label = name + "".join(f", {k}={v}" for k, v in args.set) + (f", {steps} test steps" if len(args.eval_steps) > 1 else "")
            for kind, (found, binned) in kinds.items():
                cells = " | ".join("{:.3f} ± {:.3f}".format(*mean_ci(found[k])) for k in keys)
                print(f"| {label} | {kind} | {sets} | {cells} |", flush=True)
                bins.append(f"| {label} | {kind} | " + " | ".join(f"{sp:.2f} / {e:.2f} ({share:.0%})" for share, sp, e in binned) + " |")
        print(f"<!-- {name}: {args.iterations} iterations in {seconds:.0f} s CPU -->", flush=True)
    print("\nspread / RMSE of the mean (share of grid points) by distance to the nearest support point:\n"
          "| learner | tasks | " + " | ".join(f"d in [{lo:g}, {hi:g})" for lo, hi in BINS) + " |\n|---|---|" + "---|" * len(BINS))
    print("\n".join(bins), flush=True)
    if args.plot:
        plot(trained, args, args.plot)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
