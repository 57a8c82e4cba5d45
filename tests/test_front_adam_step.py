"""The training step in one op call (ops.mlp_maml_adam_, MAML.meta_step_adam_, the training loop's
fused step): torch.optim.Adam's update in float64, the non-finite stop, resume, what it declines."""

from __future__ import annotations

import json
import math

import pytest
import torch

from _ops_helpers import assert_rel, gen, mlp_batch, mlp_params, randn, requires_extension
from maml_ext import ops, reference
from maml_ext.algorithms import MAML
from maml_ext.models import mlp
from maml_ext.tasks import TaskBatch
from maml_ext.tasks.sinusoid import Sinusoid
from maml_ext.train import config, loop, optim

EXACT = 1e-12  # float64, relative per tensor

SETTINGS = {  # torch.optim.Adam's settings and the loop's value clipping
    "default": {},
    "decay, maximize, betas, eps": dict(weight_decay=0.1, maximize=True, betas=(0.8, 0.99), eps=1e-6),
    "clipped": dict(clip_value=0.05),
}


def _state(g, params):
    """An Adam state some steps in: positive second moments, float32 step counts."""
    exp_avgs = [randn(g, *p.shape, scale=0.1) for p in params]
    exp_avg_sqs = [randn(g, *p.shape, scale=0.01).square() for p in params]
    return exp_avgs, exp_avg_sqs, torch.full((len(params),), 3.0)


@requires_extension
@pytest.mark.parametrize("loss, first_order, steps", [("mse", False, 1), ("cross_entropy", False, 2), ("mse", True, 3)])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_op_equals_its_reference_twin(loss, first_order, steps, setting):
    g = gen(0)
    widths = (2, 6, 3)
    params = mlp_params(g, widths, loss)
    xs, ys = mlp_batch(g, widths, loss, 4, 5)
    xq, yq = mlp_batch(g, widths, loss, 4, 6)
    weight = randn(g, 4).abs()
    kw = SETTINGS[setting]
    outs = []
    for impl in (ops.mlp_maml_adam_, reference.mlp_maml_adam_):
        p = [t.clone() for t in params]
        m, v, counts = _state(gen(1), params)
        value, applied, grads = impl(p, xs, ys, xq, yq, lr=0.1, steps=steps, loss=loss, first_order=first_order,
                                     loss_weight=weight, exp_avgs=m, exp_avg_sqs=v, step_counts=counts,
                                     adam_lr=0.01, return_grads=True, **kw)
        assert applied
        outs.append((value, grads, p, m, v, counts))
    for what, a, b in zip(("loss", "grads", "params", "exp_avgs", "exp_avg_sqs", "step_counts"), *outs):
        assert_rel(a, b, EXACT, what)
    assert outs[0][5].tolist() == [4.0] * len(params)
    # The returned gradient is mlp_maml_grad's, clipped as clip_grad_value_ does.
    _, expected, _ = ops.mlp_maml_grad(params, xs, ys, xq, yq, lr=0.1, steps=steps, loss=loss,
                                       first_order=first_order, loss_weight=weight)
    if "clip_value" in kw:
        expected = [e.clamp(-kw["clip_value"], kw["clip_value"]) for e in expected]
        assert any(bool((e.abs() == kw["clip_value"]).any()) for e in expected)  # clipping happened
    for a, e in zip(outs[0][1], expected, strict=True):
        assert torch.equal(a, e)


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = mlp.build(1, 1, hidden=(8, 8)).double()
    batch = Sinusoid().sample(5, 4, 4, torch.Generator().manual_seed(seed))
    batch = TaskBatch(*(t.double() for t in (batch.x_support, batch.y_support, batch.x_query, batch.y_query)))
    return model, batch


def _lean_adam(learner, lr, settings):
    opt = optim.adam(learner.parameters(), lr)
    assert isinstance(opt, optim.LeanFusedAdam)
    opt.param_groups[0].update({k: v for k, v in settings.items() if k != "clip_value"})
    return opt


