"""The glyph commands of benchmarks/bench_memorization.py on a tiny synthetic glyph set: the
memorization table reports accuracies of both families and learners, and the iMAML comparison
runs both learners for the budget and adapts each its own way."""

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

from _fewshot_data import write_omniglot

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # scripts, not a package
import bench_memorization as bench  # noqa: E402

from maml_ext.tasks.memorization import FixedLabelEpisodes  # noqa: E402
from maml_ext.train import loop  # noqa: E402


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("MAML_EXT_CACHE", str(tmp_path / "cache"))
    write_omniglot(tmp_path / "glyphs", alphabets=(("Alpha", 10), ("Beta", 10)), evaluation=(("Gamma", 8),))
    (tmp_path / "glyphs" / "manifest.json").write_text("{}")
    return tmp_path / "glyphs"


def run_main(monkeypatch, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", ["bench_memorization.py", *argv])
    bench.main()


def test_glyph_memo_table_reports_accuracy_of_both_families(root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    run_main(monkeypatch, "glyphs", "--root", str(root), "--iterations", "3", "--tasks", "10", "--filters", "4",
             "--beta", "0", "--meta-batch", "2", "--eval-steps", "2", "--eval-k-query", "1", "--out", str(out))
    summary = json.loads((out / "glyphs.json").read_text())
    assert sorted(summary) == ["me-maml", "me-mr-maml-0", "nme-maml", "nme-mr-maml-0"]
    for cells in summary.values():
        assert sorted(cells) == ["test post", "test pre", "train post", "train pre"]
        assert all(0.0 <= mean <= 1.0 for mean, _ in cells.values())  # accuracies, not losses
    table = capsys.readouterr().out
    assert table.count("| non-mutually-exclusive |") == 4 and "%" in table  # rows printed as they come, then the table
    # second run, same config: restored, not trained again
    run_main(monkeypatch, "glyphs", "--root", str(root), "--iterations", "3", "--tasks", "10", "--filters", "4",
             "--beta", "0", "--meta-batch", "2", "--eval-steps", "2", "--eval-k-query", "1", "--out", str(out), "--reuse",
             "--families", "memo", "--algorithms", "maml")
    assert json.loads((out / "glyphs.json").read_text())["nme-maml"] == summary["nme-maml"]
    # the same runs on the validation classes too: test cells unchanged, val cells from other episodes
    run_main(monkeypatch, "glyphs", "--root", str(root), "--iterations", "3", "--tasks", "10", "--filters", "4",
             "--beta", "0", "--meta-batch", "2", "--eval-steps", "2", "--eval-k-query", "1", "--out", str(out), "--reuse",
             "--families", "memo", "--algorithms", "maml", "--splits", "val", "test")
    both = json.loads((out / "glyphs.json").read_text())["nme-maml"]
    assert sorted(both) == ["test post", "test pre", "train post", "train pre", "val post", "val pre"]
    assert {k: both[k] for k in summary["nme-maml"]} == summary["nme-maml"] and both["val post"] != both["test post"]
    assert "| val tasks, 0 steps | val tasks, 2 steps | test tasks, 0 steps |" in capsys.readouterr().out


def test_glyph_config_selects_the_fixed_label_family_unless_control(root, tmp_path):
    args = argparse.Namespace(seed=0, filters=4, root=root, meta_batch=2, tasks=10, eval_k_query=1, eval_steps=1)
    memo = loop.build(bench.glyph_config({"name": "memo_glyphs", "exclusive": False}, {"name": "maml"}, args))
    control = loop.build(bench.glyph_config({"name": "memo_glyphs", "exclusive": True}, {"name": "maml"}, args))
    assert isinstance(memo.family.episodes, FixedLabelEpisodes)
    assert not isinstance(control.family.episodes, FixedLabelEpisodes)
    acc = bench.held_out_metric(memo, memo.family.held_out, memo.config, 2, "accuracy")
    assert acc.shape == (3, 10) and acc.dtype == torch.float64


def test_imaml_glyphs_trains_both_for_the_budget(root, monkeypatch, capsys):
    run_main(monkeypatch, "imaml", "--family", "glyphs", "--root", str(root), "--seconds", "0.5", "--tasks", "10",
             "--filters", "4", "--imaml-steps", "2", "--cg-steps", "1", "--meta-batch", "2", "--eval-k-query", "1")
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| MAML") or r.startswith("| iMAML")]
    assert len(rows) == 4  # each printed as it comes, then in the table
    assert "(3 steps)" in rows[0] and "iMAML (2 steps, λ=2, 1 CG)" in rows[1] and "(2 steps)" in rows[1]
    assert int(rows[0].split("|")[2]) > 0 and int(rows[1].split("|")[2]) > 0


def test_glyph_mr_maml_a_and_adapted_mr_maml_rows(root, tmp_path, monkeypatch):
    """MR-MAML(A) on glyphs runs on bottleneck_conv4; MR-MAML(W) adapts what --adapt names, with --prior-std."""
    out = tmp_path / "out"
    run_main(monkeypatch, "glyphs", "--root", str(root), "--iterations", "2", "--tasks", "10", "--filters", "4",
             "--algorithms", "mr-maml-a", "mr-maml", "--beta", "1e-3", "--beta-a", "0.1", "--latent", "3",
             "--adapt", "convs", "norms", "head", "--prior-std", "0.5", "--families", "memo", "--meta-batch", "2", "--eval-steps", "1",
             "--eval-k-query", "1", "--out", str(out))
    assert sorted(json.loads((out / "glyphs.json").read_text())) == ["nme-mr-maml-0.001", "nme-mr-maml-a-0.1"]
    run_a, _ = loop.restore(out / "nme-mr-maml-a-0.1" / loop.CHECKPOINT)
    assert run_a.config["model"]["name"] == "bottleneck_conv4" and run_a.learner.encoder.head.out_features == 6
    run_w, _ = loop.restore(out / "nme-mr-maml-0.001" / loop.CHECKPOINT)
    assert "convs.0.weight" in run_w.learner.adapt_names and "convs.0.weight" in run_w.learner.stochastic_names
    assert run_w.learner.prior_std == 0.5


def test_glyph_fresh_adam_one_task_last_block_stochastic(root, tmp_path, monkeypatch):
    """The third pass's command: --fresh-adam and --meta-batch reach the run's config, and the
    last block's names select its convolution, BatchNorm and head as the stochastic weights."""
    out = tmp_path / "out"
    run_main(monkeypatch, "glyphs", "--root", str(root), "--iterations", "2", "--tasks", "5", "--filters", "4",
             "--fresh-adam", "--meta-batch", "1", "--families", "memo", "--algorithms", "mr-maml",
             "--stochastic", "convs.3", "norms.3", "head", "--adapt", "convs", "norms", "head",
             "--beta", "1e-2", "--init-std", "1.9e-22", "--eval-steps", "1", "--eval-k-query", "1", "--out", str(out))
    run, _ = loop.restore(out / "nme-mr-maml-0.01" / loop.CHECKPOINT)
    assert run.config["train"]["optimizer"] == "fresh-adam" and run.config["train"]["meta_batch"] == 1
    assert sorted(run.learner.stochastic_names) == ["convs.3.bias", "convs.3.weight", "head.bias", "head.weight",
                                                    "norms.3.bias", "norms.3.weight"]
    run_main(monkeypatch, "glyphs", "--root", str(root), "--iterations", "2", "--tasks", "5", "--filters", "4",
             "--fresh-adam", "--meta-batch", "1", "--families", "memo", "--algorithms", "mr-maml", "--plain-norms", "3",
             "--stochastic", "head", "--adapt", "convs", "norms", "head",
             "--beta", "1", "--init-std", "1.9e-22", "--eval-steps", "1", "--eval-k-query", "1", "--out", str(out / "plain"))
    run, _ = loop.restore(out / "plain" / "nme-mr-maml-1" / loop.CHECKPOINT)
    assert run.config["model"]["plain_norms"] == [3] and not run.learner.model.norms[3].affine
