"""The learners' shared entry (maml_ext.algorithms.entry): every learner, on every path, behaves
the same under torch.inference_mode() as under torch.no_grad(), and refuses a malformed batch
(a 2-D x without the task dimension, support and query that disagree) with an error naming the
argument, before any work. Runs in both modes: without the extension the fused learners take
the reference ops (the path that failed under inference mode)."""

import re

import pytest
import torch
from torch import nn

from maml_ext.algorithms import ALGORITHMS, MAML, build_algorithm
from maml_ext.models.bottleneck import build as build_bottleneck
from maml_ext.models.mlp import build as build_mlp
from maml_ext.tasks import TaskBatch

NAMES = sorted(n for n in ALGORITHMS if "_" not in n)  # aliases (mr_maml, ...) are the same classes
FUSABLE = ("maml", "fomaml", "metasgd")


def learner(name, fused=None):
    torch.manual_seed(0)
    if name == "mr-maml-a":
        model = build_bottleneck(1, 1, hidden=(8,), encoder_hidden=(8,), latent=2)
    else:
        model = build_mlp(1, 1, hidden=(8,))
    options = {"fused": fused} if name in FUSABLE else {}
    options.update(steps=2)  # (Reptile warns on one step)
    return build_algorithm(name, model.double(), lr=0.05, **options)


def cases():
    for name in NAMES:
        yield name, None
        if name in FUSABLE:
            yield name, False


def batch(tasks=2, k=3):
    g = torch.Generator().manual_seed(1)
    return TaskBatch(*(torch.randn(tasks, k, 1, generator=g, dtype=torch.float64) for _ in range(4)))


CALLS = {
    "meta_loss": lambda lr, b: lr.meta_loss(b),
    "evaluate": lambda lr, b: lr.evaluate(b, 2),
}


@pytest.mark.parametrize("name,fused", list(cases()))
@pytest.mark.parametrize("call", sorted(CALLS))
def test_inference_mode_gives_the_no_grad_value(name, fused, call):
    lrn, b = learner(name, fused), batch()
    torch.manual_seed(2)  # stochastic learners (PLATIPUS, MR-MAML) draw from the global RNG
    with torch.no_grad():
        expected = CALLS[call](lrn, b)
    torch.manual_seed(2)
    with torch.inference_mode():
        got = CALLS[call](lrn, b)
        torch.manual_seed(2)
        inside = CALLS[call](lrn, batch())  # a batch made in inference mode: inference tensors
    assert not got.requires_grad
    assert torch.equal(got, expected) and torch.equal(inside, expected)


@pytest.mark.parametrize("fused", [None, False])
def test_inference_mode_adapt_and_predict(fused):
    lrn, b = learner("maml", fused), batch()
    with torch.no_grad():
        expected = lrn.predict(lrn.adapt(b.x_support, b.y_support), b.x_query)
    with torch.inference_mode():
        got = lrn.predict(lrn.adapt(b.x_support, b.y_support), b.x_query)
    assert torch.equal(got, expected)


def test_training_after_inference_mode_is_unchanged():
    """Leaving inference mode inside the call changes nothing for the caller afterwards."""
    lrn, b = learner("maml", False), batch()
    with torch.inference_mode():
        lrn.meta_loss(b)
        assert torch.is_inference_mode_enabled()
    loss = lrn.meta_loss(b)
    assert loss.requires_grad
    loss.backward()
    assert all(p.grad is not None for p in lrn.parameters())


def test_a_subclass_of_the_user_gets_the_same_entry():
    class Penalised(MAML):
        def meta_loss(self, batch, iteration=0):
            return super().meta_loss(batch, iteration) + 0.0 * sum(p.sum() for p in self.parameters())

    torch.manual_seed(0)
    lrn, b = Penalised(build_mlp(1, 1, hidden=(8,)).double(), fused=False), batch()
    with torch.no_grad():
        expected = lrn.meta_loss(b)
    with torch.inference_mode():
        assert torch.equal(lrn.meta_loss(b), expected)
    with pytest.raises(ValueError, match=re.escape("x_support: expected [T, K, 1]")):
        lrn.meta_loss(TaskBatch(b.x_support[:, :, 0], b.y_support[:, :, 0], b.x_query, b.y_query))


