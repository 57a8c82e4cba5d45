"""The memorization benchmark (Yin et al., "Meta-Learning without Memorization", ICLR 2020, §6.1),
and iMAML vs MAML at equal wall time.

``memo``: MAML, MR-MAML(W) and MR-MAML(A) (``--algorithms``) meta-trained on the ``memo_sinusoid`` family, whose input carries a
task code that names the amplitude in meta-training (non-mutually-exclusive tasks), and on its
mutually-exclusive control (``exclusive=true``: the code says nothing). Both are evaluated on
held-out tasks (amplitudes off the training grid, random codes) and on training-distribution
tasks, before and after adaptation on the support set. Memorization shows as a pre-/post-
adaptation gap that collapses: the model solves training tasks from the code alone and does not
adapt on new ones.

``glyphs``: the same comparison on 5-way 1-shot glyph episodes (``memo_glyphs``: every training
class has a fixed label, so a classifier of the training classes solves every training task without
its support set; ``exclusive=true``, random labels, is the control), a small conv4 (MR-MAML(A):
``bottleneck_conv4``); query accuracy on training-distribution episodes and on held-out episodes of
the test classes. ``--fresh-adam`` (both): ``train.optimizer = "fresh-adam"``, the paper's notebook's
meta-update.

``imaml``: MAML and iMAML on the paper's sinusoid family (``--family glyphs``: 5-way 1-shot glyph
episodes), each meta-trained for the same wall-clock budget, evaluated on the same held-out tasks.

    nice python benchmarks/bench_memorization.py memo --fresh-adam --meta-batch 1 --iterations 15000 \
        --beta 0 5e-5 --init-std 1.9e-22 --tasks 200 --eval-steps 10 --out runs/memo-paper   # the paper's settings
    nice python benchmarks/bench_memorization.py memo --iterations 3000 --beta 1e-3 1e-2 --init-std 0.05 --out runs/memo
    nice python benchmarks/bench_memorization.py memo --fresh-adam --meta-batch 1 --iterations 15000 \
        --algorithms mr-maml-a --beta-a 0 0.01 0.1 0.5 5 --tasks 200 --eval-steps 10 --sample-eval --out runs/memo-a
    nice python benchmarks/bench_memorization.py imaml --seconds 120
    nice python benchmarks/bench_memorization.py glyphs --root data/glyphs --iterations 2000 --beta 0 1e-3 --out runs/memo-glyphs
    nice python benchmarks/bench_memorization.py glyphs --root data/glyphs --train-classes 50 --iterations 1000 \
        --algorithms mr-maml --stochastic head --adapt convs norms head --beta 0.1 --init-std 0.5   # MR-MAML(W), all adapted
    nice python benchmarks/bench_memorization.py glyphs --root data/glyphs --train-classes 50 --algorithms mr-maml-a --beta-a 0.1
    nice python benchmarks/bench_memorization.py glyphs --root data/glyphs --train-classes 50 --fresh-adam --meta-batch 1 \
        --iterations 4000 --algorithms mr-maml --stochastic convs.3 norms.3 head --adapt convs norms head \
        --beta 1e-2 --init-std 1.9e-22   # the paper's meta-update, one task per iteration, the last block stochastic
    nice python benchmarks/bench_memorization.py glyphs --root data/glyphs --train-classes 50 --fresh-adam --meta-batch 1 \
        --iterations 4000 --algorithms mr-maml --stochastic convs.3 norms.3 head --adapt convs norms head \
        --beta 0.2 --init-std 1.9e-22 --splits val test   # held-out episodes of the validation and test classes
    nice python benchmarks/bench_memorization.py imaml --family glyphs --root data/glyphs --seconds 300

Prints Markdown tables (mean ± 95% CI over tasks, median in parentheses); every run directory holds its config.json,
checkpoint and eval.json, so ``maml-ext eval`` / ``plot`` work on it.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from maml_ext import plugins
from maml_ext.train import config, evaluate, loop

# The paper's code (sinusoid/MR_MAML.ipynb): a 21-100-5 encoder (stochastic in MR-MAML(W)) and a
# 5-40-40-1 adapted head, inner lr 0.01, β = 5e-5, 10 support and 10 query points, noise 0.1;
# evaluation on 5-shot tasks with amplitudes off the grid.
MEMO_MODEL = {"name": "mlp", "hidden": [100, 5, 40, 40], "activation": "relu"}
# The paper's encoder layers are tfp DenseReparameterization: stochastic kernels, deterministic biases.
ENCODER, HEAD = ["0.weight", "2.weight"], ["4", "6", "8"]
# MR-MAML(A) in the paper's code: a deterministic 21-80 ReLU encoder to 5 means and 5 softplus
# scales (one draw per input), the 5-40-40-1 head adapted on the draws.
BOTTLENECK_MODEL = {"name": "bottleneck_mlp", "encoder_hidden": [80], "latent": 5, "hidden": [40, 40], "activation": "relu"}
EVAL_CHUNK = 20  # tasks per evaluation call (per weight draw with sample_eval)
# Glyphs: conv4 (its 4 convolutions are the stochastic encoder of MR-MAML(W), the linear head is
# adapted); the MAML paper's Omniglot 5-way inner loop: 1 step of α = 0.4 in training, 3 at test.
GLYPH_ENCODER, GLYPH_HEAD = ["convs"], ["head"]
GLYPH_LR, GLYPH_TRAIN_STEPS = 0.4, 1


def memo_config(exclusive: bool, algorithm: dict[str, Any], args: argparse.Namespace) -> config.Config:
    return config.validate({
        "seed": args.seed,
        "model": dict(BOTTLENECK_MODEL if algorithm["name"] == "mr-maml-a" else MEMO_MODEL),
        "task": {"name": "memo_sinusoid", "exclusive": exclusive},
        "algorithm": algorithm,
        "train": {"iterations": args.iterations, "meta_batch": args.meta_batch, "k_support": 10, "k_query": 10,
                  "meta_lr": 1e-3, "optimizer": "fresh-adam" if args.fresh_adam else "adam",
                  "checkpoint_every": args.iterations, "log_every": max(1, args.iterations // 20), "threads": 1},
        "eval": {"num_tasks": args.tasks, "shots": [5], "k_query": 100, "steps": args.eval_steps, "chunk": 200,
                 **({} if args.eval_seed is None else {"seed": args.eval_seed})},
    })


def glyph_config(task: dict[str, Any], algorithm: dict[str, Any], args: argparse.Namespace,
                 iterations: int = 1) -> config.Config:
    """5-way 1-shot glyph episodes (1 query example per class in training, ``--eval-k-query`` at
    evaluation), conv4 with ``--filters`` filters, Adam 1e-3."""
    model = {"name": "conv4", "filters": args.filters, "image_size": 28}
    if getattr(args, "plain_norms", None):  # only when given: earlier runs' configs (--reuse) have none
        model["plain_norms"] = args.plain_norms
    if algorithm["name"] == "mr-maml-a":  # conv4 to the latent's means and scales, a linear head on it
        model = {**model, "name": "bottleneck_conv4", "latent": args.latent}
    return config.validate({
        "seed": args.seed,
        "model": model,
        "task": {"root": str(args.root), "n_way": 5, **task},
        "algorithm": algorithm,
        "train": {"iterations": iterations, "meta_batch": args.meta_batch, "k_support": 1, "k_query": 1,
                  "meta_lr": 1e-3, "optimizer": "fresh-adam" if getattr(args, "fresh_adam", False) else "adam",
                  "checkpoint_every": iterations, "log_every": max(1, iterations // 20), "threads": 1},
        "eval": {"num_tasks": args.tasks, "shots": [1], "k_query": args.eval_k_query, "steps": args.eval_steps, "chunk": 100},
    })


def cell(values: torch.Tensor, percent: bool = False) -> str:
    """Mean ± 95% CI over tasks, and (for losses) the median, robust to the few tasks whose 100
    steps diverge."""
    mean, ci = values.mean().item(), 1.96 * values.std().item() / math.sqrt(values.numel())
    if percent:
        return f"{100 * mean:.1f} ± {100 * ci:.1f}%"
    return f"{mean:.3f} ± {ci:.3f} ({values.median().item():.3f})"


def held_out_metric(run: loop.Run, family: Any, cfg: config.Config, steps: int, metric: str) -> torch.Tensor:
    """``metric`` ("loss" or "accuracy") per task ``[steps + 1, T]`` on ``eval.num_tasks`` tasks of
    ``family`` (the same eval seed for every run), in eval mode."""
    ecfg = cfg["eval"]
    run.learner.eval()
    batch = family.sample(ecfg["num_tasks"], ecfg["shots"][0], ecfg["k_query"], torch.Generator().manual_seed(ecfg["seed"]))
    torch.manual_seed(ecfg["seed"])  # MR-MAML with sample_eval: one weight draw per chunk of tasks
    return torch.cat([run.learner.evaluate_metrics(batch.slice(i, i + EVAL_CHUNK), steps)[metric]
                      for i in range(0, batch.num_tasks, EVAL_CHUNK)], 1).double()


def metrics_row(run: loop.Run, cfg: config.Config, steps: int, metric: str = "loss",
                held_out: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """Query ``metric`` per task before and after ``steps`` adaptation steps, on
    training-distribution tasks and on each ``held_out`` family (default: the run's own
    ``held-out``)."""
    found = {}
    for label, family in (("train", run.family), *(held_out or {"held-out": run.family.held_out}).items()):
        values = held_out_metric(run, family, cfg, steps, metric)
        found[f"{label} pre"], found[f"{label} post"] = values[0], values[steps]
    return found


def _trained_as(cfg: config.Config) -> dict[str, Any]:
    """The part of a config that training depends on (evaluation settings dropped)."""
    algorithm = {k: v for k, v in cfg["algorithm"].items() if k != "sample_eval"}
    return {**{k: v for k, v in cfg.items() if k != "eval"}, "algorithm": algorithm}


def train_and_restore(cfg: config.Config, out: Path, reuse: bool) -> tuple[loop.Run, float]:
    """Train into ``out`` (afresh), or with ``reuse`` restore the run already there for this config."""
    ckpt = out / loop.CHECKPOINT
    if reuse and ckpt.exists():
        run, _ = loop.restore(ckpt)
        if _trained_as(run.config) == _trained_as(cfg):
            if "sample_eval" in cfg["algorithm"]:
                run.learner.sample_eval = cfg["algorithm"]["sample_eval"]
            return run, float("nan")
    out.mkdir(parents=True, exist_ok=True)
    ckpt.unlink(missing_ok=True)
    t0 = time.perf_counter()
    ckpt = loop.train(cfg, out, progress=False)
    seconds = time.perf_counter() - t0
    run, _ = loop.restore(ckpt)
    return run, seconds


def learners(args: argparse.Namespace, lr: float, adapt: list[str], **common: Any) -> dict[str, dict[str, Any]]:
    """MAML, MR-MAML(W) (one per ``--beta``) and MR-MAML(A) (one per ``--beta-a``) as selected
    by ``--algorithms``."""
    algorithms = {"MAML": {"name": "maml", "lr": lr, "steps": 1, **common}} if "maml" in args.algorithms else {}
    for beta in args.beta if "mr-maml" in args.algorithms else ():
        algorithms[f"MR-MAML(W) β={beta:g}"] = {"name": "mr-maml", "lr": lr, "steps": 1, "beta": beta,
                                              "stochastic": args.stochastic, "adapt": adapt, "init_std": args.init_std,
                                              "sample_eval": args.sample_eval, **common}
        if args.prior_std != 1.0:  # only when given: earlier runs' configs (--reuse) have no prior_std
            algorithms[f"MR-MAML(W) β={beta:g}"]["prior_std"] = args.prior_std
    for beta in args.beta_a if "mr-maml-a" in args.algorithms else ():
        algorithms[f"MR-MAML(A) β={beta:g}"] = {"name": "mr-maml-a", "lr": lr, "steps": 1, "beta": beta,
                                              "sample_eval": args.sample_eval, **common}
    return algorithms


def memo(args: argparse.Namespace) -> None:
    algorithms = learners(args, 0.01, HEAD)
    compare(args, algorithms, lambda exclusive, algorithm: memo_config(exclusive, algorithm, args), "loss")


def glyphs(args: argparse.Namespace) -> None:
    common = {"first_order": True} if args.first_order else {}
    algorithms = learners(args, GLYPH_LR, args.adapt, **common)
    for algorithm in algorithms.values():
        algorithm["steps"] = GLYPH_TRAIN_STEPS
    task = {"name": "memo_glyphs", "train_classes": args.train_classes}
    # Held-out episodes of each --splits class split; training does not depend on it, so the
    # runs (and --reuse) are the same whichever splits are evaluated.
    held_out = {split: plugins.build_task(root=str(args.root), n_way=5, eval_split=split, **task).held_out
                for split in args.splits}
    compare(args, algorithms, lambda exclusive, algorithm: glyph_config(
        {**task, "exclusive": exclusive}, algorithm, args, args.iterations), "accuracy", held_out)


def compare(args: argparse.Namespace, algorithms: dict[str, dict[str, Any]],
            make_config: Any, metric: str, held_out: dict[str, Any] | None = None) -> None:
    """Train every algorithm on the non-mutually-exclusive family and/or its control; print the
    table of ``metric`` before and after ``--eval-steps`` steps, on training tasks and on the
    ``held_out`` families (default: each run's own held-out tasks)."""
    steps = args.eval_steps
    labels = ["train", *(held_out or ["held-out"])]
    rows = ["| tasks | algorithm | " + " | ".join(f"{label} tasks, {n} steps" for label in labels for n in (0, steps))
            + " | train time |", "|---" * (3 + 2 * len(labels)) + "|"]
    summary = {}
    for exclusive in [kind == "control" for kind in args.families]:
        kind = "mutually exclusive (control)" if exclusive else "non-mutually-exclusive"
        for label, algorithm in algorithms.items():
            cfg = make_config(exclusive, algorithm)
            name = f"{'me' if exclusive else 'nme'}-{algorithm['name']}" + (f"-{algorithm['beta']:g}" if "beta" in algorithm else "")
            run, seconds = train_and_restore(cfg, args.out / name, args.reuse)
            found = metrics_row(run, cfg, steps, metric, held_out)
            summary[name] = {k: [v.mean().item(), 1.96 * v.std().item() / math.sqrt(v.numel())] for k, v in found.items()}
            rows.append(f"| {kind} | {label} | " + " | ".join(cell(found[f"{split} {when}"], metric == "accuracy") for split in labels
                        for when in ("pre", "post")) + f" | {f'{seconds:.0f} s' if seconds == seconds else 'reused'} |")
            print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.bench}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(rows))


