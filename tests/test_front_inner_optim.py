"""Differentiable inner optimizers (momentum, Nesterov, Adam) and per-group step sizes on the
batched path and in clones: exact in float64 against an unrolled per-task autograd reference,
first and second order, with torch.optim's update rule."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from maml_ext.algorithms import MAML, Adam, InnerSGD, Momentum
from maml_ext.tasks import TaskBatch

ALPHA, STEPS, TASKS = 0.05, 3, 3


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 1)).double()


def _batch():
    g = torch.Generator().manual_seed(5)
    return TaskBatch(*(torch.randn(TASKS, 5, d, generator=g, dtype=torch.float64) for d in (2, 1, 2, 1)))


def _directions(kind, g, state, step):
    """One parameter's step direction, written out per task (the reference)."""
    if kind == "momentum" or kind == "nesterov":
        buf = g if state is None else 0.9 * state + g
        return (g + 0.9 * buf if kind == "nesterov" else buf), buf
    if kind == "adam":
        m0, v0 = state if state is not None else (0.0, 0.0)
        m, v = 0.9 * m0 + 0.1 * g, 0.999 * v0 + 0.001 * g * g
        return (m / (1 - 0.9**step)) / ((v / (1 - 0.999**step)).sqrt() + 1e-8), (m, v)
    return g, None


def _reference(learner, kind, batch, first_order, lr_of):
    model = learner.model
    named = dict(model.named_parameters())
    losses = []
    for t in range(TASKS):
        fast, state = dict(named), {}
        for s in range(1, STEPS + 1):
            out = functional_call(model, fast, (batch.x_support[t],))
            grads = torch.autograd.grad(F.mse_loss(out, batch.y_support[t]), list(fast.values()), create_graph=not first_order)
            for (n, p), g in zip(list(fast.items()), grads):
                d, state[n] = _directions(kind, g, state.get(n), s)
                fast[n] = p - lr_of(n, s - 1) * d
        losses.append(F.mse_loss(functional_call(model, fast, (batch.x_query[t],)), batch.y_query[t]))
    return torch.stack(losses).mean()


OPTIMIZERS = {"momentum": Momentum(0.9), "nesterov": Momentum(0.9, nesterov=True), "adam": Adam(), "sgd": InnerSGD()}


@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
@pytest.mark.parametrize("rates", ["groups", "metasgd", "lslr"])
@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_inner_optimizer_meta_gradient_equals_unrolled_autograd(kind, rates, first_order):
    options = {"lr_groups": {"4": 0.02, "4.bias": 0.07, "0.bias": 0.1}} if rates == "groups" else {
        "learn_lr": "elementwise" if rates == "metasgd" else "per_step", "lr_groups": {"4": 0.02}}
    learner = MAML(_model(), lr=ALPHA, steps=STEPS, first_order=first_order, inner_optimizer=OPTIMIZERS[kind], **options)
    assert learner.fused_spec is None or kind == "sgd"
    if rates == "groups":
        assert learner.adapt_lrs == {"0.weight": ALPHA, "0.bias": 0.1, "2.weight": ALPHA, "2.bias": ALPHA,
                                     "4.weight": 0.02, "4.bias": 0.07}  # the longest prefix wins
        lr_of = lambda n, s: learner.adapt_lrs[n]  # noqa: E731
    else:
        by_name = dict(zip(learner.adapt_names, learner.lrs))
        lr_of = lambda n, s: by_name[n] if rates == "metasgd" else by_name[n][s]  # noqa: E731
    batch = _batch()
    want = _reference(learner, kind, batch, first_order, lr_of)
    want_grads = torch.autograd.grad(want, list(learner.parameters()))
    for got in (learner.meta_loss(batch), _clone_loop(learner, batch)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        for a, b in zip(torch.autograd.grad(got, list(learner.parameters())), want_grads):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _clone_loop(learner, batch):
    total = 0.0
    for t in range(TASKS):
        task = learner.clone()
        for _ in range(STEPS):
            task.adapt(F.mse_loss(task(batch.x_support[t]), batch.y_support[t]))
        total = total + F.mse_loss(task(batch.x_query[t]), batch.y_query[t])
    return total / TASKS


@pytest.mark.parametrize("kind", ["momentum", "nesterov", "adam"])
def test_update_rule_is_torch_optims(kind):
    learner = MAML(_model(), lr=ALPHA, steps=STEPS, inner_optimizer=OPTIMIZERS[kind])
    batch = _batch()
    adapted = learner.adapt(batch.x_support[:1], batch.y_support[:1]).adapted
    twin = copy.deepcopy(learner.model)
    opt = (torch.optim.Adam(twin.parameters(), lr=ALPHA) if kind == "adam"
           else torch.optim.SGD(twin.parameters(), lr=ALPHA, momentum=0.9, nesterov=kind == "nesterov"))
    for _ in range(STEPS):
        opt.zero_grad()
        F.mse_loss(twin(batch.x_support[0]), batch.y_support[0]).backward()
        opt.step()
    for n, p in twin.named_parameters():
        torch.testing.assert_close(adapted[n][0], p, rtol=1e-12, atol=1e-14)


def test_inner_optimizer_and_group_checks():
    with pytest.raises(ValueError, match="momentum: expected 0 <= momentum < 1, got 1.5"):
        Momentum(1.5)
    with pytest.raises(ValueError, match="betas: expected two values in"):
        Adam(betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="inner_optimizer: expected InnerSGD, Momentum or Adam, got SGD"):
        MAML(_model(), inner_optimizer=torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))
    with pytest.raises(ValueError, match="lr_groups: 'head' matches no adapted parameter"):
        MAML(_model(), lr_groups={"head": 0.1})
    with pytest.raises(ValueError, match="lr_groups: step sizes must be > 0"):
        MAML(_model(), lr_groups={"4": 0.0})
    with pytest.raises(ValueError, match="fused=True is not possible: an inner optimizer other than plain SGD"):
        MAML(_model(), inner_optimizer=Adam(), fused=True)
    with pytest.raises(ValueError, match=r"fused=True is not possible: per-group step sizes \(lr_groups\)"):
        MAML(_model(), lr_groups={"4": 0.1}, fused=True)
