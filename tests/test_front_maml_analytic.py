"""MAML meta-gradients of a linear model, worked out by hand (torchmeta's test style).

Model f(x) = w·x + b with w = 1, b = 0; loss (f(x) − y)² on single examples; α = 0.1; one step.

Task 1: support (x=2, y=1), query (x=3, y=0).
    residual r = 2; ∇L_s = (2·r·x, 2·r) = (4, 2); Hessian H = [[2x², 2x], [2x, 2]] = [[8, 4], [4, 2]].
    θ' = θ − α∇L_s = (0.6, −0.2); query residual 3·0.6 − 0.2 = 1.6, L_q = 2.56,
    ∇'L_q = (2·1.6·3, 2·1.6) = (9.6, 3.2); dθ'/dθ = I − αH = [[0.2, −0.4], [−0.4, 0.8]];
    second order: (0.2·9.6 − 0.4·3.2, −0.4·9.6 + 0.8·3.2) = (0.64, −1.28); first order: (9.6, 3.2).
Task 2: support (x=1, y=0), query (x=−1, y=1).
    r = 1; ∇L_s = (2, 2); H = [[2, 2], [2, 2]]; θ' = (0.8, −0.2); query residual −1 − 1 = −2, L_q = 4,
    ∇'L_q = (2·(−2)·(−1), 2·(−2)) = (4, −4); I − αH = [[0.8, −0.2], [−0.2, 0.8]];
    second order: (3.2 + 0.8, −0.8 − 3.2) = (4, −4); first order: (4, −4).
Meta-batch of both (mean over tasks): loss 3.28; MAML gradient (dw, db) = (2.32, −2.64);
FOMAML gradient ((9.6 + 4)/2, (3.2 − 4)/2) = (6.8, −0.4).
"""

import pytest
import torch
from torch import nn

from maml_ext.algorithms import MAML
from maml_ext.models.mlp import build as build_mlp
from maml_ext.tasks import TaskBatch

BATCH = TaskBatch(
    x_support=torch.tensor([[[2.0]], [[1.0]]], dtype=torch.float64),
    y_support=torch.tensor([[[1.0]], [[0.0]]], dtype=torch.float64),
    x_query=torch.tensor([[[3.0]], [[-1.0]]], dtype=torch.float64),
    y_query=torch.tensor([[[0.0]], [[1.0]]], dtype=torch.float64),
)


def linear_model(fused_capable: bool) -> nn.Module:
    # MLP with no hidden layer = one Linear, which declares the fused path; nn.Linear does not.
    model = build_mlp(1, 1, hidden=()) if fused_capable else nn.Linear(1, 1)
    model = model.double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.ones_like(p) if p.dim() == 2 else torch.zeros_like(p))
    return model


@pytest.mark.parametrize("fused_capable", [False, True], ids=["generic", "fused"])
@pytest.mark.parametrize(
    ("first_order", "expected"), [(False, (2.32, -2.64)), (True, (6.8, -0.4))], ids=["maml", "fomaml"]
)
def test_meta_gradient_matches_hand_derivation(fused_capable, first_order, expected):
    model = linear_model(fused_capable)
    learner = MAML(model, lr=0.1, steps=1, first_order=first_order)
    assert (learner.fused_spec is not None) == fused_capable
    loss = learner.meta_loss(BATCH)
    loss.backward()
    weight, bias = model.parameters()
    assert loss.item() == pytest.approx(3.28, abs=1e-12)
    assert weight.grad.item() == pytest.approx(expected[0], abs=1e-12)
    assert bias.grad.item() == pytest.approx(expected[1], abs=1e-12)


def test_adapted_parameters_match_hand_derivation():
    learner = MAML(linear_model(False), lr=0.1)
    adapted = learner.adapt(BATCH.x_support, BATCH.y_support).adapted
    assert adapted["weight"].flatten().tolist() == pytest.approx([0.6, 0.8], abs=1e-12)
    assert adapted["bias"].flatten().tolist() == pytest.approx([-0.2, -0.2], abs=1e-12)
