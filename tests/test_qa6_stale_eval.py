"""An evaluation written before ``train --resume`` trained on is not drawn as the current model's:
``plot`` says so (with the command that refreshes it), ``plot --compare`` refuses it."""

import json

from _rl_settings import SMALL

from maml_ext import cli

TINY = ["model.hidden=[8]", "train.iterations=2", "train.meta_batch=4", "eval.num_tasks=10", "eval.shots=[5]",
        "eval.k_query=10", "eval.steps=2"]


def _sets(values):
    return [a for s in values for a in ("--set", s)]


def _train_then_resume(out, algorithm):
    assert cli.main(["train", "sinusoid", "--out", str(out), "--quiet", *_sets([*TINY, f"algorithm.name={algorithm}"])]) == 0
    assert json.loads((out / "eval.json").read_text())["iteration"] == 2
    (out / "adaptation.png").unlink()
    assert cli.main(["train", "--resume", "--out", str(out), "--quiet", "--no-eval",
                     "--set", "train.iterations=3"]) == 0


def test_plot_notices_an_evaluation_older_than_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "maml"
    _train_then_resume(out, "maml")
    capsys.readouterr()
    assert cli.main(["plot", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"{out}/eval.json is the evaluation at iteration 2, the checkpoint is at iteration 3" in err
    assert f"evaluate it again: maml-ext eval {out};" in err and "adaptation.png is not drawn" in err
    assert not (out / "adaptation.png").exists()
    # Another setting's file, also stale, names the settings to evaluate again with.
    assert cli.main(["eval", str(out), "--set", "eval.steps=1"]) == 0
    assert cli.main(["train", "--resume", "--out", str(out), "--quiet", "--no-eval", "--set", "train.iterations=4"]) == 0
    capsys.readouterr()
    assert cli.main(["plot", str(out), "--set", "eval.steps=1"]) == 0
    assert f"evaluate it again: maml-ext eval {out} --set eval.steps=1;" in capsys.readouterr().err
    assert cli.main(["eval", str(out)]) == 0  # refreshed: drawn
    assert cli.main(["plot", str(out)]) == 0
    assert (out / "adaptation.png").exists()


def test_plot_compare_refuses_a_stale_evaluation_on_either_side(tmp_path, capsys):
    ours, theirs = tmp_path / "maml", tmp_path / "pretrain"
    _train_then_resume(ours, "maml")
    _train_then_resume(theirs, "pretrain")
    capsys.readouterr()
    assert cli.main(["plot", str(ours), "--compare", str(theirs)]) == 2
    err = capsys.readouterr().err
    assert "--compare needs this run evaluated with these settings first" in err and "iteration 2" in err
    assert cli.main(["eval", str(ours)]) == 0
    capsys.readouterr()
    assert cli.main(["plot", str(ours), "--compare", str(theirs)]) == 2
    err = capsys.readouterr().err
    assert f"--compare {theirs}: {theirs}/eval.json is the evaluation at iteration 2, the checkpoint is at iteration 3" in err
    assert f"maml-ext eval {theirs}" in err
    assert cli.main(["eval", str(theirs)]) == 0
    assert cli.main(["plot", str(ours), "--compare", str(theirs)]) == 0
    assert (ours / "adaptation.png").exists()


def test_a_meta_rl_plot_notices_a_stale_evaluation_too(tmp_path, capsys):
    out = tmp_path / "nav"
    small = ["train.optimizer=adam", *SMALL]
    assert cli.main(["train", "point-nav", "--out", str(out), "--quiet", "--set", "train.iterations=1", *_sets(small)]) == 0
    assert cli.main(["train", "--resume", "--out", str(out), "--quiet", "--no-eval", "--set", "train.iterations=2"]) == 0
    (out / "adaptation.png").unlink()
    capsys.readouterr()
    assert cli.main(["plot", str(out)]) == 0
    assert f"{out}/eval.json is the evaluation at iteration 1, the checkpoint is at iteration 2" in capsys.readouterr().err
    assert not (out / "adaptation.png").exists()
