"""`maml-ext plot RUN --compare OTHER ...` for meta-RL runs: the other runs' returns join
adaptation.png; runs evaluated on other test tasks are refused."""

import json
import shutil

import pytest

from maml_ext import cli
from maml_ext.rl import train as rl
from maml_ext.train.config import ConfigError

from _rl_settings import SMALL


def _results(seed=1, rows=("maml", "random_init"), steps=2):
    return {"num_tasks": 6, "seed": seed,
            "returns": {r: {"mean": [float(i) for i in range(steps + 1)], "ci95": [0.1] * (steps + 1)} for r in rows}}


def test_compared_returns_adds_prefixed_rows_and_refuses_other_tasks():
    merged = rl.compared_returns(_results(), "point_nav", {"fomaml-run": ("point_nav", _results(rows=("maml",), steps=3))})
    assert list(merged["returns"]) == ["maml", "random_init", "fomaml-run: maml"]
    assert len(merged["returns"]["fomaml-run: maml"]["mean"]) == 4
    with pytest.raises(ConfigError, match="--compare b: evaluated on 6 point_nav test tasks with seed 2, this run on 6 point_nav"):
        rl.compared_returns(_results(), "point_nav", {"b": ("point_nav", _results(seed=2))})
    with pytest.raises(ConfigError, match="--compare c: evaluated on 6 halfcheetah_vel test tasks"):
        rl.compared_returns(_results(), "point_nav", {"c": ("halfcheetah_vel", _results())})


def test_cli_plot_compare(tmp_path, capsys):
    runs = {}
    for name in ("maml", "fomaml"):
        runs[name] = tmp_path / name
        args = ["train", "point-nav", "--out", str(runs[name]), "--quiet", "--set", "train.iterations=1",
                "--set", f"algorithm.name={name}", "--set", "train.optimizer=adam", "--set", "train.meta_lr=0.01",
                "--set", "eval.random_init=false", *[f"--set={s}" for s in SMALL]]
        assert cli.main(args) == 0
    assert cli.main(["plot", str(runs["maml"]), "--compare", str(runs["fomaml"])]) == 0
    assert "adaptation.png" in capsys.readouterr().out
    shifted = tmp_path / "other-seed"
    shutil.copytree(runs["fomaml"], shifted)
    results = json.loads((shifted / "eval.json").read_text())
    (shifted / "eval.json").write_text(json.dumps({**results, "seed": results["seed"] + 1}))
    assert cli.main(["plot", str(runs["maml"]), "--compare", str(shifted)]) == 2
    assert "compare runs evaluated on the same test tasks" in capsys.readouterr().err
    assert cli.main(["plot", str(runs["maml"]), "--compare", str(tmp_path / "missing")]) == 2
    assert "no config.json" in capsys.readouterr().err
    # Evaluated with other settings (fewer rollouts per step): refused, naming both.
    assert cli.main(["eval", str(runs["fomaml"]), "--set", "eval.rollouts=4"]) == 0
    (runs["fomaml"] / "eval.json").unlink()
    assert cli.main(["plot", str(runs["maml"]), "--compare", str(runs["fomaml"])]) == 2
    err = capsys.readouterr().err
    assert "rollouts=8" in err and "rollouts=4" in err
