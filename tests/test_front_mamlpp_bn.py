"""MAML++ per-step BatchNorm weights and biases (BNWB): one learned row per inner step, used in
place of the model's own and not adapted in the inner loop."""

import copy

import pytest
import torch
from torch import nn

from maml_ext.algorithms import MAML, build_algorithm
from maml_ext.tasks.episodes import Episodes


def _model_and_batch(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).double()
    labels = torch.arange(60) % 6
    family = Episodes(torch.randn(60, 4, dtype=torch.float64) + labels[:, None].double(), labels, n_way=3)
    return model, family.sample(5, 2, 3, torch.Generator().manual_seed(seed))


def test_mamlpp_learns_one_bn_weight_and_bias_row_per_step():
    model, batch = _model_and_batch()
    learner = build_algorithm("maml++", model, lr=0.1, steps=2, loss="cross_entropy")
    assert learner.bn_weight_0.shape == learner.bn_bias_0.shape == (3, 8)
    assert "1.weight" not in learner.adapt_names and "1.bias" not in learner.adapt_names
    learner.meta_loss(batch, iteration=1000).backward()  # second order from iteration 1000 on
    # Rows 0, 1: the support passes before steps 1 and 2; row 2: the query pass after step 2.
    for rows in (learner.bn_weight_0, learner.bn_bias_0):
        assert (rows.grad.abs().sum(1) > 0).all()
    assert model[1].weight.grad is None  # replaced by the rows


def test_rows_sum_to_the_shared_bn_parameters_gradient():
    """Rows equal to the model's weights give the same loss as shared, non-adapted BN parameters,
    and their gradients sum to the shared parameters' gradient (float64)."""
    model, batch = _model_and_batch()
    options = dict(lr=0.1, steps=2, loss="cross_entropy", learn_lr="per_step", multi_step_loss=10, per_step_bn=True)
    rows = MAML(model, per_step_bn_weights=True, **options)
    shared = MAML(copy.deepcopy(model), adapt=["0", "3"], **options)
    a, b = rows.meta_loss(batch), shared.meta_loss(batch)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    a.backward()
    b.backward()
    for kind in ("weight", "bias"):
        torch.testing.assert_close(getattr(rows, f"bn_{kind}_0").grad.sum(0), getattr(shared.model[1], kind).grad,
                                   rtol=1e-10, atol=1e-12)
    for name in ("0.weight", "0.bias", "3.weight", "3.bias"):
        torch.testing.assert_close(rows.model.get_parameter(name).grad, shared.model.get_parameter(name).grad,
                                   rtol=1e-10, atol=1e-12)


def test_the_forward_after_s_steps_uses_row_s():
    model, batch = _model_and_batch()
    learner = MAML(model, lr=0.1, steps=2, loss="cross_entropy", per_step_bn=True, per_step_bn_weights=True)
    learner.eval()
    with torch.no_grad():
        learner.bn_weight_0[0].zero_()  # before adaptation, BN outputs its bias: inputs are ignored
    init = learner.init_params()
    out0 = learner.predict(init, batch.x_query)
    assert torch.allclose(out0, out0[:, :1].expand_as(out0))
    adapted = learner.adapt(batch.x_support, batch.y_support, steps=1)
    out1 = learner.predict(adapted, batch.x_query)
    assert not torch.allclose(out1, out1[:, :1].expand_as(out1))


def test_per_step_bn_weights_checks():
    model, _ = _model_and_batch()
    with pytest.raises(ValueError, match="per_step_bn_weights needs per_step_bn=True"):
        MAML(model, per_step_bn_weights=True)
    with pytest.raises(ValueError, match=r"leaves no parameter to adapt.*per-step BatchNorm weights are not adapted"):
        MAML(model, adapt=["1"], per_step_bn=True, per_step_bn_weights=True)