def bad_batches(b):
    flat = lambda t: t.reshape(-1, 1)  # noqa: E731  2-D: [T·K, 1], no task dimension
    return {
        "2-D x and y": (TaskBatch(flat(b.x_support), flat(b.y_support), flat(b.x_query), flat(b.y_query)),
                        r"x_support: expected \[T, K, 1\] .*no task dimension"),
        "2-D query": (TaskBatch(b.x_support, b.y_support, flat(b.x_query), flat(b.y_query)),
                      r"x_query: expected \[T=2, K, \.\.\.\]"),
        "query tasks": (TaskBatch(b.x_support, b.y_support, b.x_query[:1], b.y_query[:1]),
                        r"x_query: expected \[T=2, K, \.\.\.\]"),
        "query labels": (TaskBatch(b.x_support, b.y_support, b.x_query, b.y_query[..., 0]),
                         r"y_query: expected \[T, K, 1\] with the per-example shape of y_support"),
        "query features": (TaskBatch(b.x_support, b.y_support, b.x_query.expand(-1, -1, 2), b.y_query),
                           r"x_query: expected \[T, K, 1\] with the per-example shape of x_support"),
        "1-D": (TaskBatch(b.x_support.flatten(), b.y_support.flatten(), b.x_query.flatten(), b.y_query.flatten()),
                r"x_support: expected \[T=6, K, \.\.\.\]"),
        "not a batch": ((b.x_support, b.y_support, b.x_query, b.y_query), r"batch: expected a maml_ext.tasks.TaskBatch"),
    }


@pytest.mark.parametrize("name,fused", list(cases()))
@pytest.mark.parametrize("case", sorted(bad_batches(batch())))
def test_a_malformed_batch_is_refused_alike_on_every_path(name, fused, case, monkeypatch):
    lrn = learner(name, fused)
    bad, message = bad_batches(batch())[case]
    # Before any work: the model is never run.
    monkeypatch.setattr(lrn.functional, "over_tasks", lambda *a, **k: pytest.fail("the model ran"))
    for call in CALLS.values():
        with pytest.raises((ValueError, TypeError), match=message):
            call(lrn, bad)


def test_the_rank_rule_follows_the_first_layer():
    """Conv models take [T, K, C, H, W]; [T, C, H, W] (no K) would be read as one example per
    task and is refused. A model whose first layer is not known is not second-guessed."""
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    lrn = MAML(conv, loss="cross_entropy")
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 1, 4, 4, generator=g), torch.randint(0, 3, (2, 3), generator=g)
    assert torch.isfinite(lrn.meta_loss(TaskBatch(x, y, x, y)))
    with pytest.raises(ValueError, match=re.escape("x_support: expected [T, K, 1, H, W]") + ".*Conv2d.*no task dimension"):
        lrn.meta_loss(TaskBatch(x[:, 0], y[:, :1], x[:, 0], y[:, :1]))

    class Own(nn.Module):  # reads a [K] vector of scalars per task: 2-D x is legitimate here
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, x):
            return (self.w * x).unsqueeze(-1)

    b = TaskBatch(torch.randn(2, 3), torch.randn(2, 3, 1), torch.randn(2, 3), torch.randn(2, 3, 1))
    assert torch.isfinite(MAML(Own()).meta_loss(b))


@pytest.mark.parametrize("name,fused", [("maml", None), ("maml", False), ("bmaml", None)])
@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_meta_grad_without_gradients_says_so(name, fused, mode):
    lrn = learner(name, fused)
    with mode(), pytest.raises(RuntimeError, match=r"meta_grad accumulates .* not under torch.no_grad\(\) or "
                                                   r"torch.inference_mode\(\) \(for the meta-loss value alone"):
        lrn.meta_grad(batch())
    assert all(p.grad is None for p in lrn.parameters())


@pytest.mark.parametrize("name", ["maml", "platipus", "imaml"])  # (BMAML: svgd_step takes float32/64)
def test_a_float16_model_runs_the_generic_path(name):
    """The fused op takes float32 and float64: a float16 MLP is not handed to it (it raised
    "params[0]: expected float32 or float64" whatever the user did); fused=True says why."""
    torch.manual_seed(0)
    model = build_mlp(1, 1, hidden=(8,)).half()
    lrn = build_algorithm(name, model, lr=0.05)
    assert getattr(lrn, "fused_spec", None) is None
    b = batch()
    half = TaskBatch(*(t.half() for t in (b.x_support, b.y_support, b.x_query, b.y_query)))
    loss = lrn.meta_loss(half)
    assert loss.dtype == torch.float16 and torch.isfinite(loss)
    with pytest.raises(ValueError, match="fused=True is not possible: parameters neither float32 nor float64"):
        MAML(build_mlp(1, 1, hidden=(8,)).half(), fused=True)