@requires_extension
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_training_steps_equal_meta_grad_and_torch_adam_in_float64(setting):
    kw = SETTINGS[setting]
    model, batch = _setup()
    other = mlp.build(1, 1, hidden=(8, 8)).double()
    other.load_state_dict(model.state_dict())
    keys = list(model.state_dict())
    fused, plain = MAML(model, lr=0.05, steps=2), MAML(other, lr=0.05, steps=2)
    opt = _lean_adam(fused, 0.02, kw)
    ref = torch.optim.Adam(plain.parameters(), lr=0.02, foreach=False,
                           **{k: v for k, v in kw.items() if k != "clip_value"})
    for it in range(6):
        ref.zero_grad()
        expected = plain.meta_grad(batch).item()
        if "clip_value" in kw:
            torch.nn.utils.clip_grad_value_(plain.parameters(), kw["clip_value"])
        ref.step()
        opt.zero_grad()
        done = fused.meta_step_adam_(batch, opt, it, kw.get("clip_value"))
        if it == 0:  # no Adam state yet: declined, the normal step creates it
            assert done is None
            fused.meta_grad(batch)
            if "clip_value" in kw:
                torch.nn.utils.clip_grad_value_(fused.parameters(), kw["clip_value"])
            opt.step()
            continue
        loss, applied = done
        assert applied and loss == pytest.approx(expected, rel=EXACT)
        assert all(p.grad is None for p in fused.parameters())  # .grad is not handed over
    assert_rel(list(fused.parameters()), list(plain.parameters()), EXACT, "params")
    for p, q in zip(fused.parameters(), plain.parameters(), strict=True):
        a, b = opt.state[p], ref.state[q]
        assert_rel([a["exp_avg"], a["exp_avg_sq"]], [b["exp_avg"], b["exp_avg_sq"]], EXACT, "moments")
        assert a["step"].item() == b["step"].item() == 6
    assert list(model.state_dict()) == keys  # the user's module gains nothing


def _crafted_batch(bad: str) -> TaskBatch:
    """Task 0's meta-loss NaN ("loss"), or finite with a non-finite gradient ("gradient": with the
    first layer's weights zero and task 0's support inputs zero, its adapted first layer stays
    zero, so a huge query input leaves the output and the loss alone but multiplies the first
    layer's gradient past the float range)."""
    _, batch = _setup()
    xs, xq, yq = batch.x_support.clone(), batch.x_query.clone(), batch.y_query.clone()
    if bad == "loss":
        yq[0, 0] = float("nan")
    else:
        xs[0] = 0.0
        xq[0, 0], yq[0, 0] = 1.7e308, 1e4
    return TaskBatch(xs, batch.y_support, xq, yq)


@requires_extension
@pytest.mark.parametrize("bad", ["loss", "gradient"])
def test_non_finite_step_changes_nothing(bad):
    model, batch = _setup()
    learner = MAML(model, lr=0.05, steps=1)
    opt = _lean_adam(learner, 0.02, {})
    learner.meta_grad(batch)
    opt.step()
    opt.zero_grad()
    with torch.no_grad():
        model.get_submodule(learner.fused_spec.param_names[0].rpartition(".")[0]).weight.zero_()
    crafted = _crafted_batch(bad)
    before = [t.clone() for t in (*learner.parameters(), *(v for s in opt.state.values() for v in s.values()))]
    versions = [p._version for p in learner.parameters()]
    loss, applied = learner.meta_step_adam_(crafted, opt)
    assert not applied and math.isfinite(loss) == (bad == "gradient")
    after = [*learner.parameters(), *(v for s in opt.state.values() for v in s.values())]
    for a, b in zip(after, before, strict=True):
        assert torch.equal(a, b)
    assert [p._version for p in learner.parameters()] == versions
    assert learner.meta_step_adam_(batch, opt)[1]  # a finite batch then steps
    assert [p._version for p in learner.parameters()] == [v + 1 for v in versions]


@requires_extension
@pytest.mark.parametrize("bad, message", [
    (lambda b: TaskBatch(b.x_support.float(), b.y_support, b.x_query, b.y_query), r"^support x: expected dtype"),
    (lambda b: TaskBatch(b.x_support, b.y_support, b.x_query[:3], b.y_query[:3]), r"^query x: expected \[T=5"),
])
def test_bad_batch_is_named_and_changes_nothing(bad, message):
    model, batch = _setup()
    learner = MAML(model, lr=0.05, steps=2)
    opt = stepped_for(learner, batch)
    before = [t.clone() for t in (*learner.parameters(), *(v for s in opt.state.values() for v in s.values()))]
    with pytest.raises((TypeError, ValueError), match=message):
        learner.meta_step_adam_(bad(batch), opt)
    after = [*learner.parameters(), *(v for s in opt.state.values() for v in s.values())]
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))


