"""The generic path's own pieces (issue 14.3): the inner step's torch formula against the
reference op, and the parameter slots of the user's module restored even when its forward fails."""

from __future__ import annotations

import warnings

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
    # The whole meta-gradient is one recording (maml_ext/algorithms/whole.py)...
    assert len(learner.whole_recorder.graphs) == 1 and not learner.functional.recorder.graphs
    # ... and where it cannot be (a custom loss), the forwards are: step 0's expanded parameters
    # (stride 0), step 1's per-task ones, the query after 2 steps.
    mse = MAML(learner.model, lr=0.3, steps=2, trace=True, loss=lambda out, y: (out - y).pow(2).flatten(1).mean(1))
    got_forward = _meta_grads(mse, _batch())
    assert len(mse.functional.recorder.graphs) == 3 and not mse.whole_recorder.graphs
    plain = MAML(learner.model, lr=0.3, steps=2, trace=False)
    assert plain.whole_recorder is None
    want = _meta_grads(plain, _batch())
    for a, b, c in zip(got, got_forward, want):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(b, c, rtol=1e-12, atol=1e-14)
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
    assert len(learner.whole_recorder.graphs) == 3  # the whole meta-gradient, once per key


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


# ----- the recorded whole meta-gradient (maml_ext/algorithms/whole.py) ----------------------
from maml_ext.algorithms.inner import Adam, Momentum  # noqa: E402


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    # ReLU would leave exactly-zero gradient entries, where the Adam inner step is not differentiable
    return nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 8), nn.SiLU(), nn.Linear(8, 1)).double()


WHOLE_OPTIONS = {
    "second_order": {},
    "first_order": {"first_order": True},
    "three_steps": {"steps": 3},
    "order_annealing": {"steps": 2, "second_order_after": 1},  # iteration 0 first order, 1 second
    "multi_step_loss": {"steps": 3, "multi_step_loss": 2},  # weights change with the iteration
    "meta_sgd": {"learn_lr": "elementwise"},
    "lslr_softplus": {"steps": 2, "learn_lr": "per_step", "lr_parameterisation": "softplus"},
    "momentum": {"steps": 2, "inner_optimizer": Momentum(0.9, nesterov=True)},
    "adam": {"steps": 2, "inner_optimizer": Adam()},
    "anil_groups": {"adapt": ["4"], "lr_groups": {"4.bias": 0.05}},
}


@pytest.mark.parametrize("name", sorted(WHOLE_OPTIONS))
def test_recorded_meta_gradient_equals_the_stepwise_one(name) -> None:
    options = {"lr": 0.3, "fused": False, **WHOLE_OPTIONS[name]}
    model = _mlp()
    recorded, stepwise = MAML(model, **options), MAML(model, trace=False, **options)
    stepwise.load_state_dict(recorded.state_dict())  # the same learned rates
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for iteration in range(3):  # the first call records, the next replay; the parameters move
        wanted = list(recorded.parameters())
        got = torch.autograd.grad(recorded.meta_loss(_batch(), iteration), wanted)
        want = torch.autograd.grad(stepwise.meta_loss(_batch(), iteration), list(stepwise.parameters()))
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        for p, g in zip(wanted, got):
            p.grad = g
        opt.step()
    assert recorded.whole_recorder.graphs and not recorded.functional.recorder.graphs


def test_recorded_meta_gradient_accumulates_scaled() -> None:
    model = _mlp()
    learner, plain = MAML(model, lr=0.3, fused=False), MAML(model, lr=0.3, fused=False, trace=False)
    learner.meta_grad(_batch(), scale=0.5)
    learner.meta_grad(_batch(), scale=0.5)
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    plain.meta_loss(_batch()).backward()
    for a, p in zip(got, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-12, atol=1e-14)


