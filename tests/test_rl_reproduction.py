"""Slow: 2D navigation MAML-TRPO with the paper's settings, shortened to 15 meta-iterations,
already adapts in one step far better than its initialisation (full run: README, examples/results/rl)."""

from __future__ import annotations

import pytest
import torch

from maml_ext.rl import train as rl
from maml_ext.rl.evaluate import evaluate
from maml_ext.train import config


@pytest.mark.slow
def test_point_nav_shortened_run_learns_to_adapt(tmp_path):
    torch.set_num_threads(1)
    cfg = rl.load_config(config.apply_overrides(config.read("point-nav"), ["train.iterations=15"]))
    rl.train(cfg, tmp_path, progress=False)
    run, _ = rl.restore(tmp_path / rl.CHECKPOINT)
    initial = rl.build(cfg).learner
    results = evaluate(run.learner, run.env, {**cfg["eval"], "steps": 1}, initial)["returns"]
    maml, random_init = results["maml"]["mean"], results["random_init"]["mean"]
    # paper (500-iteration budget, best checkpoint): -40.4 before, -11.7 after one step
    assert maml[1] > -25.0, maml
    assert maml[1] > maml[0] + 10.0, maml
    assert maml[1] > random_init[1] + 20.0, (maml, random_init)