@requires_extension
def test_declined_cases_do_nothing():
    model, batch = _setup()
    learner = MAML(model, lr=0.05, steps=2)

    def stepped(opt):
        learner.meta_grad(batch)
        opt.step()
        opt.zero_grad()
        return opt

    def unchanged(learner_, opt):
        before = [p.clone() for p in learner_.parameters()]
        assert learner_.meta_step_adam_(batch, opt) is None
        assert all(torch.equal(a, b) for a, b in zip(learner_.parameters(), before))

    opt = stepped(optim.adam(learner.parameters(), 0.01))
    assert learner.meta_step_adam_(batch, opt)[1]  # the plain case steps
    amsgrad = optim.adam(learner.parameters(), 0.01)
    amsgrad.param_groups[0]["amsgrad"] = True
    unchanged(learner, stepped(amsgrad))
    unchanged(learner, stepped(torch.optim.Adam(learner.parameters(), lr=0.01, fused=True)))  # no fused_state
    unchanged(learner, stepped(torch.optim.SGD(learner.parameters(), lr=0.01)))
    handle = opt.register_step_pre_hook(lambda *_: None)  # the hook must see the step
    unchanged(learner, opt)
    handle.remove()
    handle = next(learner.parameters()).register_hook(lambda g: g)  # only backward runs it
    unchanged(learner, opt)
    handle.remove()
    sub = mlp.build(1, 1, hidden=(8, 8)).double()
    metasgd = MAML(sub, lr=0.05, learn_lr="elementwise")
    unchanged(metasgd, stepped_for(metasgd, batch))
    other = optim.adam(MAML(mlp.build(1, 1, hidden=(8, 8)).double()).parameters(), 0.01)  # other parameters
    unchanged(learner, other)


def stepped_for(learner, batch):
    opt = optim.adam(learner.parameters(), 0.01)
    learner.meta_grad(batch)
    opt.step()
    opt.zero_grad()
    return opt


def test_state_follows_the_op_order_once_reordered():
    model, batch = _setup()
    learner = MAML(model, lr=0.05, steps=2)
    opt = stepped_for(learner, batch)
    params = list(learner.parameters())
    state = opt.fused_state(list(reversed(params)))
    assert state.exp_avgs[0] is opt.state[params[-1]]["exp_avg"]
    state.step_counts[0] += 1  # the reordered counts are still the optimizer's step tensors
    assert opt.state[params[-1]]["step"].item() == 2 and opt.state[params[0]]["step"].item() == 1
    assert opt.fused_state(params[:-1]) is None


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(exp_avgs=a["exp_avgs"][:-1]), r"exp_avgs, exp_avg_sqs: expected 4 tensors each"),
    (lambda a: a.update(exp_avg_sqs=[t.float() for t in a["exp_avg_sqs"]]), r"exp_avg_sqs\[0\]: expected dtype"),
    (lambda a: a.update(step_counts=a["step_counts"].double()), r"step_counts: expected float32 \[4\]"),
    (lambda a: a.update(betas=(0.9, 1.0)), r"betas: expected each in \[0, 1\)"),
    (lambda a: a.update(adam_lr=-1.0), r"adam_lr: expected a finite value >= 0"),
    (lambda a: a.update(clip_value=0.0), r"clip_value: expected a value > 0"),
])
@pytest.mark.parametrize("impl", [ops.mlp_maml_adam_, reference.mlp_maml_adam_])  # the op: its twin without _C
def test_bad_adam_state_is_named_before_any_work(change, message, impl):
    g = gen(2)
    params = mlp_params(g, (1, 3, 1))
    xs, ys = mlp_batch(g, (1, 3, 1), "mse", 2, 3)
    m, v, counts = _state(g, params)
    args = dict(exp_avgs=m, exp_avg_sqs=v, step_counts=counts, adam_lr=0.01)
    change(args)
    before = [t.clone() for t in params]
    with pytest.raises(ValueError if "dtype" not in message else TypeError, match=message):
        impl(params, xs, ys, xs, ys, lr=0.1, **args)
    assert all(torch.equal(a, b) for a, b in zip(params, before))


