"""A recording (the generic path's forward and whole meta-gradient) is replayed only while the
modules' Python attributes are as they were: a user changing a torch.nn layer's setting (a
slope, an ``eps``, a dropout rate) or a flag of their own model between calls gets the
meta-gradient of the model as it is now, equal to a per-task autograd loop's in float64."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from maml_ext.algorithms import MAML
from maml_ext.tasks import TaskBatch

LR, STEPS = 0.3, 2


def batch() -> TaskBatch:
    g = torch.Generator().manual_seed(3)
    return TaskBatch(*(torch.randn(3, 4, n, generator=g, dtype=torch.float64) for n in (2, 1, 2, 1)))


def per_task_mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out - y).pow(2).flatten(1).mean(1)


def reference_meta_loss(model: nn.Module, b: TaskBatch) -> torch.Tensor:
    """Per-task MAML with torch.autograd on the module as it is now."""
    twin = copy.deepcopy(model)
    named = dict(model.named_parameters())
    losses = []
    for t in range(b.x_support.shape[0]):
        fast = dict(named)
        for _ in range(STEPS):
            value = F.mse_loss(functional_call(twin, fast, (b.x_support[t],)), b.y_support[t])
            grads = torch.autograd.grad(value, list(fast.values()), create_graph=True)
            fast = {n: p - LR * g for (n, p), g in zip(fast.items(), grads)}
        losses.append(F.mse_loss(functional_call(twin, fast, (b.x_query[t],)), b.y_query[t]))
    return torch.stack(losses).mean()


def assert_exact(model: nn.Module, got: torch.Tensor, b: TaskBatch) -> None:
    want = reference_meta_loss(model, b)
    params = list(model.parameters())
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)
    for g, w in zip(torch.autograd.grad(got, params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-13)


class Switch(nn.Module):
    """A model of the user's whose forward branches on a flag they set."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(2, 5), nn.Linear(5, 1)
        self.smooth = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.b(torch.tanh(h) if self.smooth else torch.sin(h))


class Tempered(nn.Module):
    """A temperature held as a plain tensor attribute, replaced by the user."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(2, 5), nn.Linear(5, 1)
        self.temperature = torch.tensor(1.0, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x) / self.temperature))


def torch_nn_model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, 6), nn.LeakyReLU(0.01), nn.LayerNorm(6), nn.Linear(6, 1))


def slope(model: nn.Module) -> None:
    model[1].negative_slope = 0.5


def eps(model: nn.Module) -> None:
    model[2].eps = 0.5


def flag(model: nn.Module) -> None:
    model.smooth = False


def temperature(model: nn.Module) -> None:
    model.temperature = torch.tensor(3.0, dtype=torch.float64)


CHANGES = {"slope": (torch_nn_model, slope, {}), "eps": (torch_nn_model, eps, {}),
           "own_flag": (Switch, flag, {"trace": True}), "tensor_attribute": (Tempered, temperature, {"trace": True})}


@pytest.mark.parametrize("whole", [True, False], ids=["whole", "forward_only"])
@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_changed_attribute_is_not_replayed_stale(change: str, whole: bool) -> None:
    build, apply, options = CHANGES[change]
    torch.manual_seed(0)
    model = build().double()
    # A custom loss keeps the whole meta-gradient unrecorded: only the forward is.
    learner = MAML(model, lr=LR, steps=STEPS, fused=False, loss="mse" if whole else per_task_mse, **options)
    b = batch()
    recorder = learner.whole_recorder if whole else learner.functional.recorder
    assert_exact(model, learner.meta_loss(b), b)  # recorded with the attribute as it was
    recorded = len(recorder.graphs)
    assert recorded > 0
    apply(model)
    assert_exact(model, learner.meta_loss(b), b)
    assert len(recorder.graphs) > recorded  # recorded again, not replayed


def test_a_dropout_rate_raised_from_zero_is_not_replayed_without_dropout() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(0.0), nn.Linear(16, 1)).double()
    learner = MAML(model, lr=LR, steps=STEPS)
    b = batch()
    without = learner.meta_loss(b)  # p = 0: no random operator, recorded
    assert len(learner.whole_recorder.graphs) == 1
    model[2].p = 0.5
    assert learner.meta_loss(b) != without


@pytest.mark.parametrize("whole", [True, False], ids=["whole", "forward_only"])
def test_autocast_runs_unrecorded_as_trace_false(whole: bool) -> None:
    """Under autocast a call is not recorded (a replay would cast the recorded casts' operands
    again; the autocast dtype is not in the key): the same values as ``trace=False``'s."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 1))
    g = torch.Generator().manual_seed(3)
    b = TaskBatch(*(torch.randn(3, 4, n, generator=g) for n in (8, 1, 8, 1)))
    loss = "mse" if whole else (lambda out, y: per_task_mse(out.float(), y))
    learner = MAML(model, lr=LR, steps=1, loss=loss)
    plain = MAML(model, lr=LR, steps=1, loss=loss, trace=False)
    params = list(model.parameters())
    for dtype in (torch.bfloat16, torch.float16):  # a recording of the first would be replayed for the second
        with torch.autocast("cpu", dtype=dtype):
            got, want = learner.meta_loss(b), plain.meta_loss(b)
        assert torch.equal(got, want)
        for a, c in zip(torch.autograd.grad(got, params), torch.autograd.grad(want, params)):
            assert torch.equal(a, c)
    recorder = learner.whole_recorder if whole else learner.functional.recorder
    assert not recorder.graphs
    learner.meta_loss(b)  # autocast off: recorded
    assert recorder.graphs


