"""End to end through the CLI: a packaged few-shot config on a tiny Omniglot-layout folder."""

from __future__ import annotations

import json

from maml_ext import cli
from maml_ext.train import loop

from _fewshot_data import write_omniglot


def test_train_and_eval_report_test_split_accuracy(tmp_path, monkeypatch):
    monkeypatch.setenv("MAML_EXT_CACHE", str(tmp_path / "cache"))
    data, out = tmp_path / "omniglot", tmp_path / "run"
    write_omniglot(data)
    small = [
        f"task.root={json.dumps(str(data))}", "task.train_classes=8", "task.val_classes=2",
        "model.filters=4", "train.iterations=2", "train.meta_batch=3", "train.checkpoint_every=1",
        "eval.num_tasks=7", "eval.steps=3",
    ]
    args = [a for s in small for a in ("--set", s)]
    assert cli.main(["train", "omniglot-5way", "--out", str(out), "--quiet", *args]) == 0
    assert cli.main(["eval", str(out)]) == 0
    results = json.loads((out / "eval.json").read_text())
    acc = results["shots"]["1"]["accuracy"]
    assert len(acc["mean"]) == 4 and all(0 <= a <= 1 for a in acc["mean"])
    # Evaluation tasks come from the held-out (test) characters only.
    run, _ = loop.restore(out / loop.CHECKPOINT)
    test_chars = {c.rsplit("/", 1)[0] for c in run.family.held_out.split.classes}
    train_chars = {c.rsplit("/", 1)[0] for c in run.family.split.classes}
    assert test_chars and not test_chars & train_chars