@requires_extension
def test_opcheck_schema_and_fake_kernel():
    g = gen(3)
    params = mlp_params(g, (1, 3, 1))
    xs, ys = mlp_batch(g, (1, 3, 1), "mse", 2, 3)
    m, v, counts = _state(g, params)
    args = (params, xs, ys, None, xs, ys, None, 0.1, 1, "relu", "mse", False, torch.full((2,), 0.5, dtype=torch.float64),
            m, v, counts, 0.01, 0.9, 0.999, 0.0, 1e-8, False, 0.5, True)
    torch.library.opcheck(torch.ops.maml_ext.mlp_maml_adam_, args, test_utils=("test_schema", "test_faketensor"))


# ----- the training loop --------------------------------------------------------------------------
TINY = ["model.hidden=[8]", "train.iterations=6", "train.meta_batch=4", "train.log_every=1",
        "train.checkpoint_every=3", "eval.num_tasks=20", "eval.shots=[5]", "eval.k_query=10", "eval.steps=3"]


_META_STEP = MAML.meta_step_adam_


def _count_fused(monkeypatch, enabled: bool = True) -> list[int]:
    """Count the loop's fused steps (or, ``enabled=False``, decline them all)."""
    taken = []
    original = _META_STEP

    def counted(self, *args, **kwargs):
        done = original(self, *args, **kwargs) if enabled else None
        taken.append(done is not None)
        return done

    monkeypatch.setattr(MAML, "meta_step_adam_", counted)
    return taken


def _final(out):
    return torch.load(out / loop.CHECKPOINT, weights_only=True)


@requires_extension
def test_loop_resumes_exactly_on_the_fused_path(tmp_path, monkeypatch):
    taken = _count_fused(monkeypatch)
    straight, split = tmp_path / "straight", tmp_path / "split"
    loop.train(config.load("sinusoid", TINY), straight, progress=False)
    assert taken == [False] + [True] * 5  # the first step creates Adam's state
    taken.clear()
    loop.train(config.load("sinusoid", [*TINY, "train.iterations=3"]), split, progress=False)
    loop.train(config.load("sinusoid", TINY), split, resume=True, progress=False)
    assert taken == [False, True, True] + [True] * 3  # resumed: fused from its first step
    a, b = _final(straight), _final(split)
    for name in a["learner"]:
        assert torch.equal(a["learner"][name], b["learner"][name]), name
    assert str(a["optimizer"]) == str(b["optimizer"])
    losses = [[json.loads(r)["loss"] for r in (d / loop.METRICS).read_text().splitlines()] for d in (straight, split)]
    assert losses[0] == losses[1]


@requires_extension
def test_loop_fused_step_equals_the_separate_steps_with_and_without_clipping(tmp_path, monkeypatch):
    runs = {}
    for clip in ([], ["train.clip_grad=0.01"]):
        for enabled in (True, False):
            taken = _count_fused(monkeypatch, enabled)
            out = tmp_path / f"{enabled}{len(clip)}"
            loop.train(config.load("sinusoid", [*TINY, *clip]), out, progress=False)
            assert sum(taken) == (5 if enabled else 0)
            runs[enabled, bool(clip)] = _final(out)["learner"]
    for clip in (False, True):
        for name, value in runs[True, clip].items():  # float32: the two Adam loops round differently
            torch.testing.assert_close(value, runs[False, clip][name], rtol=1e-5, atol=1e-7)
    assert any(not torch.allclose(runs[True, True][n], runs[True, False][n], rtol=1e-3) for n in runs[True, True])


def test_loop_keeps_the_separate_steps_without_the_compiled_op(monkeypatch, tmp_path):
    """Without _C (or off the CPU) the fused step is declined: torch's Adam, as before."""
    monkeypatch.setattr(ops, "extension_available", lambda: False)
    taken = _count_fused(monkeypatch)
    loop.train(config.load("sinusoid", TINY), tmp_path / "run", progress=False)
    assert taken == [False] * 6
