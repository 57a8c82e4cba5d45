"""Shared helpers of the model tests (test_front_models.py, test_models_zoo.py, test_front_clone.py):
the per-task loss, the clone() meta-loss, and the check that a learner leaves the user's module
untouched."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def one_task_loss(loss):
    """The learner's per-task loss on one task's ``[K, ...]`` outputs."""
    if loss == "mse":
        return F.mse_loss
    if loss == "cross_entropy":
        return F.cross_entropy
    return lambda out, y: loss(out[None], y[None])[0]


def clone_meta_loss(learner, batch, loss_fn, steps, **clone_options):
    """The meta-loss through learn2learn-style clones, task by task (``loss_fn`` on one task's
    ``[K, ...]`` outputs, e.g. ``one_task_loss(learner.loss)``)."""
    total = 0.0
    for t in range(batch.num_tasks):
        task = learner.clone(**clone_options)
        for _ in range(steps):
            task.adapt(loss_fn(task(batch.x_support[t]), batch.y_support[t]))
        total = total + loss_fn(task(batch.x_query[t]), batch.y_query[t])
    return total / batch.num_tasks


def meta_grads(model, value):
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(value, trainable, allow_unused=True)


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            dict(model.named_parameters(remove_duplicate=False)), model.training)


def assert_untouched(model, before):
    state, params, training = before
    now = model.state_dict()
    assert list(now) == list(state)
    for k, v in state.items():
        assert torch.equal(now[k], v), k
    for n, p in model.named_parameters(remove_duplicate=False):
        assert p is params[n] and type(p) is nn.Parameter, n
    assert model.training == training
