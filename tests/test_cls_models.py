"""conv4 / mlp_bn plugins: shapes, the task-batched (grouped) forward, and the batched inner loop
against a per-task Python loop (outputs and meta-gradients, second and first order)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from maml_ext import plugins
from maml_ext.algorithms import build_algorithm
from maml_ext.tasks import TaskBatch

# Small instances (float64 convolutions are slow on CPU); the paper's sizes are checked in test_paper_shapes.
MODELS = {
    "conv4-stride": ("conv4", dict(filters=4, pool="stride", image_size=16), (1, 16, 16)),
    "conv4-max": ("conv4", dict(filters=4, pool="max", image_size=16, layers=2), (3, 16, 16)),
    "conv4-plain-norm": ("conv4", dict(filters=4, pool="stride", image_size=16, layers=3, plain_norms=[1]), (1, 16, 16)),
    "mlp_bn": ("mlp_bn", dict(image_size=8, hidden=[8, 6, 5]), (1, 8, 8)),
}


def _model(key: str, n_way: int = 5, seed: int = 0) -> tuple[torch.nn.Module, tuple[int, ...]]:
    name, options, shape = MODELS[key]
    torch.manual_seed(seed)
    model = plugins.build_model(name, in_features=shape[0], out_features=n_way, **options)
    return model.double(), shape


def _batch(shape, tasks=3, n_way=5, k=2, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    x = lambda: torch.rand(tasks, n_way * k, *shape, generator=g, dtype=torch.float64)  # noqa: E731
    y = torch.arange(n_way).repeat_interleave(k).expand(tasks, -1)
    return TaskBatch(x(), y, x(), y)


def test_paper_shapes():
    omni = plugins.build_model("conv4", in_features=1, out_features=20)
    assert omni(torch.rand(4, 1, 28, 28)).shape == (4, 20)
    assert omni.head.in_features == 64 and all(c.stride == (2, 2) for c in omni.convs)
    mini = plugins.build_model("conv4", in_features=3, out_features=5, filters=32, pool="max", image_size=84)
    assert mini(torch.rand(2, 3, 84, 84)).shape == (2, 5)
    assert mini.head.in_features == 32 * 5 * 5  # 84 → 42 → 21 → 10 → 5
    mlp = plugins.build_model("mlp_bn", in_features=1, out_features=5)
    assert [m.out_features for m in mlp.linears] == [256, 128, 64, 64] and mlp(torch.rand(3, 1, 28, 28)).shape == (3, 5)
    assert not any(n.track_running_stats for n in omni.norms)  # batch statistics at train and test
    with pytest.raises(ValueError, match="pool"):
        plugins.build_model("conv4", in_features=1, out_features=5, pool="avg")


def test_plain_norms_have_no_scale_and_shift():
    """``plain_norms``: those BatchNorm layers normalise without a learned scale and shift, so
    nothing after them can rescale their features (MR-MAML(W)'s KL cannot be evaded through them)."""
    model = plugins.build_model("conv4", in_features=1, out_features=5, filters=4, plain_norms=[3])
    names = [n for n, _ in model.named_parameters()]
    assert "norms.3.weight" not in names and "norms.2.weight" in names and not model.norms[3].affine
    for bad in ([4], [-1], [True], 3):
        with pytest.raises(ValueError, match="plain_norms"):
            plugins.build_model("conv4", in_features=1, out_features=5, plain_norms=bad)


@pytest.mark.parametrize("key", MODELS)
def test_forward_tasks_equals_each_task_alone(key):
    model, shape = _model(key)
    tasks = 3
    g = torch.Generator().manual_seed(1)
    params = {n: p + 0.1 * torch.randn(tasks, *p.shape, generator=g, dtype=p.dtype) for n, p in model.named_parameters()}
    x = torch.rand(tasks, 4, *shape, generator=g, dtype=torch.float64)
    batched = model.forward_tasks(params, x)
    for t in range(tasks):
        alone = functional_call(model, {n: p[t] for n, p in params.items()}, (x[t],))
        torch.testing.assert_close(batched[t], alone)


def _per_task_reference(model, batch, lr, steps, first_order):
    """The textbook loop: one task at a time, autograd.grad through the inner SGD steps."""
    names = [n for n, _ in model.named_parameters()]
    init = [p for _, p in model.named_parameters()]
    losses = []
    for t in range(batch.num_tasks):
        fast = init
        for _ in range(steps):
            out = functional_call(model, dict(zip(names, fast)), (batch.x_support[t],))
            grads = torch.autograd.grad(F.cross_entropy(out, batch.y_support[t]), fast, create_graph=not first_order)
            fast = [p - lr * g for p, g in zip(fast, grads)]
        out = functional_call(model, dict(zip(names, fast)), (batch.x_query[t],))
        losses.append(F.cross_entropy(out, batch.y_query[t]))
    return torch.stack(losses)


@pytest.mark.parametrize("key", MODELS)
@pytest.mark.parametrize("algorithm", ["maml", "fomaml"])
@pytest.mark.parametrize("task_batched", [True, False], ids=["grouped", "vmap"])
def test_batched_inner_loop_equals_per_task_loop(key, algorithm, task_batched):
    model, shape = _model(key)
    batch = _batch(shape)
    learner = build_algorithm(algorithm, model, lr=0.3, steps=2, loss="cross_entropy", task_batched=task_batched)
    loss = learner.meta_loss(batch)
    grads = torch.autograd.grad(loss, list(model.parameters()))

    reference = _per_task_reference(model, batch, 0.3, 2, first_order=algorithm == "fomaml")
    ref_grads = torch.autograd.grad(reference.mean(), list(model.parameters()))
    torch.testing.assert_close(loss, reference.mean())
    for (name, _), g, r in zip(model.named_parameters(), grads, ref_grads):
        torch.testing.assert_close(g, r, msg=lambda m, name=name: f"{name}: {m}")
    adapted = learner.adapt(batch.x_support, batch.y_support)
    torch.testing.assert_close(learner.losses(adapted, batch.x_query, batch.y_query), reference)


def test_first_and_second_order_meta_gradients_differ():
    model, shape = _model("conv4-stride")
    batch = _batch(shape)
    g = {}
    for algorithm in ("maml", "fomaml"):
        learner = build_algorithm(algorithm, model, lr=0.3, steps=1, loss="cross_entropy")
        g[algorithm] = torch.autograd.grad(learner.meta_loss(batch), list(model.parameters()))
    assert max((a - b).abs().max() for a, b in zip(g["maml"], g["fomaml"])) > 1e-4


def test_evaluation_is_per_task_and_reports_accuracy():
    # Batch statistics are per task: a task's result does not depend on the others in the batch.
    model, shape = _model("conv4-stride")
    learner = build_algorithm("maml", model, lr=0.3, steps=1, loss="cross_entropy")
    batch = _batch(shape, tasks=4)
    together = learner.evaluate_metrics(batch, steps=3)
    alone = learner.evaluate_metrics(batch.slice(1, 2), steps=3)
    assert together["loss"].shape == together["accuracy"].shape == (4, 4)
    torch.testing.assert_close(together["loss"][:, 1:2], alone["loss"])
    torch.testing.assert_close(together["accuracy"][:, 1:2], alone["accuracy"])
    acc = together["accuracy"]
    assert ((acc * 10).round() == acc * 10).all() and (0 <= acc).all() and (acc <= 1).all()  # 10 queries