def test_a_second_derivative_of_the_recorded_meta_loss_is_refused_by_name() -> None:
    """The recorded node hands over a value: ``create_graph=True`` (a penalty on the
    meta-gradient) raises naming the way out, instead of gradients without a graph."""
    torch.manual_seed(0)
    model = torch_nn_model().double()
    b = batch()
    params = list(model.parameters())
    learner = MAML(model, lr=LR, steps=STEPS)
    with pytest.raises(RuntimeError, match=r"differentiable once.*pass trace=False"):
        torch.autograd.grad(learner.meta_loss(b), params, create_graph=True)
    assert learner.whole_recorder.graphs  # it was the recorded node
    stepwise = MAML(model, lr=LR, steps=STEPS, trace=False)
    grads = torch.autograd.grad(stepwise.meta_loss(b), params, create_graph=True)
    penalty = sum((g ** 2).sum() for g in grads)
    assert all(h is not None for h in torch.autograd.grad(penalty, params))


@pytest.mark.parametrize("whole", [True, False], ids=["whole", "forward_only"])
def test_a_failed_recording_is_tried_again_only_under_another_key(whole: bool, monkeypatch) -> None:
    """Dropout in training mode cannot be recorded (random operators): its key runs step by step
    and is not traced again on every call; after ``model.eval()`` the same learner records,
    batches the tasks with vmap again and matches a per-task autograd loop."""
    from maml_ext.algorithms import trace, whole as whole_module

    module = whole_module if whole else trace
    tries = []
    real = module.make_fx  # counts the recordings tried
    monkeypatch.setattr(module, "make_fx", lambda *a, **k: tries.append(1) or real(*a, **k))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.Dropout(0.3), nn.Tanh(), nn.Linear(16, 1)).double()
    learner = MAML(model, lr=LR, steps=STEPS, fused=False, loss="mse" if whole else per_task_mse)
    recorder = learner.whole_recorder if whole else learner.functional.recorder
    b = batch()
    with pytest.warns(UserWarning, match="per-task loop"):
        learner.meta_loss(b)
    tried = len(tries)
    assert tried and not recorder.graphs
    learner.meta_loss(b)
    assert len(tries) == tried  # the failed keys are remembered, not traced again
    model.eval()
    assert_exact(model, learner.meta_loss(b), b)
    assert recorder.graphs and learner.functional.vmap_ok
    model.train()
    learner.meta_loss(b)
    assert len(tries) == tried + len(recorder.graphs)


class Counting(nn.Module):
    """A model of the user's that counts its forward calls: its state changes on every call."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(2, 5), nn.Linear(5, 1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.b(torch.tanh(self.a(x)))


@pytest.mark.parametrize("whole", [True, False], ids=["whole", "forward_only"])
def test_an_attribute_changing_on_every_call_switches_recording_off_once(whole: bool) -> None:
    """A counter in ``forward`` would make every call record anew (seconds each on a conv net,
    up to 64 times): after 3 recordings of one signature in a row the learner stops recording,
    with one warning naming the attribute, and stays exact."""
    torch.manual_seed(0)
    model = Counting().double()
    learner = MAML(model, lr=LR, steps=STEPS, fused=False, trace=True, loss="mse" if whole else per_task_mse)
    recorder = learner.whole_recorder if whole else learner.functional.recorder
    b = batch()
    with pytest.warns(UserWarning, match=r"attribute\(s\) calls changed on each") as seen:
        for _ in range(6):
            assert_exact(model, learner.meta_loss(b), b)
    assert len([w for w in seen if "changed on each" in str(w.message)]) == 1
    assert not learner.functional.recorder.enabled
    assert len(recorder.graphs) < 3 * (1 if whole else 4)  # a forward has <= 4 signatures per call


def test_a_mode_switched_on_every_call_is_replayed_not_churned() -> None:
    """train/eval alternating: two recordings, replayed in turn (not taken for churn)."""
    torch.manual_seed(0)
    model = torch_nn_model().double()
    learner = MAML(model, lr=LR, steps=STEPS)
    b = batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(6):
            model.train(i % 2 == 0)
            assert_exact(model, learner.meta_loss(b), b)
    assert len(learner.whole_recorder.graphs) == 2 and learner.functional.recorder.enabled
