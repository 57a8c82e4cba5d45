"""The fused path's cached plumbing (maml_ext.algorithms.fused_call) and the training loop's Adam."""

from __future__ import annotations

import collections
import copy

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


# ----- meta_grad (the gradient without the autograd engine) and the lean fused Adam -----------
def _twins(learn_lr: str, parameterisation: str = "identity", **kw):
    """Two learners on equal copies of one model: the fused meta_grad path and a reference."""
    model, batch = _setup()
    other = mlp.build(1, 1, hidden=(8, 8)).double()
    other.load_state_dict(model.state_dict())
    return tuple(MAML(m, lr=0.05, steps=2, learn_lr=learn_lr, lr_parameterisation=parameterisation, **kw)
                 for m in (model, other)) + (batch,)


def _grads(learner):
    return [p.grad for p in learner.parameters()]


@pytest.mark.parametrize("learn_lr, parameterisation, first_order", [
    ("none", "identity", False), ("none", "identity", True), ("elementwise", "identity", False),
    ("elementwise", "softplus", False), ("per_step", "exp", False),
])
def test_meta_grad_and_lean_adam_equal_backward_and_torch_adam(learn_lr, parameterisation, first_order):
    new, old, batch = _twins(learn_lr, parameterisation, first_order=first_order)
    assert new.fused_spec is not None
    new_opt = optim.adam(new.parameters(), 1e-2)
    old_opt = torch.optim.Adam(old.parameters(), lr=1e-2, fused=True)
    assert isinstance(new_opt, optim.LeanFusedAdam)
    for it in range(4):
        new_opt.zero_grad()
        old_opt.zero_grad()
        loss = new.meta_grad(batch)
        ref = old.meta_loss(batch)
        ref.backward()
        assert loss.grad_fn is None and torch.equal(loss, ref.detach())
        for a, b in zip(_grads(new), _grads(old), strict=True):
            assert torch.equal(a, b), it
        new_opt.step()
        old_opt.step()
        for a, b in zip(new.parameters(), old.parameters(), strict=True):
            assert torch.equal(a, b), it
    assert str(new_opt.state_dict()) == str(old_opt.state_dict())


def test_meta_grad_scales_and_accumulates_like_backward():
    new, old, batch = _twins("elementwise")
    for scale in (0.25, 1.0):  # the second call accumulates into the first's .grad
        loss = new.meta_grad(batch, scale=scale)
        ref = old.meta_loss(batch) * scale
        ref.backward()
        assert torch.equal(loss, ref.detach())
    for a, b in zip(_grads(new), _grads(old), strict=True):
        assert torch.equal(a, b)


def test_meta_grad_of_a_subclass_follows_its_meta_loss():
    class Penalised(MAML):
        def meta_loss(self, batch, iteration=0):
            return super().meta_loss(batch, iteration) + sum((p * p).sum() for p in self.model.parameters())

    model, batch = _setup()
    learner = Penalised(model, lr=0.05, steps=2)
    assert learner.fused_spec is not None
    learner.meta_grad(batch)
    grads = [p.grad.clone() for p in learner.parameters()]
    learner.zero_grad()
    learner.meta_loss(batch).backward()
    for a, b in zip(grads, _grads(learner), strict=True):
        assert torch.equal(a, b)


def test_meta_grad_runs_tensor_hooks_through_backward():
    learner, _, batch = _twins("none")
    seen = []
    next(learner.parameters()).register_hook(lambda g: seen.append(g) or g * 0)
    learner.meta_grad(batch)
    assert len(seen) == 1 and not next(learner.parameters()).grad.any()


