"""The fused path's cached plumbing (maml_ext.algorithms.fused_call) and the training loop's Adam."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maml_ext.algorithms import MAML
from maml_ext.algorithms.fused_call import FusedMLPCall
from maml_ext.models import mlp
from maml_ext.tasks import TaskBatch
from maml_ext.tasks.sinusoid import Sinusoid
from maml_ext.train import optim


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = mlp.build(1, 1, hidden=(8, 8)).double()
    batch = Sinusoid().sample(5, 4, 4, torch.Generator().manual_seed(seed))
    batch = TaskBatch(batch.x_support.double(), batch.y_support.double(), batch.x_query.double(),
                      batch.y_query.double())
    return model, batch


def test_replaced_parameter_is_used_and_gets_the_gradient():
    model, batch = _setup()
    learner = MAML(model, lr=0.01, steps=2)
    assert learner.fused_spec is not None
    learner.meta_loss(batch)  # the cache is built and used once
    first = model.get_submodule(learner.fused_spec.param_names[0].rpartition(".")[0])
    first.weight = nn.Parameter(first.weight.detach() * 2)
    learner.meta_loss(batch).backward()
    assert first.weight.grad is not None
    fresh_model = mlp.build(1, 1, hidden=(8, 8)).double()
    fresh_model.load_state_dict(model.state_dict())
    fresh = MAML(fresh_model, lr=0.01, steps=2, fused=False)
    fresh.meta_loss(batch).backward()
    for (name, p), q in zip(model.named_parameters(), fresh_model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=0, msg=name)


def test_learned_rates_follow_the_op_order():
    model, _ = _setup()
    names = [n for n, _ in model.named_parameters()]
    learned = [torch.full((), float(i)) for i in range(len(names))]
    call = FusedMLPCall(model, list(reversed(names)), names)
    assert [t.item() for t in call.lrs(learned)] == list(reversed(range(len(names))))
    assert call.params() == list(reversed(list(model.parameters())))


def test_mean_weight_is_reused_per_task_count():
    model, _ = _setup()
    call = FusedMLPCall(model, [n for n, _ in model.named_parameters()])
    like = next(model.parameters())
    w = call.mean_weight(5, like)
    assert call.mean_weight(5, like) is w and w.dtype == like.dtype
    torch.testing.assert_close(w, torch.full((5,), 0.2, dtype=like.dtype))
    assert call.mean_weight(4, like).shape == (4,)


def test_unknown_parameter_name_is_rejected():
    model, _ = _setup()
    owner = next(n for n, _ in model.named_parameters()).rpartition(".")[0]
    for bad in (f"{owner}.nonexistent", "nonexistent.weight"):
        with pytest.raises(ValueError, match=bad):
            FusedMLPCall(model, [bad])


def test_training_adam_is_fused_on_cpu():
    model, _ = _setup()
    opt = optim.adam(model.parameters(), 1e-3)
    assert opt.defaults["fused"] is True
