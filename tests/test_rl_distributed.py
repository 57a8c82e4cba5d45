"""Data-parallel meta-RL: 2 gloo processes splitting the tasks of each meta-batch take the same
steps as one process (point_nav: deterministic start states, so the same rollouts).

In float64: the all-reduced sums differ from one process's sums in rounding only, which TRPO's
conjugate gradient (damping 1e-5) amplifies ~1000x per meta-iteration: measured KL differences
1e-13, 1e-10, 1e-7 .. 1.5e-6 relative at iterations 1, 2, 3 (the last depends on thread count and
machine), so the comparison stops at iteration 2, where 1e-6 leaves four orders of margin while
any real difference in tasks, noise or reductions would show at the percent level."""

from __future__ import annotations

import json

import pytest
import torch

from maml_ext import cli
from maml_ext.rl import train as rl
from maml_ext.train import config, distributed

SMALL = ["model.hidden=[16, 16]", 'model.dtype="float64"', "train.meta_batch=5", "train.rollouts=4", "task.horizon=25",
         "train.checkpoint_every=1", "eval.num_tasks=4", "eval.rollouts=4", "eval.steps=1", "eval.trajectories=1"]


def _cfg(*extra: str) -> config.Config:
    return rl.load_config(config.apply_overrides(config.read("point-nav"), [*SMALL, *extra]))


def _train_all(runs):
    for c, out, resume in runs:
        rl.train(c, out, resume=resume, progress=False)


def _records(path):
    return [{k: v for k, v in json.loads(x).items() if k != "it_s"} for x in path.read_text().splitlines()]


def _assert_same(a, b):
    sa = torch.load(a / rl.CHECKPOINT, weights_only=True)
    sb = torch.load(b / rl.CHECKPOINT, weights_only=True)
    assert sa["iteration"] == sb["iteration"]
    for key, value in sa["learner"]["policy"].items():
        torch.testing.assert_close(value, sb["learner"]["policy"][key], rtol=1e-5, atol=1e-7)
    ra, rb = _records(a / rl.METRICS), _records(b / rl.METRICS)
    assert [r["iteration"] for r in ra] == [r["iteration"] for r in rb]
    for x, y in zip(ra, rb):
        assert x["accepted"] == y["accepted"] and x["backtracks"] == y["backtracks"]
        for key in ("return_pre", "return_post", "kl", "surrogate_change"):
            assert x[key] == pytest.approx(y[key], rel=1e-6), key


def test_two_ranks_equal_one_process_with_resume(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    runs = [(_cfg("train.iterations=1"), two, False), (_cfg("train.iterations=2"), two, True)]
    distributed.launch(2, _train_all, runs, timeout=60)
    rl.train(_cfg("train.iterations=2"), one, progress=False)
    _assert_same(two, one)


def test_cli_nproc_adam(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["train", "point-nav", "--out", str(out), "--nproc", "2", "--quiet", "--timeout", "60",
            "--set", "train.iterations=2", "--set", "train.optimizer=adam", "--set", "train.meta_lr=0.01"]
    assert cli.main(args + [f"--set={s}" for s in SMALL]) == 0
    one = tmp_path / "one"
    rl.train(_cfg("train.iterations=2", "train.optimizer=adam", "train.meta_lr=0.01"), one, progress=False)
    sa = torch.load(out / rl.CHECKPOINT, weights_only=True)["learner"]["policy"]
    sb = torch.load(one / rl.CHECKPOINT, weights_only=True)["learner"]["policy"]
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=1e-5, atol=1e-7)
    assert (out / "eval.json").exists()
    assert capsys.readouterr().out.count("checkpoint: ") == 1