def test_what_cannot_be_recorded_runs_step_by_step() -> None:
    model = _mlp()
    # Hooks: the forward must run each time.
    learner = MAML(model, lr=0.3, fused=False)
    calls = []
    handle = model[0].register_forward_hook(lambda m, i, o: calls.append(1))
    learner.meta_loss(_batch())
    assert calls and not learner.whole_recorder.graphs
    handle.remove()
    # Dropout: random operators are not replayed, and the draws made while finding out are given back.
    dropout = nn.Sequential(nn.Linear(1, 8), nn.Dropout(0.3), nn.Tanh(), nn.Linear(8, 1)).double()
    recorded, plain = MAML(dropout, lr=0.3, fused=False), MAML(dropout, lr=0.3, fused=False, trace=False)
    with pytest.warns(UserWarning, match="per-task loop"):
        torch.manual_seed(3)
        got = recorded.meta_loss(_batch())
    torch.manual_seed(3)
    with pytest.warns(UserWarning, match="per-task loop"):
        want = plain.meta_loss(_batch())
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
    assert not recorded.whole_recorder.graphs and len(recorded.whole_recorder.failed) == 1
    # No gradients wanted (evaluation), per-step BatchNorm statistics: step by step.
    with torch.no_grad():
        learner.meta_loss(_batch())
    assert not learner.whole_recorder.graphs
    bn = nn.Sequential(nn.Linear(1, 8), nn.BatchNorm1d(8), nn.Linear(8, 1)).double()
    per_step = MAML(bn, lr=0.3, fused=False, per_step_bn=True)
    per_step.meta_loss(_batch())
    assert not per_step.whole_recorder.graphs


def test_whole_graph_simplification() -> None:
    from torch.fx.experimental.proxy_tensor import make_fx

    from maml_ext.algorithms.whole import simplify_whole

    def f(x, w):
        a = (x * w).sum()
        b = (x * w).sum()  # a repeated operator: computed once
        g = (x * 2).div_(3)  # in-place on an intermediate: made out-of-place
        return a + b + (torch.zeros_like(g) + g) + x.detach()

    x, w = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    gm = simplify_whole(make_fx(f)(x, w))
    aten = torch.ops.aten
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count(aten.sum.default) == 1 and aten.div.Tensor in targets
    assert not {aten.div_.Tensor, aten.zeros_like.default, aten.detach.default} & set(targets)
    torch.testing.assert_close(gm(x, w), f(x, w), rtol=1e-15, atol=0)
    assert simplify_whole(make_fx(lambda x: torch.nn.functional.dropout(x, 0.5))(x)) is None


