"""Evaluation on a fixed held-out set of tasks: mean ± 95% CI after 0..S adaptation steps."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from maml_ext.tasks import TaskBatch

from .config import Config
from .loop import Run

RESULTS = "eval.json"


def held_out(run: Run, shots: int, cfg: Config) -> TaskBatch:
    """The fixed evaluation set for ``shots`` support examples: same seed, same tasks, every time.

    A family with a ``held_out`` family (few-shot classification: the test classes) is
    evaluated on that one, never on its training classes."""
    gen = torch.Generator().manual_seed(cfg["eval"]["seed"])
    family = getattr(run.family, "held_out", None) or run.family
    return family.sample(cfg["eval"]["num_tasks"], shots, cfg["eval"]["k_query"], gen)


def _mean_ci(values: torch.Tensor) -> dict[str, list[float]]:
    """Mean, 95% CI half-width (1.96·std/√n) and median over tasks (dim 1), per adaptation step.

    The median is robust to the rare task whose repeated steps diverge and dominate the mean."""
    n = values.shape[1]
    std = values.std(dim=1) if n > 1 else torch.zeros(values.shape[0], dtype=values.dtype)
    return {
        "mean": values.mean(dim=1).tolist(),
        "ci95": (1.96 * std / math.sqrt(n)).tolist(),
        "median": values.nanmedian(dim=1).values.tolist(),
    }


def evaluate(run: Run, cfg: Config) -> dict[str, Any]:
    """Per shot count: query-loss mean and 95% CI after 0..steps steps (and, for classification,
    the query accuracy under ``"accuracy"``)."""
    ecfg = cfg["eval"]
    results: dict[str, Any] = {"num_tasks": ecfg["num_tasks"], "k_query": ecfg["k_query"], "shots": {}}
    for shots in ecfg["shots"]:
        batch = held_out(run, shots, cfg)
        chunks = [
            run.learner.evaluate_metrics(batch.slice(i, i + ecfg["chunk"]), ecfg["steps"], ecfg.get("lr"))
            for i in range(0, batch.num_tasks, ecfg["chunk"])
        ]
        metrics = {k: torch.cat([c[k] for c in chunks], dim=1).double() for k in chunks[0]}
        results["shots"][str(shots)] = _mean_ci(metrics.pop("loss"))
        results["shots"][str(shots)].update({k: _mean_ci(v) for k, v in metrics.items()})
    return results


def write(results: dict[str, Any], out_dir: Path) -> Path:
    path = out_dir / RESULTS
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def table(results: dict[str, Any], steps: tuple[int, ...] = (0, 1, 5, 10)) -> str:
    """Markdown table of the query loss after the given numbers of steps."""
    rows = ["| shots | " + " | ".join(f"{s} steps" for s in steps) + " |", "|---" * (len(steps) + 1) + "|"]
    for shots, r in results["shots"].items():
        cells = [
            f"{r['mean'][s]:.3f} ± {r['ci95'][s]:.3f}" if s < len(r["mean"]) else "–" for s in steps
        ]
        rows.append(f"| {shots} | " + " | ".join(cells) + " |")
        if "accuracy" in r:
            acc = r["accuracy"]
            cells = [
                f"{100 * acc['mean'][s]:.2f}% ± {100 * acc['ci95'][s]:.2f}" if s < len(acc["mean"]) else "–" for s in steps
            ]
            rows.append(f"| {shots} (accuracy) | " + " | ".join(cells) + " |")
    return "\n".join(rows)