def train_for(cfg: config.Config, seconds: float = math.inf, iterations: int | None = None) -> tuple[loop.Run, int]:
    """Meta-train for a wall-clock budget or a number of iterations (the same loop for every
    learner); returns the run and the iterations done."""
    torch.set_num_threads(1)
    run = loop.build(cfg)
    params = [p for p in run.learner.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg["train"]["meta_lr"])
    tasks = torch.Generator().manual_seed(cfg["seed"])
    tcfg, done, t0 = cfg["train"], 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds and (iterations is None or done < iterations):
        batch = run.family.sample(tcfg["meta_batch"], tcfg["k_support"], tcfg["k_query"], tasks)
        optimizer.zero_grad(set_to_none=True)
        run.learner.meta_loss(batch, done).backward()
        optimizer.step()
        done += 1
    return run, done


# Per family: iMAML's inner loop (sinusoid: the settings of the earlier table; glyphs: the official
# iMAML code's Omniglot 5-way 1-shot values) and the meta-batch.
IMAML_DEFAULTS = {
    "sinusoid": {"imaml_steps": 10, "imaml_lr": 0.01, "lam": 1.0, "meta_batch": 25},
    "glyphs": {"imaml_steps": 16, "imaml_lr": 0.1, "lam": 2.0, "meta_batch": 16},
}


