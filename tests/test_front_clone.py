"""learn2learn-style ``clone()`` / ``adapt(loss)`` and custom loss callables: a per-task loop of
clones gives the batched ``meta_loss``'s exact meta-gradient (float64), on the fused MLP path,
the generic path and conv4's grouped convolutions."""

import pytest
import torch
import torch.nn.functional as F

from maml_ext.algorithms import BMAML, MAML
from maml_ext.models.conv4 import Conv4
from maml_ext.models.mlp import build
from maml_ext.tasks import TaskBatch
from maml_ext.tasks.sinusoid import Sinusoid

from _model_checks import clone_meta_loss


def _mlp(seed=0):
    torch.manual_seed(seed)
    return build(1, 1, hidden=(16, 16)).double()


def _sinusoids(tasks=4, seed=1):
    b = Sinusoid().sample(tasks, 5, 7, torch.Generator().manual_seed(seed))
    return TaskBatch(*(t.double() for t in (b.x_support, b.y_support, b.x_query, b.y_query)))


def _grads(learner, loss):
    params = [p for p in learner.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params)


def _assert_same_meta_gradient(learner, batch, loss_fn, **clone_options):
    batched = learner.meta_loss(batch)
    cloned = clone_meta_loss(learner, batch, loss_fn, learner.steps, **clone_options)
    torch.testing.assert_close(cloned, batched, rtol=1e-10, atol=1e-12)
    for a, b in zip(_grads(learner, cloned), _grads(learner, batched)):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("options", [{}, {"first_order": True}, {"learn_lr": "elementwise"}, {"learn_lr": "per_step"}],
                         ids=["maml", "fomaml", "metasgd", "lslr"])
def test_clone_loop_equals_batched_meta_loss_mlp(fused, options):
    learner = MAML(_mlp(), lr=0.05, steps=2, fused=fused, **options)
    assert (learner.fused_spec is not None) == (fused is None)
    _assert_same_meta_gradient(learner, _sinusoids(), F.mse_loss)


def test_clone_loop_equals_batched_meta_loss_anil():
    anil = MAML(_mlp(), lr=0.05, steps=2, adapt=["4"])  # the output layer of MLP(1, 16, 16, 1)
    assert anil.adapt_names == ["4.weight", "4.bias"]
    _assert_same_meta_gradient(anil, _sinusoids(), F.mse_loss)


def test_clone_loop_equals_batched_meta_loss_conv4_cross_entropy():
    torch.manual_seed(0)
    model = Conv4(1, 3, filters=4, image_size=16).double()
    learner = MAML(model, lr=0.3, steps=1, loss="cross_entropy")
    assert learner.forward_tasks is not None  # grouped convolutions, not vmap
    g = torch.Generator().manual_seed(2)
    y = torch.arange(3).repeat(2).expand(2, -1).contiguous()
    batch = TaskBatch(torch.rand(2, 6, 1, 16, 16, generator=g, dtype=torch.float64), y,
                      torch.rand(2, 6, 1, 16, 16, generator=g, dtype=torch.float64), y)
    _assert_same_meta_gradient(learner, batch, F.cross_entropy)


def test_clone_first_order_override_and_lr_override():
    learner = MAML(_mlp(), lr=0.05, steps=1)
    batch = _sinusoids()
    fo = MAML(_mlp(), lr=0.05, steps=1, first_order=True)
    _assert_same_meta_gradient(fo, batch, F.mse_loss)
    # clone(first_order=True) on a second-order learner is FOMAML too.
    a = _grads(learner, clone_meta_loss(learner, batch, F.mse_loss, 1, first_order=True))
    b = _grads(fo, fo.meta_loss(batch))
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-10)
    # adapt(loss, lr=...) takes that step size.
    task = learner.clone()
    before = [p.detach().clone() for p in task.params.adapted.values()]
    loss = F.mse_loss(task(batch.x_support[0]), batch.y_support[0])
    grads = torch.autograd.grad(loss, list(task.params.adapted.values()), retain_graph=True)
    task.adapt(loss, lr=0.2)
    assert task.steps_taken == 1
    for p0, g, p1 in zip(before, grads, task.params.adapted.values()):
        torch.testing.assert_close(p1[0], p0 - 0.2 * g, rtol=1e-12, atol=1e-14)


