"""train.optimizer = "fresh-adam": the first step of a new Keras Adam at every step (Yin et al.'s
MR-MAML notebook), float64 against Keras' update formula and a new torch Adam per step; selected
by the config, bad values named."""

import math

import pytest
import torch

from maml_ext.train import config, loop
from maml_ext.train.config import ConfigError
from maml_ext.train.optim import FreshAdam, LeanFusedAdam, meta_optimizer


def keras_first_step(p, g, lr, beta1=0.9, beta2=0.999, eps=1e-7):
    """Keras (TF 2.x) Adam's first apply_gradients: ε added to the uncorrected √v."""
    lr_t = lr * math.sqrt(1 - beta2) / (1 - beta1)
    m, v = (1 - beta1) * g, (1 - beta2) * g * g
    return p - lr_t * m / (v.sqrt() + eps)


def test_every_step_is_a_new_keras_adam_first_step():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(50, dtype=torch.float64))
    opt = FreshAdam([p], lr=1e-3)
    for step in range(3):
        # gradients from 1e-9 (below ε': a linear step) to 10 (a sign step), and exact zeros
        g = torch.randn(50, dtype=torch.float64) * torch.logspace(-9, 1, 50, dtype=torch.float64)
        g[::7] = 0.0
        expected = keras_first_step(p.detach().clone(), g, 1e-3)
        fresh_torch = torch.nn.Parameter(p.detach().clone())
        torch_adam = torch.optim.Adam([fresh_torch], lr=1e-3, eps=1e-7 / math.sqrt(1 - 0.999))
        fresh_torch.grad = g.clone()
        torch_adam.step()
        p.grad = g.clone()
        opt.step()
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=0)
        torch.testing.assert_close(p.detach(), fresh_torch.detach(), rtol=1e-12, atol=0)
    assert opt.state_dict()["state"] == {}  # nothing carried between steps


def test_selected_by_the_config_and_bad_values_named():
    cfg = config.load("sinusoid", ["train.optimizer=\"fresh-adam\"", "train.meta_batch=2"])
    step = loop.SupervisedStep(loop.build(cfg), loop.distributed.current())
    assert isinstance(step.optimizer, FreshAdam)
    before = [p.detach().clone() for p in step.params]
    step(0)
    moved = max((p.detach() - b).abs().max().item() for p, b in zip(step.params, before))
    assert 0 < moved <= 1e-3 * (1 + 1e-6)  # no entry moves by more than meta_lr
    assert isinstance(meta_optimizer("adam", [torch.nn.Parameter(torch.zeros(2))], 1e-3), LeanFusedAdam)
    with pytest.raises(ConfigError, match=r"train.optimizer must be one of \['adam', 'fresh-adam'\]"):
        config.load("sinusoid", ["train.optimizer=\"sgd\""])
    with pytest.raises(ValueError, match="optimizer must be 'adam' or 'fresh-adam', got 'sgd'"):
        meta_optimizer("sgd", [torch.nn.Parameter(torch.zeros(2))], 1e-3)
