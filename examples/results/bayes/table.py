"""The Bayesian comparison table (README) from the eval JSONs here and the runs' metrics.

Usage: python examples/results/bayes/table.py [--runs runs/bayes] > examples/results/bayes/table.md
Sinusoid rows read step 10 (10 SGD/SVGD steps at test), glyph rows step 3 (as the README's glyph
table); time per meta-iteration is 1 / the run's average it/s (metrics.jsonl, includes task sampling).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
ALGOS = ("maml", "fomaml", "bmaml", "platipus")
LABELS = {"maml": "MAML", "fomaml": "FOMAML", "bmaml": "BMAML (M = 5)", "platipus": "PLATIPUS (5 samples)"}


def _it_s(run: Path) -> tuple[float, int]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    return records[-1]["it_s"], records[-1]["iteration"]


def _pm(r: dict, step: int, scale: float = 1.0, digits: int = 3, unit: str = "") -> str:
    return f"{scale * r['mean'][step]:.{digits}f}{unit} ± {scale * r['ci95'][step]:.{digits}f}"


def rows(runs: Path) -> list[str]:
    out = [
        "| setting | algorithm | iterations | s / meta-iteration | MSE or accuracy (95% CI) | NLL (95% CI) | calibration |",
        "|---|---|---|---|---|---|---|",
    ]
    for shots in ("5", "10"):
        for algo in ALGOS:
            path = HERE / f"sinusoid-{algo}.json"
            if not path.exists():
                continue
            r = json.loads(path.read_text())["shots"][shots]
            it_s, its = _it_s(runs / f"sinusoid-{algo}")
            out.append(
                f"| sinusoid {shots}-shot | {LABELS[algo]} | {its:,} | {1 / it_s:.4f} | MSE {_pm(r['loss'], 10)} | "
                f"{_pm(r['nll'], 10)} | 90% coverage {_pm(r['coverage90'], 10, 100, 1, '%')} (σ = {r['noise_std'][10]:.3f}) |"
            )
    for algo in ALGOS:
        path = HERE / f"glyphs-{algo}.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())["shots"]["1"]
        it_s, its = _it_s(runs / f"glyphs-{algo}")
        out.append(
            f"| glyphs 5-way 1-shot | {LABELS[algo]}{' first-order' if algo == 'bmaml' else ''} | {its:,} | {1 / it_s:.2f} | {_pm(r['accuracy'], 3, 100, 2, '%')} | "
            f"{_pm(r['nll'], 3)} | ECE {100 * r['ece']['value'][3]:.2f}% ({r['ece']['bins']} bins) |"
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default="runs/bayes", help="directory of the run directories (metrics.jsonl)")
    print("\n".join(rows(Path(p.parse_args().runs))))


if __name__ == "__main__":
    main()
