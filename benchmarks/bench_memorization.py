"""The memorization benchmark (Yin et al., "Meta-Learning without Memorization", ICLR 2020, §6.1),
and iMAML vs MAML at equal wall time.

``memo``: MAML, MR-MAML(W) and MR-MAML(A) (``--algorithms``) meta-trained on the ``memo_sinusoid`` family, whose input carries a
task code that names the amplitude in meta-training (non-mutually-exclusive tasks), and on its
mutually-exclusive control (``exclusive=true``: the code says nothing). Both are evaluated on
held-out tasks (amplitudes off the training grid, random codes) and on training-distribution
tasks, before and after adaptation on the support set. Memorization shows as a pre-/post-
adaptation gap that collapses: the model solves training tasks from the code alone and does not
adapt on new ones.

``imaml``: MAML and iMAML on the paper's sinusoid family, each meta-trained for the same wall-clock
budget, evaluated on the same held-out tasks.

    nice python benchmarks/bench_memorization.py memo --fresh-adam --meta-batch 1 --iterations 15000 \
        --beta 0 5e-5 --init-std 1.9e-22 --tasks 200 --eval-steps 10 --out runs/memo-paper   # the paper's settings
    nice python benchmarks/bench_memorization.py memo --iterations 3000 --beta 1e-3 1e-2 --init-std 0.05 --out runs/memo
    nice python benchmarks/bench_memorization.py memo --fresh-adam --meta-batch 1 --iterations 15000 \
        --algorithms mr-maml-a --beta-a 0 0.01 0.1 0.5 5 --tasks 200 --eval-steps 10 --sample-eval --out runs/memo-a
    nice python benchmarks/bench_memorization.py imaml --seconds 120 --out runs/imaml

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


def memo_config(exclusive: bool, algorithm: dict[str, Any], args: argparse.Namespace) -> config.Config:
    return config.validate({
        "seed": args.seed,
        "model": dict(BOTTLENECK_MODEL if algorithm["name"] == "mr-maml-a" else MEMO_MODEL),
        "task": {"name": "memo_sinusoid", "exclusive": exclusive},
        "algorithm": algorithm,
        "train": {"iterations": args.iterations, "meta_batch": args.meta_batch, "k_support": 10, "k_query": 10,
                  "meta_lr": 1e-3, "checkpoint_every": args.iterations, "log_every": max(1, args.iterations // 20),
                  "threads": 1},
        "eval": {"num_tasks": args.tasks, "shots": [5], "k_query": 100, "steps": args.eval_steps, "chunk": 200,
                 **({} if args.eval_seed is None else {"seed": args.eval_seed})},
    })


def cell(values: torch.Tensor) -> str:
    """Mean ± 95% CI over tasks, and the median (robust to the few tasks whose 100 steps diverge)."""
    n = values.numel()
    return f"{values.mean().item():.3f} ± {1.96 * values.std().item() / math.sqrt(n):.3f} ({values.median().item():.3f})"


def metrics_row(run: loop.Run, cfg: config.Config, steps: int) -> dict[str, torch.Tensor]:
    """Query MSE per task before and after ``steps`` adaptation steps, on training-distribution
    and held-out tasks (the same eval seed for every run)."""
    ecfg = cfg["eval"]
    found = {}
    run.learner.eval()
    for label, family in (("train", run.family), ("held-out", run.family.held_out)):
        batch = family.sample(ecfg["num_tasks"], ecfg["shots"][0], ecfg["k_query"], torch.Generator().manual_seed(ecfg["seed"]))
        torch.manual_seed(ecfg["seed"])  # MR-MAML with sample_eval: one weight draw per chunk of tasks
        losses = torch.cat([run.learner.evaluate(batch.slice(i, i + EVAL_CHUNK), steps)
                            for i in range(0, batch.num_tasks, EVAL_CHUNK)], 1).double()
        found[f"{label} pre"], found[f"{label} post"] = losses[0], losses[steps]
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


def memo(args: argparse.Namespace) -> None:
    algorithms = {"MAML": {"name": "maml", "lr": 0.01, "steps": 1}} if "maml" in args.algorithms else {}
    for beta in args.beta if "mr-maml" in args.algorithms else ():
        algorithms[f"MR-MAML(W) β={beta:g}"] = {"name": "mr-maml", "lr": 0.01, "steps": 1, "beta": beta,
                                              "stochastic": args.stochastic, "adapt": HEAD, "init_std": args.init_std,
                                              "sample_eval": args.sample_eval}
    for beta in args.beta_a if "mr-maml-a" in args.algorithms else ():
        algorithms[f"MR-MAML(A) β={beta:g}"] = {"name": "mr-maml-a", "lr": 0.01, "steps": 1, "beta": beta,
                                              "sample_eval": args.sample_eval}
    steps = args.eval_steps
    rows = [f"| tasks | algorithm | train tasks, 0 steps | train tasks, {steps} steps | held-out, 0 steps | "
            f"held-out, {steps} steps | train time |", "|---" * 7 + "|"]
    summary = {}
    for exclusive in [kind == "control" for kind in args.families]:
        kind = "mutually exclusive (control)" if exclusive else "non-mutually-exclusive"
        for label, algorithm in algorithms.items():
            cfg = memo_config(exclusive, algorithm, args)
            name = f"{'me' if exclusive else 'nme'}-{algorithm['name']}" + (f"-{algorithm['beta']:g}" if "beta" in algorithm else "")
            if args.fresh_adam:  # no checkpoint: evaluated at once
                t0 = time.perf_counter()
                run, _ = train_for(cfg, iterations=args.iterations, fresh_adam=True)
                seconds = time.perf_counter() - t0
            else:
                run, seconds = train_and_restore(cfg, args.out / name, args.reuse)
            found = metrics_row(run, cfg, steps)
            summary[name] = {k: [v.mean().item(), 1.96 * v.std().item() / math.sqrt(v.numel())] for k, v in found.items()}
            rows.append(f"| {kind} | {label} | " + " | ".join(cell(found[k]) for k in
                        ("train pre", "train post", "held-out pre", "held-out post")) + f" | {f'{seconds:.0f} s' if seconds == seconds else 'reused'} |")
            print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memo.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(rows))


def fresh_adam_step(params: list[torch.Tensor], lr: float) -> None:
    """The first step of a new Adam optimizer, lr·g/(|g| + 1e-7): the paper's MR-MAML notebook
    builds a new ``keras.optimizers.Adam`` in every iteration, so every update is this sign-like
    step. A parameter with a zero loss gradient (a code row not in the batch) then moves by about
    lr towards the prior mean under the KL term alone."""
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p.sub_(lr * p.grad / (p.grad.abs() + 1e-7))


def train_for(cfg: config.Config, seconds: float = math.inf, iterations: int | None = None,
              fresh_adam: bool = False) -> tuple[loop.Run, int]:
    """Meta-train for a wall-clock budget or a number of iterations (the same loop for every
    learner); returns the run and the iterations done. ``fresh_adam``: the paper's notebook's
    update (:func:`fresh_adam_step`) instead of one Adam optimizer."""
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
        if fresh_adam:
            fresh_adam_step(params, tcfg["meta_lr"])
        else:
            optimizer.step()
        done += 1
    return run, done


def imaml(args: argparse.Namespace) -> None:
    algorithms = {
        "MAML (1 step)": {"name": "maml", "lr": 0.01, "steps": 1},
        f"iMAML ({args.imaml_steps} steps, λ={args.lam:g}, {args.cg_steps} CG)": {
            "name": "imaml", "lr": args.imaml_lr, "steps": args.imaml_steps, "lam": args.lam, "cg_steps": args.cg_steps},
    }
    eval_steps = (1, 10)
    rows = ["| algorithm | iterations in budget | " + " | ".join(f"5-shot MSE, {s} steps" for s in eval_steps) + " |",
            "|---" * (2 + len(eval_steps)) + "|"]
    for label, algorithm in algorithms.items():
        cfg = config.load("sinusoid", [f"train.meta_batch={args.meta_batch}", f"eval.num_tasks={args.tasks}",
                                       "eval.shots=[5]", f"eval.steps={max(eval_steps)}", f"seed={args.seed}"])
        cfg["algorithm"] = algorithm
        run, done = train_for(cfg, args.seconds)
        run.learner.eval()
        results = evaluate.evaluate(run, cfg)["shots"]["5"]["loss"]
        rows.append(f"| {label} | {done} | " + " | ".join(
            f"{results['mean'][s]:.3f} ± {results['ci95'][s]:.3f}" for s in eval_steps) + " |")
        print(rows[-1], flush=True)
    print("\n".join(rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="bench", required=True)
    m = sub.add_parser("memo", help="MAML vs MR-MAML(W) on non-mutually-exclusive sinusoids and the control")
    m.add_argument("--iterations", type=int, default=4000)
    m.add_argument("--beta", type=float, nargs="+", default=[5e-5], help="MR-MAML β values (paper: 5e-5)")
    m.add_argument("--init-std", type=float, default=1e-2, help="MR-MAML initial σ of the stochastic weights")
    m.add_argument("--algorithms", nargs="+", choices=["maml", "mr-maml", "mr-maml-a"], default=["maml", "mr-maml"])
    m.add_argument("--beta-a", type=float, nargs="+", default=[5.0],
                   help="MR-MAML(A) β values (the paper's sinusoid code: 5, on the KL averaged over latent dimensions and query points)")
    m.add_argument("--stochastic", nargs="+", default=ENCODER,
                   help="MR-MAML's stochastic parameters (default: the encoder's kernels, as in the paper)")
    m.add_argument("--sample-eval", action="store_true",
                   help="MR-MAML: evaluate with drawn weights, MR-MAML(A) with drawn latents (the paper's code)")
    m.add_argument("--fresh-adam", action="store_true",
                   help="the paper's notebook's meta-update for every learner (a new Adam every iteration: lr·g/(|g|+1e-7))")
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
    i = sub.add_parser("imaml", help="MAML vs iMAML on the sinusoid at equal wall time")
    i.add_argument("--seconds", type=float, default=120.0, help="training budget per learner")
    i.add_argument("--imaml-steps", type=int, default=10)
    i.add_argument("--imaml-lr", type=float, default=0.01)
    i.add_argument("--lam", type=float, default=1.0)
    i.add_argument("--cg-steps", type=int, default=5)
    i.add_argument("--tasks", type=int, default=600)
    i.add_argument("--meta-batch", type=int, default=25)
    i.add_argument("--seed", type=int, default=0)
    i.set_defaults(func=imaml)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
