"""The paper's sinusoid experiment end to end (70,000 meta-iterations each): `pytest -m slow`.

Table 2 of the paper (5-shot MSE after 1 / 5 / 10 steps): MAML 0.67 / 0.38 / 0.35, pretrained
2.41 / 2.23 / 2.19. Bounds are on the 600-task means of the packaged config (seed 0), whose
α = 0.01 (paper text) lets a few 5-shot tasks diverge over many steps, and of α = 0.001.
"""

import pytest

from maml_ext.train import config, evaluate, loop


def trained(tmp_path, *overrides):
    cfg = config.load("sinusoid", list(overrides))
    run, _ = loop.restore(loop.train(cfg, tmp_path / "run", progress=False))
    return evaluate.evaluate(run, cfg)["shots"]


@pytest.mark.slow
def test_maml_matches_the_paper_after_one_step(tmp_path):
    shots = trained(tmp_path)
    assert shots["5"]["loss"]["mean"][1] < 0.75  # paper: 0.67
    assert shots["10"]["loss"]["mean"][1] < 0.45 and shots["10"]["loss"]["mean"][10] < 0.3


@pytest.mark.slow
def test_pretrained_baseline_is_far_behind(tmp_path):
    shots = trained(tmp_path, "algorithm.name=pretrain")
    assert 2.0 < shots["5"]["loss"]["mean"][1] < 2.8  # paper: 2.41
    assert 1.8 < shots["5"]["loss"]["mean"][10] < 2.6  # paper: 2.19


@pytest.mark.slow
def test_maml_with_the_official_code_inner_rate_keeps_improving(tmp_path):
    # Runs that differ only in float32 rounding measured 0.670 / 0.345 / 0.312 and 0.717 / 0.426 /
    # 0.394 (paper 0.67 / 0.38 / 0.35): the bounds hold for both, not only for the luckier one.
    shots = trained(tmp_path, "algorithm.lr=0.001")  # cbfinn/maml's default update_lr
    mean = shots["5"]["loss"]["mean"]
    assert mean[1] < 0.75 and mean[5] < 0.5 and mean[10] < 0.45
    assert mean[10] < mean[5] < mean[1]  # no divergence over 10 steps at this rate
