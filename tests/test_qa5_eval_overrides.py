"""``maml-ext eval`` overrides: the evaluation settings (eval.*) and the task options that choose
only the held-out tasks (task.eval_split) are accepted; anything that would change what the model
was trained for is refused with a message naming the keys that can be overridden."""

from __future__ import annotations

import json

import pytest
import torch

from maml_ext import cli
from maml_ext.train import loop

from _fewshot_data import write_omniglot


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qa5_eval")
    data, out = tmp / "omniglot", tmp / "run"
    write_omniglot(data)
    small = [
        f"task.root={json.dumps(str(data))}", "task.train_classes=8", "task.val_classes=2", "task.n_way=2",
        "model.filters=4", "train.iterations=2", "train.meta_batch=2", "train.checkpoint_every=1",
        "eval.num_tasks=3", "eval.steps=1", "eval.shots=[1]", "eval.k_query=2",
    ]
    mp = pytest.MonkeyPatch()
    mp.setenv("MAML_EXT_CACHE", str(tmp / "cache"))
    args = [a for s in small for a in ("--set", s)]
    assert cli.main(["train", "omniglot-5way", "--out", str(out), "--quiet", "--no-eval", *args]) == 0
    yield out
    mp.undo()


def test_eval_on_the_validation_split(trained, monkeypatch):
    seen = {}
    evaluate = cli.evaluate.evaluate

    def spy(run, cfg, progress=True):
        seen["held_out"] = set(run.family.held_out.split.classes)
        seen["train"] = set(run.family.split.classes)
        seen["params"] = {n: p.detach().clone() for n, p in run.learner.named_parameters()}
        return evaluate(run, cfg, progress)

    monkeypatch.setattr(cli.evaluate, "evaluate", spy)
    assert cli.main(["eval", str(trained), "--set", "task.eval_split=\"val\""]) == 0
    val = json.loads((trained / "eval-task.eval_split=val.json").read_text())
    assert val["settings"]["task.eval_split"] == "val"
    assert not (trained / "eval.json").exists()  # the test split's file is not the validation one
    run, _ = loop.restore(trained / loop.CHECKPOINT)
    val_classes, test_classes = seen["held_out"], set(run.family.held_out.split.classes)
    assert val_classes and not val_classes & test_classes and not val_classes & seen["train"]
    for n, p in run.learner.named_parameters():  # the trained model, restored as it was
        assert torch.equal(seen["params"][n], p.detach())


@pytest.mark.parametrize("override", ["task.n_way=3", "train.iterations=5", "model.filters=8", "seed=3"])
def test_what_changes_the_trained_model_is_refused_naming_what_can_be_overridden(trained, override, capsys):
    assert cli.main(["eval", str(trained), "--set", override]) == 2
    err = capsys.readouterr().err
    assert "eval/plot accept only eval.* and task.eval_split overrides" in err
    assert f"refused: {override.split('=')[0]}" in err


def test_plot_of_an_unevaluated_split_names_the_eval_command_that_makes_it(trained, capsys):
    """The notice's command must be one `maml-ext eval` accepts: task options as task.*, not eval.task.*."""
    assert cli.main(["plot", str(trained), "--set", "task.eval_split=\"test\"", "--set", "eval.steps=2"]) == 0
    err = capsys.readouterr().err
    assert "--set task.eval_split=\"test\"" in err and "--set eval.steps=2" in err
    assert "eval.task." not in err