def test_lean_adam_resumes_exactly_from_a_saved_state():
    new, old, batch = _twins("none")
    opt = optim.adam(new.parameters(), 1e-2)
    ref = torch.optim.Adam(old.parameters(), lr=1e-2, fused=True)

    def iteration(learner, o):
        o.zero_grad()
        learner.meta_grad(batch)
        o.step()

    for it in range(4):
        iteration(new, opt)
        iteration(old, ref)
        if it == 0:  # a resumed optimizer: state loaded into a fresh one, lists gathered anew
            saved = opt.state_dict()
            opt = optim.adam(new.parameters(), 1e-2)
            opt.load_state_dict(saved)
        if it == 1:  # rolled back in place: the gathered lists must follow the loaded state
            saved = copy.deepcopy(opt.state_dict())
            weights = [p.detach().clone() for p in new.parameters()]
            iteration(new, opt)
            opt.load_state_dict(saved)
            with torch.no_grad():
                for p, w in zip(new.parameters(), weights):
                    p.copy_(w)
    for a, b in zip(new.parameters(), old.parameters(), strict=True):
        assert torch.equal(a, b)
    assert str(opt.state_dict()) == str(ref.state_dict())


@pytest.mark.parametrize("reset", ["clear", "new dict"])
def test_lean_adam_starts_afresh_after_its_state_is_reset(reset):
    """``opt.state.clear()`` (or a new dict) restarts Adam as torch's does: the gathered lists
    hold the old moments and step counts and must not be stepped (nor handed to the fused update)."""
    new, old, batch = _twins("none")
    opt = optim.adam(new.parameters(), 1e-2)
    ref = torch.optim.Adam(old.parameters(), lr=1e-2, fused=True)
    for it in range(4):
        for learner, o in ((new, opt), (old, ref)):
            if it == 2:
                if reset == "clear":
                    o.state.clear()
                else:
                    o.state = collections.defaultdict(dict)
            o.zero_grad()
            learner.meta_grad(batch)
            if it == 2 and o is opt:
                assert opt.fused_state(list(new.parameters())) is None
            o.step()
    for a, b in zip(new.parameters(), old.parameters(), strict=True):
        assert torch.equal(a, b)
    assert str(opt.state_dict()) == str(ref.state_dict())


def test_lean_adam_skips_torch_step_after_the_first(monkeypatch):
    learner, _, batch = _twins("none")
    opt = optim.adam(learner.parameters(), 1e-2)
    calls, hooked = [], []
    step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, closure=None: calls.append(1) or step(self, closure))
    for i in range(4):
        opt.zero_grad()
        learner.meta_grad(batch)
        if i == 2:  # a step hook: torch's hook wrapper runs around the lean step, once
            handle = opt.register_step_post_hook(lambda *_: hooked.append(1))
        opt.step()
    handle.remove()
    assert len(calls) == 1 and len(hooked) == 2
    assert all(s["step"].item() == 4 for s in opt.state.values())
    opt.zero_grad()
    assert all(p.grad is None for p in learner.parameters())
    opt.step()  # no gradients: torch's step (which skips them) runs
    assert len(calls) == 2


def test_check_finite_finds_any_non_finite_entry_and_leaves_gradients_bitwise_alone():
    from maml_ext.train import driver, loop

    tiny = torch.tensor([5e-324, -0.0, -1e308, 1.0], dtype=torch.float64)  # denormal, -0, huge
    params = [nn.Parameter(torch.zeros(4, dtype=torch.float64)), nn.Parameter(torch.zeros(2, 3)),
              nn.Parameter(torch.zeros(1))]
    params[0].grad, params[1].grad = tiny.clone(), torch.randn(2, 3)  # params[2] has no gradient
    before = [p.grad.clone() for p in params[:2]]
    loop.check_finite(0.5, params)
    for p, b in zip(params, before):
        assert torch.equal(p.grad.view(torch.uint8), b.view(torch.uint8))
    for bad in (float("nan"), float("inf"), -float("inf")):
        params[1].grad[1, 2] = bad
        with pytest.raises(driver.NonFinite, match=r"^the meta-gradient has non-finite entries$"):
            loop.check_finite(0.5, params)
