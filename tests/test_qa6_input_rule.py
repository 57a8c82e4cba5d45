"""maml_ext's Conv4 declares its input rule (``input_rule()``): a batch without the task or the
example dimension is refused with the clear message before any work; a plugin model can do the same."""

import pytest
import torch
from torch import nn

from maml_ext.algorithms import MAML, FirstLayer
from maml_ext.models.conv4 import Conv4


def test_conv4_refuses_batches_it_would_misread():
    learner = MAML(Conv4(1, 5, filters=4, image_size=8, layers=2), lr=0.1)
    y = torch.zeros(2, 3, dtype=torch.long)
    for shape in [(2, 1, 8, 8), (6, 1, 8, 8)]:  # [T, C, H, W], [N, C, H, W]
        with pytest.raises(ValueError, match=r"x_support: expected \[T, K, 1, H, W\] .*Conv4\(in_channels=1\)"):
            learner.adapt(torch.randn(shape), torch.zeros(shape[:2], dtype=torch.long))
    with pytest.raises(ValueError, match="x_support: expected"):  # wrong channel count
        learner.adapt(torch.randn(2, 3, 3, 8, 8), y)
    assert len(learner.adapt(torch.randn(2, 3, 1, 8, 8), torch.randn(2, 3, 5))) > 0


class Declared(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(4, 2)

    def input_rule(self):
        return FirstLayer("Declared(in_features=4)", 1, False, 4)

    def forward(self, x):
        return self.net(x)


def test_a_plugin_model_declares_its_rule():
    learner = MAML(Declared(), lr=0.1)
    with pytest.raises(ValueError, match=r"x_support: expected \[T, K, 4\] .*Declared\(in_features=4\)"):
        learner.adapt(torch.randn(2, 3, 5), torch.randn(2, 3, 2))