def test_sums_whose_operand_dies_run_in_place() -> None:
    from torch.fx.experimental.proxy_tensor import make_fx

    from maml_ext.algorithms.whole import in_place_candidates, lower, run_in_place

    def f(x, y):
        a = x * 2  # dies at its sum: may take it in place
        s = a + y
        b = x * 3
        keep = b.t()  # a view of b is read later: b must not be overwritten
        t = b + y
        c = x.exp()
        u = c + y  # c is read again below
        wide = x.sum(0) + y  # broadcast: the result is not the first operand's shape
        return s, t + keep, u * c, wide, x + y  # x is an input: never overwritten

    x, y = torch.randn(3, 3, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
    x0, y0 = x.clone(), y.clone()
    want = f(x0, y0)
    gm = make_fx(f)(x, y)
    found = in_place_candidates(gm.graph)
    # a + y, t + keep and u * c (whose first operands are mul, add, add)
    assert sorted(n.args[0].target.__name__ for n in found) == ["add.Tensor", "add.Tensor", "mul.Tensor"]
    gm = run_in_place(lower(gm, (x, y)), found)
    for got, expected in zip(gm(x, y), want, strict=True):
        assert torch.equal(got, expected)
    assert torch.equal(x, x0) and torch.equal(y, y0)  # inputs untouched


def test_sums_read_in_fewer_passes() -> None:
    from torch.fx.experimental.proxy_tensor import make_fx

    from maml_ext.algorithms.sums import distribute_sums, merge_sums

    def f(x, y, z):
        w = x.t()[:, :3]  # a strided operand, as conv4's transposed weight gradient
        s = (w + y).reshape(2, 2, 3).sum([0], keepdim=True)  # -> sum(w) + sum(y)
        a = x.t()[:, 1:4] + y
        kept = a.reshape(2, 2, 3).sum([0]).sum() + a  # the add is read again: kept
        wide = (y + z).sum([0])  # z broadcasts: kept
        same = (y[:1] + y[1:2]).sum([0])  # as large as the add: no gain, kept
        chain = x.sum([0], keepdim=True).sum([-1], keepdim=True).sum([1], keepdim=True)  # -> one sum over [0, 1]
        loose = x.sum([0]).sum([0])  # the inner sum drops its axis: kept
        drops = x.exp().sum([0], keepdim=True).sum([1])  # the outer drops only its own axis: kept
        return s, kept, wide, same, chain, loose, drops

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 4, dtype=torch.float64, generator=g), torch.randn(4, 3, dtype=torch.float64, generator=g)
    z = torch.randn(3, dtype=torch.float64, generator=g)
    gm = make_fx(f)(x, y, z)
    assert distribute_sums(gm.graph) == 1 and merge_sums(gm.graph) == 2
    gm.graph.lint()
    gm.recompile()
    for got, expected in zip(gm(x, y, z), f(x, y, z), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-14, atol=1e-14)


def test_lowering_to_public_bindings_keeps_every_value() -> None:
    from torch.fx.experimental.proxy_tensor import make_fx

    from maml_ext.algorithms.whole import lower

    def f(out, y, w):
        # torch._C._nn.mse_loss's default reduction is not aten's: it must be passed explicitly
        h = out @ w
        return torch.nn.functional.mse_loss(h, y), h.transpose(0, 1).sum(0).view(1, -1)

    g = torch.Generator().manual_seed(2)
    out, y, w = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((5, 3), (5, 3), (3, 3)))
    gm = make_fx(f)(out, y, w)
    lowered = lower(gm, (out, y, w))
    calls = [n for n in lowered.graph.nodes if n.op in ("call_function", "call_method")]
    assert not any(isinstance(n.target, torch._ops.OpOverload) for n in calls if n.target is not None)
    for a, b in zip(lowered(out, y, w), f(out, y, w)):
        assert torch.equal(a, b)