def imaml(args: argparse.Namespace) -> None:
    for key, value in IMAML_DEFAULTS[args.family].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    sinusoid = args.family == "sinusoid"
    algorithms = {
        "MAML (1 step)": {"name": "maml", "lr": 0.01 if sinusoid else GLYPH_LR, "steps": 1},
        f"iMAML ({args.imaml_steps} steps, λ={args.lam:g}, {args.cg_steps} CG)": {
            "name": "imaml", "lr": args.imaml_lr, "steps": args.imaml_steps, "lam": args.lam, "cg_steps": args.cg_steps},
    }
    algorithms = {k: v for k, v in algorithms.items() if v["name"] in args.algorithms}
    eval_steps = (1, 10)
    rows = (["| algorithm | iterations in budget | " + " | ".join(f"5-shot MSE, {s} steps" for s in eval_steps) + " |",
             "|---" * (2 + len(eval_steps)) + "|"] if sinusoid else
            ["| algorithm | iterations in budget | held-out accuracy, 0 steps | held-out accuracy, adapted |", "|---" * 4 + "|"])
    for label, algorithm in algorithms.items():
        if sinusoid:
            cfg = config.load("sinusoid", [f"train.meta_batch={args.meta_batch}", f"eval.num_tasks={args.tasks}",
                                           "eval.shots=[5]", f"eval.steps={max(eval_steps)}", f"seed={args.seed}"])
            cfg["algorithm"] = algorithm
        else:
            cfg = glyph_config({"name": "glyphs"}, algorithm, args)
        run, done = train_for(cfg, args.seconds)
        run.learner.eval()
        if sinusoid:
            results = evaluate.evaluate(run, cfg)["shots"]["5"]["loss"]
            cells = [f"{results['mean'][s]:.3f} ± {results['ci95'][s]:.3f}" for s in eval_steps]
        else:  # each learner adapts as it was trained to: MAML --eval-steps steps, iMAML its own inner solve
            steps = args.eval_steps if algorithm["name"] == "maml" else algorithm["steps"]
            accuracy = held_out_metric(run, run.family.held_out, cfg, steps, "accuracy")
            cells = [cell(accuracy[0], True), f"{cell(accuracy[steps], True)} ({steps} steps)"]
        rows.append(f"| {label} | {done} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    print("\n".join(rows))


def add_glyph_args(p: argparse.ArgumentParser, eval_steps: int) -> None:
    p.add_argument("--root", type=Path, default=Path("data/glyphs"), help="the glyph set (python -m maml_ext.datasets.glyphs build)")
    p.add_argument("--filters", type=int, default=32, help="conv4 filters (the paper's Omniglot model: 64)")
    p.add_argument("--eval-k-query", type=int, default=5, help="query examples per class at evaluation")
    p.add_argument("--eval-steps", type=int, default=eval_steps, help="MAML's adaptation steps at test time (paper: 3)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="bench", required=True)
    m = sub.add_parser("memo", help="MAML vs MR-MAML(W) on non-mutually-exclusive sinusoids and the control")
    m.add_argument("--iterations", type=int, default=4000)
    m.add_argument("--beta", type=float, nargs="+", default=[5e-5], help="MR-MAML β values (paper: 5e-5)")
    m.add_argument("--init-std", type=float, default=1e-2, help="MR-MAML initial σ of the stochastic weights")
    m.add_argument("--prior-std", type=float, default=1.0, help="MR-MAML(W): σ of the N(0, σ²) prior")
    m.add_argument("--algorithms", nargs="+", choices=["maml", "mr-maml", "mr-maml-a"], default=["maml", "mr-maml"])
    m.add_argument("--beta-a", type=float, nargs="+", default=[5.0],
                   help="MR-MAML(A) β values (the paper's sinusoid code: 5, on the KL averaged over latent dimensions and query points)")
    m.add_argument("--stochastic", nargs="+", default=ENCODER,
                   help="MR-MAML's stochastic parameters (default: the encoder's kernels, as in the paper)")
    m.add_argument("--sample-eval", action="store_true",
                   help="MR-MAML: evaluate with drawn weights, MR-MAML(A) with drawn latents (the paper's code)")
    m.add_argument("--fresh-adam", action="store_true",
                   help="the paper's notebook's meta-update for every learner (train.optimizer = \"fresh-adam\": a new Adam every iteration)")
    m.add_argument("--families", nargs="+", choices=["memo", "control"], default=["memo", "control"],
                   help="memo: non-mutually-exclusive tasks; control: the mutually-exclusive version")
    m.add_argument("--eval-steps", type=int, default=100, help="adaptation steps at test time (paper's code: 100)")
    m.add_argument("--tasks", type=int, default=600, help="evaluation tasks")
    m.add_argument("--meta-batch", type=int, default=10)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--eval-seed", type=int, default=None,
                   help="seed of the evaluation tasks (default: the config's, 1000; another one: fresh tasks)")
    m.add_argument("--out", type=Path, default=Path("runs/memorization"))
    m.add_argument("--reuse", action="store_true", help="evaluate the runs already trained in --out (same config)")
    m.set_defaults(func=memo)
    g = sub.add_parser("glyphs", help="MAML vs MR-MAML(W) on 5-way glyph episodes with fixed labels and the control")
    g.add_argument("--iterations", type=int, default=2000)
    g.add_argument("--beta", type=float, nargs="+", default=[1e-3], help="MR-MAML β values")
    g.add_argument("--init-std", type=float, default=1e-2, help="MR-MAML initial σ of the stochastic weights")
    g.add_argument("--algorithms", nargs="+", choices=["maml", "mr-maml", "mr-maml-a"], default=["maml", "mr-maml"])
    g.add_argument("--stochastic", nargs="+", default=GLYPH_ENCODER, help="MR-MAML's stochastic parameters (default: the convolutions)")
    g.add_argument("--adapt", nargs="+", default=GLYPH_HEAD,
                   help="MR-MAML(W)'s adapted parameters (default: the head; convs norms head: all, the stochastic ones from their draw)")
    g.add_argument("--prior-std", type=float, default=1.0, help="MR-MAML(W): σ of the N(0, σ²) prior")
    g.add_argument("--plain-norms", type=int, nargs="+", default=[],
                   help="conv4 BatchNorm layers without scale and shift (e.g. 3: the head's features cannot be rescaled)")
    g.add_argument("--beta-a", type=float, nargs="+", default=[0.1], help="MR-MAML(A) β values")
    g.add_argument("--latent", type=int, default=32, help="MR-MAML(A): latent dimensions (bottleneck_conv4)")
    g.add_argument("--sample-eval", action="store_true", help="MR-MAML: evaluate with drawn weights (MR-MAML(A): latents)")
    g.add_argument("--fresh-adam", action="store_true", help="the paper's sinusoid notebook's meta-update (see memo)")
    g.add_argument("--second-order", dest="first_order", action="store_false",
                   help="second-order meta-gradients (default: first order, as FOMAML)")
    g.add_argument("--families", nargs="+", choices=["memo", "control"], default=["memo", "control"])
    g.add_argument("--train-classes", type=int, default=0,
                   help="meta-train on this many training classes (a seeded subset; 0: all): memorised sooner")
    g.add_argument("--tasks", type=int, default=600, help="evaluation tasks")
    g.add_argument("--splits", nargs="+", choices=["val", "test"], default=["test"],
                   help="class splits of the held-out episodes: choose settings on val, report test")
    g.add_argument("--meta-batch", type=int, default=16)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", type=Path, default=Path("runs/memo-glyphs"))
    g.add_argument("--reuse", action="store_true", help="evaluate the runs already trained in --out (same config)")
    add_glyph_args(g, eval_steps=3)
    g.set_defaults(func=glyphs)
    i = sub.add_parser("imaml", help="MAML vs iMAML on the sinusoid or glyphs at equal wall time")
    i.add_argument("--family", choices=sorted(IMAML_DEFAULTS), default="sinusoid")
    i.add_argument("--algorithms", nargs="+", choices=["maml", "imaml"], default=["maml", "imaml"],
                   help="run one per process to give both the same machine load")
    i.add_argument("--seconds", type=float, default=120.0, help="training budget per learner")
    i.add_argument("--imaml-steps", type=int, help="default: sinusoid 10, glyphs 16")
    i.add_argument("--imaml-lr", type=float, help="default: sinusoid 0.01, glyphs 0.1")
    i.add_argument("--lam", type=float, help="default: sinusoid 1, glyphs 2")
    i.add_argument("--cg-steps", type=int, default=5)
    i.add_argument("--tasks", type=int, default=600)
    i.add_argument("--meta-batch", type=int, help="default: sinusoid 25, glyphs 16")
    add_glyph_args(i, eval_steps=3)
    i.add_argument("--seed", type=int, default=0)
    i.set_defaults(func=imaml)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
