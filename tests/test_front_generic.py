"""The generic path's own pieces (issue 14.3): the inner step's torch formula against the
reference op, and the parameter slots of the user's module restored even when its forward fails."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maml_ext import reference
from maml_ext.algorithms import MAML
from maml_ext.algorithms.inner import apply_step
from maml_ext.tasks import TaskBatch

T = 3


def _tensors(shared: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 2), (4,)]
    params = [torch.randn(*(s if shared else (T, *s)), generator=g, dtype=torch.float64) for s in shapes]
    return params, [torch.randn(T, *s, generator=g, dtype=torch.float64) for s in shapes]


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("rate", ["float", "per_tensor", "elementwise", "per_step"])
def test_apply_step_is_the_inner_update_formula(shared: bool, rate: str) -> None:
    params, dirs = _tensors(shared)
    lr, row = {
        "float": (0.3, None),
        "per_tensor": ([torch.tensor(0.3, dtype=torch.float64), torch.tensor(-0.2, dtype=torch.float64)], None),
        "elementwise": ([torch.rand(4, 2, dtype=torch.float64), torch.rand(4, dtype=torch.float64)], None),
        "per_step": ([torch.tensor([0.1, 0.3], dtype=torch.float64), torch.tensor([0.5, 0.2], dtype=torch.float64)], 1),
    }[rate]
    got, want = apply_step(params, dirs, lr, row), reference.inner_update(params, dirs, lr, row)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-15, atol=1e-15)


def test_module_slots_restored_when_the_forward_raises() -> None:
    model = nn.Sequential(nn.Linear(1, 3), nn.BatchNorm1d(3), nn.Linear(3, 1))
    model[2].weight = nn.Parameter(torch.randn(1, 3))
    original = {n: p for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    learner = MAML(model, lr=0.1, fused=False)
    x = torch.randn(T, 4, 1)
    batch = TaskBatch(x, x.sin(), x, x.sin())
    learner.meta_loss(batch).backward()  # a working call first: the slots are looked up once
    model[2].register_forward_pre_hook(lambda m, args: (_ for _ in ()).throw(RuntimeError("model failure")))
    with pytest.raises(RuntimeError, match="model failure"):
        learner.meta_loss(batch)
    for name, p in model.named_parameters():
        assert p is original[name] and isinstance(p, nn.Parameter)
    for name, b in model.named_buffers():
        assert b is not None and torch.equal(b, buffers[name])


# ----- the recorded batched forward (maml_ext/algorithms/trace.py) -----------------------------
class Shifted(nn.Module):
    """A user's own module (not recorded unless trace=True) with a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([0.5]))
        self.net = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x):
        return self.net(x - self.shift)


def _batch(dtype=torch.float64) -> TaskBatch:
    g = torch.Generator().manual_seed(5)
    xs, xq = (torch.randn(T, 6, 1, generator=g, dtype=dtype) for _ in range(2))
    return TaskBatch(xs, xs.sin(), xq, xq.cos())


def _meta_grads(learner: MAML, batch: TaskBatch) -> list[torch.Tensor]:
    return list(torch.autograd.grad(learner.meta_loss(batch), list(learner.model.parameters())))


def test_recording_is_used_for_torch_nn_models_and_on_request() -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1)).double()
    assert MAML(mlp, fused=False).functional.recorder is not None
    assert MAML(mlp, fused=False, trace=False).functional.recorder is None
    assert MAML(Shifted().double()).functional.recorder is None  # a user's forward: only on request
    learner = MAML(Shifted().double(), lr=0.3, steps=2, trace=True)
    got = _meta_grads(learner, _batch())
    # step 0's expanded parameters (stride 0), step 1's per-task ones, the query after 2 steps
    assert len(learner.functional.recorder.graphs) == 3
    plain = MAML(learner.model, lr=0.3, steps=2, trace=False)
    want = _meta_grads(plain, _batch())
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    # Evaluation records without gradients (its own keys), then training replays its own again.
    torch.testing.assert_close(learner.evaluate(_batch(), steps=3), plain.evaluate(_batch(), steps=3), rtol=1e-12, atol=0)
    for a, b in zip(_meta_grads(learner, _batch()), want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="trace"):
        MAML(mlp, trace="yes")


def test_a_replaced_buffer_or_new_shapes_are_recorded_again() -> None:
    torch.manual_seed(0)
    model = Shifted().double()
    learner, plain = MAML(model, lr=0.3, trace=True), MAML(model, lr=0.3, trace=False)
    learner.meta_loss(_batch())
    model.shift = torch.tensor([2.0], dtype=torch.float64)  # a new tensor: the old recording holds the old one
    torch.testing.assert_close(learner.meta_loss(_batch()), plain.meta_loss(_batch()), rtol=1e-14, atol=0)
    float32 = _batch(torch.float32)
    learner.float(), plain.float()  # new dtype, so a new key
    torch.testing.assert_close(learner.meta_loss(float32), plain.meta_loss(float32))
    assert len(learner.functional.recorder.graphs) == 6  # support and query (one step), 3 times each


def test_recorded_graph_drops_no_op_views_and_folds_the_bias() -> None:
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.func import vmap

    from maml_ext.algorithms.trace import simplify

    torch.manual_seed(0)
    w, b = torch.randn(T, 4, 3, dtype=torch.float64), torch.randn(T, 4, dtype=torch.float64)
    x = torch.randn(T, 5, 3, dtype=torch.float64)
    gm = make_fx(vmap(lambda x, w, b: torch.nn.functional.linear(x, w, b)))(x, w, b)
    targets = {n.target for n in simplify(gm).graph.nodes}
    aten = torch.ops.aten
    assert aten.baddbmm.default in targets
    assert not targets & {aten.bmm.default, aten.mul.Scalar, aten.expand.default, aten._unsafe_view.default}
    torch.testing.assert_close(gm(x, w, b), torch.baddbmm(b[:, None], x, w.transpose(1, 2)), rtol=1e-14, atol=0)


@pytest.mark.parametrize("shape", [(5, 3), (5, 3, 4, 4)])  # BatchNorm1d / BatchNorm2d inputs per task
def test_recorded_graph_folds_a_per_task_batchnorm_affine(shape) -> None:
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.func import vmap

    from maml_ext.algorithms.trace import simplify

    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, *shape, generator=g, dtype=torch.float64)
    w, b = (torch.randn(T, shape[1], generator=g, dtype=torch.float64) for _ in range(2))
    norm = lambda x, w, b: torch.nn.functional.batch_norm(x, None, None, w, b, training=True)  # noqa: E731
    want = torch.stack([norm(x[t], w[t], b[t]) for t in range(T)])
    gm = simplify(make_fx(vmap(norm))(x, w, b))
    aten = torch.ops.aten
    norms = [n for n in gm.graph.nodes if n.target is aten.native_batch_norm.default]
    assert len(norms) == 1 and norms[0].args[1] is not None and norms[0].args[1].target is not aten.ones.default
    assert not {n.target for n in gm.graph.nodes} & {aten.mul.Tensor, aten.ones.default, aten.zeros.default}
    torch.testing.assert_close(gm(x, w, b), want, rtol=1e-13, atol=1e-13)