def test_clone_rejects_bad_input_and_unsupported_learners():
    learner = MAML(_mlp(), lr=0.05)
    task = learner.clone()
    out = task(torch.zeros(3, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"loss: expected a scalar \(one-element\) tensor, got \(3, 1\)"):
        task.adapt(out)
    with pytest.raises(ValueError, match="lr must be > 0"):
        task.adapt(out.sum(), lr=-1.0)
    with pytest.raises(NotImplementedError, match="BMAML adapts several parameter sets"):
        BMAML(_mlp(), particles=2).clone()
    bn = torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    with pytest.raises(ValueError, match="per_step_bn"):
        MAML(bn, per_step_bn=True).clone()


def _per_task_mse(out, y):
    return (out - y).pow(2).flatten(1).mean(1)


def test_custom_loss_callable_equals_named_loss_and_skips_the_fused_op():
    batch = _sinusoids()
    named = MAML(_mlp(), lr=0.05, steps=2)
    custom = MAML(_mlp(), lr=0.05, steps=2, loss=_per_task_mse)
    assert named.fused_spec is not None and custom.fused_spec is None
    a, b = named.meta_loss(batch), custom.meta_loss(batch)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for x, y in zip(_grads(named, a), _grads(custom, b)):
        torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="fused=True is not possible: a custom loss"):
        MAML(_mlp(), loss=_per_task_mse, fused=True)


def test_custom_loss_checks():
    batch = _sinusoids()
    with pytest.raises(ValueError, match=r"loss: a custom loss must return per-task losses of shape \[4\], got \(\)"):
        MAML(_mlp(), loss=lambda out, y: (out - y).pow(2).mean()).meta_loss(batch)
    with pytest.raises(ValueError, match="loss must be one of"):
        MAML(_mlp(), loss="huber")
    with pytest.raises(ValueError, match="BMAML needs 'mse' or 'cross_entropy'"):
        BMAML(_mlp(), loss=_per_task_mse)
    # A genuinely different loss trains through the generic path.
    huber = MAML(_mlp(), lr=0.05, loss=lambda out, y: F.huber_loss(out, y, reduction="none").flatten(1).mean(1))
    huber.meta_loss(batch).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in huber.parameters())


def test_clone_is_module_like():
    learner = MAML(_mlp(), lr=0.05, steps=1)
    batch = _sinusoids()
    names = [n for n, _ in learner.model.named_parameters()]
    task = learner.clone()
    assert [n for n, _ in task.named_parameters()] == names
    for p, (_, q) in zip(task.parameters(), learner.model.named_parameters()):
        assert p.shape == q.shape and p is not q
    task.adapt(F.mse_loss(task(batch.x_support[0]), batch.y_support[0]))
    assert [p.shape for p in task.parameters()] == [p.shape for p in learner.model.parameters()]
    # The parameters are the tensors the forward pass uses: differentiable as on a module.
    grads = torch.autograd.grad(F.mse_loss(task(batch.x_query[0]), batch.y_query[0]), list(task.parameters()))
    assert all(g.shape == p.shape for g, p in zip(grads, task.parameters()))
    # clone(): adapts independently from here on, still connected to the initialisation.
    copy = task.clone()
    copy.adapt(F.mse_loss(copy(batch.x_support[0]), batch.y_support[0]))
    assert copy.steps_taken == 2 and task.steps_taken == 1
    assert not torch.equal(next(copy.parameters()), next(task.parameters()))
    assert all(g is not None for g in torch.autograd.grad(copy(batch.x_query[0]).sum(), list(learner.model.parameters())))
    # detach(): same values, no graph to the initialisation; adapting it still works.
    cut = task.detach()
    for p, q in zip(cut.parameters(), task.parameters()):
        assert torch.equal(p, q)
    cut.adapt(F.mse_loss(cut(batch.x_support[0]), batch.y_support[0]))
    assert cut.steps_taken == 2
    out = cut(batch.x_query[0]).sum()
    assert torch.autograd.grad(out, list(learner.model.parameters()), allow_unused=True) == (None,) * len(names)


def test_clone_does_not_follow_in_place_steps_of_the_model():
    learner = MAML(_mlp(), lr=0.05, steps=1)
    x = _sinusoids().x_query[0]
    task = learner.clone()
    before = task(x).detach().clone()
    with torch.no_grad():
        for p in learner.model.parameters():
            p.add_(0.1)  # what meta_opt.step() does
    torch.testing.assert_close(task(x), before, rtol=0, atol=0)
