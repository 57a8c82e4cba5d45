"""Every evaluation of a run keeps its own file, named by its settings; runs are compared only on
evaluations with equal settings."""

import json

import pytest

from maml_ext import cli
from maml_ext.train import config, results

RUN = {"num_tasks": 600, "shots": [5, 10], "k_query": 100, "steps": 10, "seed": 1000, "chunk": 200}


def test_file_names_follow_the_settings_that_differ(tmp_path):
    assert results.path_for(tmp_path, dict(RUN), RUN).name == "eval.json"
    assert results.path_for(tmp_path, {**RUN, "chunk": 50}, RUN).name == "eval.json"  # same numbers
    other = {**RUN, "shots": [1], "steps": 3}
    assert results.path_for(tmp_path, other, RUN).name == "eval-shots=1-steps=3.json"
    assert results.path_for(tmp_path, {**RUN, "random_init": False}, {**RUN, "random_init": True}).name \
        == "eval-random_init=false.json"


def test_write_records_settings_and_matching_finds_equal_ones(tmp_path):
    one = {**RUN, "num_tasks": 100}
    results.write({"shots": {"5": {}}}, RUN, tmp_path, RUN)
    results.write({"shots": {"5": {}}, "mark": 1}, one, tmp_path, RUN)
    assert json.loads((tmp_path / "eval.json").read_text())["settings"] == results.settings(RUN)
    assert results.matching(tmp_path, {**one, "shots": [1]})["mark"] == 1  # shot counts may differ
    with pytest.raises(config.ConfigError) as err:
        results.matching(tmp_path, {**RUN, "num_tasks": 20})
    assert "num_tasks=20" in str(err.value) and "num_tasks=100" in str(err.value) and "num_tasks=600" in str(err.value)
    with pytest.raises(config.ConfigError, match="no evaluation"):
        results.matching(tmp_path / "nothing", RUN)


TINY = ["model.hidden=[8]", "train.iterations=2", "train.meta_batch=4", "eval.num_tasks=10", "eval.shots=[5]",
        "eval.k_query=10", "eval.steps=2"]


def test_cli_keeps_both_evaluations_and_refuses_unlike_comparisons(tmp_path, capsys):
    runs = {name: tmp_path / name for name in ("maml", "pretrain")}
    for name, out in runs.items():
        sets = [a for s in [*TINY, f"algorithm.name={name}"] for a in ("--set", s)]
        assert cli.main(["train", "sinusoid", "--out", str(out), "--quiet", *sets]) == 0
    first = json.loads((runs["maml"] / "eval.json").read_text())
    assert "loss" in first["shots"]["5"] and first["settings"]["num_tasks"] == 10
    assert "| 5 | MSE |" in capsys.readouterr().out
    assert cli.main(["eval", str(runs["maml"]), "--set", "eval.shots=[1]", "--set", "eval.num_tasks=6"]) == 0
    assert json.loads((runs["maml"] / "eval.json").read_text()) == first  # kept
    again = json.loads((runs["maml"] / "eval-num_tasks=6-shots=1.json").read_text())
    assert list(again["shots"]) == ["1"] and again["num_tasks"] == 6
    assert cli.main(["plot", str(runs["maml"]), "--compare", str(runs["pretrain"])]) == 0
    capsys.readouterr()
    # The 6-task evaluation has no counterpart in the other run: refused, naming both settings.
    assert cli.main(["plot", str(runs["maml"]), "--set", "eval.num_tasks=6", "--set", "eval.shots=[1]",
                     "--compare", str(runs["pretrain"])]) == 2
    err = capsys.readouterr().err
    assert "num_tasks=6" in err and "num_tasks=10" in err
