"""A user's own plain ``nn.Sequential`` MLP takes the fused op automatically, with the generic
path's numbers (float64); a model the op would compute differently never does."""

import pytest
import torch
from torch import nn

from maml_ext.algorithms import MAML, build_algorithm
from maml_ext.algorithms.fusable import plain_mlp_spec
from maml_ext.models.mlp import build
from maml_ext.tasks import TaskBatch
from maml_ext.tasks.sinusoid import Sinusoid


def _batch(tasks=4):
    b = Sinusoid().sample(tasks, 5, 6, torch.Generator().manual_seed(1))
    return TaskBatch(*(t.double() for t in (b.x_support, b.y_support, b.x_query, b.y_query)))


def _sequential(act=nn.ReLU, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, 12), act(), nn.Linear(12, 12), act(), nn.Linear(12, 1)).double()


def _loss_and_grads(learner, batch):
    loss = learner.meta_loss(batch)
    return loss, torch.autograd.grad(loss, list(learner.parameters()))


@pytest.mark.parametrize("act,name", [(nn.ReLU, "relu"), (nn.Tanh, "tanh")])
@pytest.mark.parametrize("options", [{}, {"first_order": True}, {"learn_lr": "per_step"}], ids=["maml", "fomaml", "lslr"])
def test_users_sequential_mlp_is_fused_with_the_generic_paths_numbers(act, name, options):
    model = _sequential(act)
    fused = MAML(model, lr=0.05, steps=2, **options)
    generic = MAML(model, lr=0.05, steps=2, fused=False, **options)
    assert fused.fused_spec is not None and fused.fused_spec.activation == name
    assert fused.fused_spec.param_names == ("0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias")
    (a, ga), (b, gb) = _loss_and_grads(fused, _batch()), _loss_and_grads(generic, _batch())
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def _reused():
    model = build(3, 3, hidden=(3, 3)).double()
    model[4] = model[0]  # the example: the same Linear as first and last layer
    return model


def _hooked():
    model = _sequential()
    model[2].register_forward_hook(lambda m, i, out: out * 2)
    return model


def _frozen():
    model = _sequential()
    model[0].requires_grad_(False)
    return model


def _extra_parameter():
    model = _sequential()
    model.register_parameter("scale", nn.Parameter(torch.ones(1, dtype=torch.float64)))
    return model


def _declared_but_changed(layer):
    def make():
        model = build(1, 1, hidden=(6, 6))  # declares relu
        model[1] = layer
        return model
    return make


class _Subclassed(nn.Sequential):
    def forward(self, x):
        return super().forward(x) * 2


@pytest.mark.parametrize("make,why", [
    (_reused, "shared or reused"),
    (_hooked, "module hooks"),
    (_frozen, "frozen parameters"),
    (_extra_parameter, "does not list every parameter"),
    (lambda: _Subclassed(*_sequential()), "not a plain MLP"),
    (_declared_but_changed(nn.Tanh()), "the declared spec does not match the layers"),
    (_declared_but_changed(nn.Sigmoid()), "the declared spec does not match the layers"),
    (lambda: nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1)), "not a plain MLP"),
    (lambda: nn.Sequential(nn.Linear(1, 4), nn.Sigmoid(), nn.Linear(4, 1)), "not a plain MLP"),
    (lambda: nn.Sequential(nn.Linear(1, 4, bias=False), nn.ReLU(), nn.Linear(4, 1)), "not a plain MLP"),
    (lambda: nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1), nn.ReLU()), "not a plain MLP"),
], ids=["reused", "hook", "frozen", "extra_param", "subclass", "declared_tanh_swap", "declared_sigmoid_swap", "mixed_act", "sigmoid", "no_bias", "ends_in_act"])
def test_models_the_op_would_compute_differently_are_never_fused(make, why):
    model = make().double()
    assert MAML(model, lr=0.05).fused_spec is None
    with pytest.raises(ValueError, match=f"fused=True is not possible: .*{why}"):
        MAML(model, lr=0.05, fused=True)


def test_reused_module_computes_the_modules_network():
    # Before: the fused op dropped the duplicate and computed another network (0.505 vs 0.779).
    model = _reused()
    g = torch.Generator().manual_seed(0)
    batch = TaskBatch(*(torch.randn(4, 5, 3, generator=g, dtype=torch.float64) for _ in range(4)))
    auto, generic = MAML(model, lr=0.05, steps=2), MAML(model, lr=0.05, steps=2, fused=False)
    torch.testing.assert_close(auto.meta_loss(batch), generic.meta_loss(batch), rtol=0, atol=0)


def test_detection_ignores_non_sequential_models():
    assert plain_mlp_spec(nn.Linear(2, 2)) is None
    assert plain_mlp_spec(nn.Sequential(nn.Linear(2, 2))) is None  # one layer: nothing to fuse


@pytest.mark.parametrize("name", ["bmaml", "platipus", "imaml"])
def test_other_learners_follow_the_same_fusion_rule(name):
    """BMAML, PLATIPUS and iMAML pick the fused gradients/HVPs by the same rule as MAML: a user's
    plain Sequential is detected, a reused module never fused (it would be another network)."""
    assert build_algorithm(name, _sequential()).fused_spec is not None
    assert build_algorithm(name, _reused()).fused_spec is None
    with pytest.raises(ValueError, match="fused=True is not possible: .*shared or reused"):
        build_algorithm(name, _reused(), fused=True)


def _per_task_meta_loss(model, batch, lr, steps):
    """MAML task by task with torch.autograd on the module itself (mse loss)."""
    params = dict(model.named_parameters())
    losses = []
    for t in range(batch.x_support.shape[0]):
        fast = dict(params)
        for _ in range(steps):
            out = torch.func.functional_call(model, fast, (batch.x_support[t],))
            grads = torch.autograd.grad(nn.functional.mse_loss(out, batch.y_support[t]), list(fast.values()),
                                        create_graph=True)
            fast = {n: p - lr * g for (n, p), g in zip(fast.items(), grads)}
        losses.append(nn.functional.mse_loss(torch.func.functional_call(model, fast, (batch.x_query[t],)), batch.y_query[t]))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("options", [{}, {"learn_lr": "per_step"}], ids=["maml", "lslr"])
def test_a_compiled_sequential_mlp_is_fused(options):
    """``torch.compile(model)`` (an ``OptimizedModule`` wrapping the MLP as ``_orig_mod``) takes
    the fused op, with a per-task autograd loop's meta-gradient (float64)."""
    model = _sequential()
    compiled = torch.compile(model)
    learner = MAML(compiled, lr=0.05, steps=2, **options)
    assert learner.fused_spec is not None
    assert learner.fused_spec.param_names[:2] == ("_orig_mod.0.weight", "_orig_mod.0.bias")
    batch = _batch()
    learner.meta_grad(batch)
    want = _per_task_meta_loss(model, batch, 0.05, 2)
    torch.testing.assert_close(learner.meta_loss(batch), want, rtol=1e-10, atol=0)
    for p, g in zip(model.parameters(), torch.autograd.grad(want, list(model.parameters()))):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-13)
