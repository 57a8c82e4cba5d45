"""Meta-RL training loop and CLI: a short run improves the return, resume is bit-exact,
evaluation/plots are written, bad configs are rejected by name."""

from __future__ import annotations

import functools
import json
import re

import pytest
import torch

from maml_ext import cli, plugins
from maml_ext.rl.envs.base import TaskEnv
from maml_ext.rl.envs.point_nav import build_point_nav
from maml_ext.tasks.sinusoid import build as build_sinusoid
from maml_ext.rl import train as rl
from maml_ext.train import config
from maml_ext.train.checkpoint import CheckpointError

from _rl_settings import SMALL


def _cfg(*extra: str) -> config.Config:
    return rl.load_config(config.apply_overrides(config.read("point-nav"), [*SMALL, *extra]))


def test_packaged_config_is_the_papers_setting():
    cfg = rl.load_config(config.read("point-nav"))
    assert cfg["train"]["meta_batch"] == 20 and cfg["train"]["rollouts"] == 20
    assert cfg["train"]["max_kl"] == 0.01 and cfg["train"]["cg_iters"] == 10
    assert cfg["algorithm"] == {"name": "maml", "lr": 0.1}
    assert cfg["eval"]["num_tasks"] == 40 and cfg["eval"]["later_lr"] == 0.05
    assert isinstance(rl.task_family(cfg), TaskEnv)
    assert not isinstance(rl.task_family(config.read("sinusoid")), TaskEnv)
    for name in ("halfcheetah-vel", "halfcheetah-dir", "ant-vel", "ant-dir"):
        assert rl.load_config(config.read(name))["train"]["meta_batch"] == 40


@pytest.mark.parametrize("config_name, task, factory, sets", [
    ("sinusoid", "sinusoid", build_sinusoid,
     ["model.hidden=[8]", "train.meta_batch=2", "eval.num_tasks=4", "eval.shots=[5]", "eval.k_query=5", "eval.steps=1"]),
    ("point-nav", "point_nav", build_point_nav, SMALL),
], ids=["supervised", "meta-rl"])
def test_cli_builds_the_task_family_once(tmp_path, config_name, task, factory, sets):
    """`maml-ext train` builds the family once: it tells meta-RL from supervised, trains and is evaluated."""
    calls = []

    @functools.wraps(factory)  # the same options as the packaged factory
    def counted(**options):
        calls.append(options)
        return factory(**options)

    plugins.register_task(task, counted)  # shadows the entry point in this process
    try:
        args = ["train", config_name, "--out", str(tmp_path), "--quiet", "--set", "train.iterations=1"]
        assert cli.main([*args, *(arg for item in sets for arg in ("--set", item))]) == 0
    finally:
        plugins.tasks.unregister(task)
    assert (tmp_path / "eval.json").is_file()
    assert len(calls) == 1


def test_short_training_run_improves_return(tmp_path):
    cfg = _cfg("train.iterations=6")
    run = rl.build(cfg)
    from maml_ext.rl.evaluate import evaluate
    before = evaluate(run.learner, run.env, cfg["eval"])["returns"]["maml"]["mean"]
    rl.train(cfg, tmp_path, progress=False)
    trained, _ = rl.restore(tmp_path / rl.CHECKPOINT)
    after = evaluate(trained.learner, trained.env, cfg["eval"])["returns"]["maml"]["mean"]
    assert after[0] > before[0] + 3 and after[1] > before[1] + 3, (before, after)
    lines = [json.loads(x) for x in (tmp_path / rl.METRICS).read_text().splitlines()]
    assert [x["iteration"] for x in lines] == list(range(1, 7))
    assert all(x["accepted"] and x["kl"] <= 0.01 for x in lines)