class Branchy(nn.Module):
    """A branch on a value: vmap rejects it, so it runs as the per-task loop, which is not replayed."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.head = nn.Linear(1, 4), nn.Linear(4, 1)

    def forward(self, x):
        h = self.lin(x)
        return self.head(h.tanh() if h.sum() > 0 else h.sin())


def test_a_per_task_loop_is_not_frozen_into_a_recording() -> None:
    torch.manual_seed(0)
    model = Branchy().double()
    learner, plain = MAML(model, lr=0.3, trace=True), MAML(model, lr=0.3, trace=False)
    batch = _batch()
    flipped = TaskBatch(-10 * batch.x_support, batch.y_support, -10 * batch.x_query, batch.y_query)
    with pytest.warns(UserWarning, match="per-task loop"):
        learner.meta_loss(batch)
    with pytest.warns(UserWarning, match="per-task loop"):
        plain.meta_loss(batch)
    assert not learner.whole_recorder.graphs
    torch.testing.assert_close(learner.meta_loss(flipped), plain.meta_loss(flipped), rtol=1e-14, atol=0)


def test_lowering_passes_defaulted_arguments_by_name() -> None:
    from torch.fx.experimental.proxy_tensor import make_fx

    from maml_ext.algorithms.whole import lower

    x = torch.randn(4, dtype=torch.float64)
    # torch.add(x, 2.0, 3.0) would match the deprecated add(input, alpha, other) (and warn)
    gm = make_fx(lambda x: torch.ops.aten.add.Scalar(x, 2.0, 3.0))(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lowered = lower(gm, (x,))
    (node,) = [n for n in lowered.graph.nodes if n.op in ("call_function", "call_method")]
    assert node.target is torch.add and node.kwargs == {"alpha": 3.0}
    assert torch.equal(lowered(x), x + 6.0)


# ----- buffer reuse inside a replay (csrc/replay/replay_memory.cpp) ----------------------------

needs_extension = pytest.mark.skipif(
    not __import__("maml_ext")._extension.available(), reason="the replay's allocator is in the compiled extension")


@needs_extension
def test_replay_memory_scope_hands_freed_blocks_out_again() -> None:
    from maml_ext._extension import C

    reused, fresh = C.replay_memory_stats()
    C.replay_memory_enter()
    try:
        a = torch.empty(1 << 19)  # 2 MiB
        first = a.data_ptr()
        keep = torch.empty(1 << 19)  # alive: never handed out twice
        del a
        b = torch.empty(1 << 19)
        assert b.data_ptr() == first and keep.data_ptr() != first
        small = torch.empty(16)  # below 64 KiB: the ordinary allocator
        del small
    finally:
        C.replay_memory_leave()
    assert C.replay_memory_stats() == (reused + 1, fresh + 2)
    del b, keep  # allocated inside, freed outside: freed, not kept
    with pytest.raises(RuntimeError, match="left more often"):
        C.replay_memory_leave()


@needs_extension
def test_replay_with_reused_memory_gives_the_same_meta_gradient() -> None:
    from maml_ext._extension import C
    from maml_ext.algorithms import whole
    from maml_ext.models import conv4

    torch.manual_seed(0)
    model = conv4.build(1, 5).double()  # 4 tasks: 2 MiB intermediates in float64
    g = torch.Generator().manual_seed(0)
    x = lambda: torch.rand(4, 5, 1, 28, 28, generator=g, dtype=torch.float64)  # noqa: E731
    y = torch.arange(5).expand(4, -1).contiguous()
    batch = TaskBatch(x(), y, x(), y)
    learner = MAML(model, lr=0.4, steps=1, loss="cross_entropy", fused=False, task_batched=False)
    grads = {}
    for reuse in (False, True, False):  # the first call records
        whole.REUSE_MEMORY = reuse
        try:
            before = C.replay_memory_stats()[0]
            model.zero_grad(set_to_none=True)
            learner.meta_loss(batch).backward()
            assert (C.replay_memory_stats()[0] > before) == reuse
            grads[reuse] = [p.grad.clone() for p in model.parameters()]
        finally:
            whole.REUSE_MEMORY = True
    assert learner.whole_recorder.graphs
    for a, b in zip(grads[True], grads[False], strict=True):
        assert torch.equal(a, b)


def test_a_replayed_loss_backwards_once_like_any_graph() -> None:
    """A second ``backward()`` without ``retain_graph`` raises, as on the stepwise and fused paths
    (it used to add the meta-gradient to ``.grad`` again); a retained graph gives it again."""
    from maml_ext.models import conv4

    torch.manual_seed(0)
    model = conv4.build(1, 5, filters=4).double()
    g = torch.Generator().manual_seed(0)
    x = lambda: torch.rand(2, 5, 1, 28, 28, generator=g, dtype=torch.float64)  # noqa: E731
    y = torch.arange(5).expand(2, -1).contiguous()
    batch = TaskBatch(x(), y, x(), y)
    learner = MAML(model, lr=0.4, steps=1, loss="cross_entropy", fused=False, task_batched=False)
    learner.meta_loss(batch)  # records
    loss = learner.meta_loss(batch)
    assert type(loss.grad_fn).__name__ == "_ReplayBackward"
    loss.backward(retain_graph=True)
    first = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    loss.backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(first, model.parameters(), strict=True))
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()