def test_resume_is_bit_exact(tmp_path):
    for optimizer in ("trpo", "adam"):
        straight, resumed = tmp_path / f"a-{optimizer}", tmp_path / f"b-{optimizer}"
        rl.train(_cfg("train.iterations=4", f"train.optimizer={optimizer}"), straight, progress=False)
        rl.train(_cfg("train.iterations=2", f"train.optimizer={optimizer}"), resumed, progress=False)
        rl.train(_cfg("train.iterations=4", f"train.optimizer={optimizer}"), resumed, resume=True, progress=False)
        a = torch.load(straight / rl.CHECKPOINT, weights_only=True)
        b = torch.load(resumed / rl.CHECKPOINT, weights_only=True)
        for key, value in a["learner"]["policy"].items():
            assert torch.equal(value, b["learner"]["policy"][key]), (optimizer, key)
        assert (straight / rl.METRICS).read_text().count("\n") == 4
        strip = lambda path: [{k: v for k, v in json.loads(x).items() if k != "it_s"}  # noqa: E731
                              for x in path.read_text().splitlines()]
        assert strip(straight / rl.METRICS) == strip(resumed / rl.METRICS)


def test_resume_refuses_changed_config_and_overwrite(tmp_path):
    rl.train(_cfg("train.iterations=1"), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="exists"):
        rl.train(_cfg("train.iterations=1"), tmp_path, progress=False)
    with pytest.raises(config.ConfigError, match="train.max_kl"):
        rl.train(_cfg("train.iterations=2", "train.max_kl=0.02"), tmp_path, resume=True, progress=False)


def test_cli_train_eval_plot(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "point-nav", "--out", str(out), "--quiet", "--set", "train.iterations=2",
            "--set", "algorithm.name=fomaml", "--set", "train.optimizer=adam", "--set", "train.meta_lr=0.01"]
    for item in SMALL:
        args += ["--set", item]
    assert cli.main(args) == 0
    for name in ("checkpoint.pt", "metrics.jsonl", "eval.json", "learning_curve.png", "adaptation.png",
                 "trajectories.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "eval.json").read_text())
    assert set(results["returns"]) == {"fomaml", "random_init"}  # the run's algorithm, not "maml"
    assert len(results["returns"]["fomaml"]["mean"]) == 3 and len(results["returns"]["fomaml"]["per_task"]) == 6
    assert cli.main(["eval", str(out), "--set", "eval.steps=1", "--set", "eval.random_init=false"]) == 0
    assert list(json.loads((out / "eval-random_init=false-steps=1.json").read_text())["returns"]) == ["fomaml"]
    assert json.loads((out / "eval.json").read_text()) == results  # the first evaluation is kept
    assert "average return over 6 test tasks" in capsys.readouterr().out
    assert cli.main(["plot", str(out)]) == 0
    assert cli.main(["eval", str(out), "--set", "train.iterations=5"]) == 2
    assert "only eval.*" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("train.max_kl=-1", "train.max_kl must be a number > 0"),
    ("train.optimizer=sgd", "train.optimizer must be one of"),
    ("train.k_support=5", "unknown config key"),
    ("algorithm.name=reptile", "algorithm.name for meta-RL must be one of"),
    ("algorithm.lr=0", "algorithm.lr must be a number > 0"),
    ("algorithm.steps=2", "unknown \\[algorithm\\] option"),
    ("model.name=mlp", r"model 'mlp' has no option\(s\) \['init_std'\]"),
    ("eval.trajectories=50", "eval.trajectories must be <="),
])
def test_bad_config_is_rejected_by_name(tmp_path, capsys, override, message):
    assert cli.main(["train", "point-nav", "--out", str(tmp_path), "--quiet", "--set", override]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_non_policy_model_is_rejected(tmp_path):
    from maml_ext import plugins
    from maml_ext.models.mlp import build

    plugins.register_model("plain_mlp_for_rl_test", lambda in_features, out_features: build(in_features, out_features))
    try:
        cfg = rl.load_config(config.apply_overrides(config.read("point-nav"), []))
        cfg["model"] = {"name": "plain_mlp_for_rl_test"}
        with pytest.raises(config.ConfigError, match="not a Gaussian MLP policy"):
            rl.build(cfg)
    finally:
        plugins.models.unregister("plain_mlp_for_rl_test")
