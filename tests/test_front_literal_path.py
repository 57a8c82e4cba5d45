"""The literal user path on the fused MLP: ``opt.zero_grad(); learner.meta_loss(batch).backward();
opt.step()``. With the extension the loss's autograd node is C++ (``torch.ops.maml_ext.mlp_maml_loss``)
and stores its precomputed gradients as .grad (through AccumulateGrad where anything observes a
parameter); without it, a Python node hands them to AccumulateGrad.
Both must behave as any autograd graph: retained graphs, a second backward, gradient scaling,
hooks, anomaly mode and the profiler."""

from __future__ import annotations

import pytest
import torch

from _ops_helpers import requires_extension
from maml_ext import ops
from maml_ext.algorithms import MAML
from maml_ext.models import mlp
from maml_ext.tasks import TaskBatch
from maml_ext.tasks.sinusoid import Sinusoid


def _setup(learn_lr: str = "none", first_order: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    model = mlp.build(1, 1, hidden=(8, 8)).double()
    batch = Sinusoid().sample(5, 4, 4, torch.Generator().manual_seed(seed))
    batch = TaskBatch(*(t.double() for t in (batch.x_support, batch.y_support, batch.x_query, batch.y_query)))
    learner = MAML(model, lr=0.01, steps=2, learn_lr=learn_lr, first_order=first_order,
                   lr_parameterisation="softplus" if learn_lr == "per_step" else "identity")
    assert learner.fused_spec is not None
    return learner, batch


def _grads(learner: MAML) -> list[torch.Tensor]:
    return [p.grad.clone() for p in learner.parameters()]


def _zero(learner: MAML) -> None:
    for p in learner.parameters():
        p.grad = None


@pytest.mark.parametrize("learn_lr,first_order", [("none", False), ("none", True), ("elementwise", False),
                                                  ("per_step", False)])
def test_backward_gives_the_generic_paths_meta_gradient(learn_lr, first_order):
    learner, batch = _setup(learn_lr, first_order)
    generic, _ = _setup(learn_lr, first_order)
    generic.fused_spec = None  # the step-by-step autograd path on the same weights
    loss, expected_loss = learner.meta_loss(batch), generic.meta_loss(batch)
    loss.backward()
    expected_loss.backward()
    torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=0)
    for (name, p), q in zip(learner.named_parameters(), generic.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-14, msg=name)


def test_repeated_iterations_are_bitwise_equal():
    learner, batch = _setup()
    learner.meta_loss(batch).backward()
    first = _grads(learner)
    _zero(learner)
    learner.meta_loss(batch).backward()
    assert all(torch.equal(a, b) for a, b in zip(first, _grads(learner)))


def test_a_retained_graph_keeps_its_gradients_whatever_is_done_to_grad():
    learner, batch = _setup()
    loss = learner.meta_loss(batch)
    loss.backward(retain_graph=True)
    first = _grads(learner)
    for p in learner.parameters():  # .grad is the user's: it must not alias what the graph keeps
        p.grad.mul_(-7.0).add_(3.0)
    _zero(learner)
    loss.backward()
    assert all(torch.equal(a, b) for a, b in zip(first, _grads(learner)))
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()


def test_gradients_returned_from_a_retained_graph_are_the_callers():
    learner, batch = _setup()
    params = list(learner.parameters())
    loss = learner.meta_loss(batch)
    first = torch.autograd.grad(loss, params, retain_graph=True)
    expected = [g.clone() for g in first]
    for g in first:
        g.mul_(-7.0)
    assert all(torch.equal(g, e) for g, e in zip(torch.autograd.grad(loss, params), expected))


def test_gradients_accumulate_and_scale_as_autograd_does():
    learner, batch = _setup()
    learner.meta_loss(batch).backward()
    g = _grads(learner)
    (learner.meta_loss(batch) * 3.0).backward()  # accumulated into the existing .grad
    assert all(torch.equal(p.grad, a + 3.0 * a) for p, a in zip(learner.parameters(), g))


def test_hooks_see_and_replace_the_gradient():
    learner, batch = _setup()
    learner.meta_loss(batch).backward()
    expected = _grads(learner)
    _zero(learner)
    seen = []
    params = list(learner.parameters())
    handles = [params[0].register_hook(lambda g: g * 2.0)]
    handles += [p.register_post_accumulate_grad_hook(lambda p: seen.append(p)) for p in params]
    try:
        learner.meta_loss(batch).backward()
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(params[0].grad, expected[0] * 2.0)
    assert all(torch.equal(p.grad, e) for p, e in zip(params[1:], expected[1:]))
    assert len(seen) == len(params)


def test_anomaly_mode_checks_the_node():
    learner, batch = _setup()
    learner.meta_loss(batch).backward()
    expected = _grads(learner)
    _zero(learner)
    with torch.autograd.set_detect_anomaly(True, check_nan=True):
        learner.meta_loss(batch).backward()
    assert all(torch.equal(p.grad, e) for p, e in zip(learner.parameters(), expected))
    bad = TaskBatch(batch.x_support, batch.y_support.clone().fill_(float("nan")), batch.x_query, batch.y_query)
    # The forward's traceback is reported with the node that returned NaN (the compiled node; the
    # reference already meets the NaN in its own graph inside meta_loss).
    with torch.autograd.set_detect_anomaly(True, check_nan=True), pytest.warns(UserWarning, match="Error detected in"):
        with pytest.raises(RuntimeError, match="returned nan values"):
            learner.meta_loss(bad).backward()


def test_the_profiler_sees_the_node():
    learner, batch = _setup()
    loss = learner.meta_loss(batch)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        loss.backward()
    names = {e.name for e in prof.events()}
    assert f"autograd::engine::evaluate_function: {loss.grad_fn.name()}" in names


def _engine_nodes(names: list[str]) -> list[str]:
    prefix = "autograd::engine::evaluate_function: "
    return [n[len(prefix):] for n in names if n.startswith(prefix)]


@requires_extension
def test_a_plain_backward_stores_the_gradients_without_accumulate_grad_nodes_or_copies():
    learner, batch = _setup()
    learner.meta_loss(batch).backward()
    expected = _grads(learner)
    _zero(learner)
    loss = learner.meta_loss(batch)
    assert loss.grad_fn.name() == "MlpMamlLossBackward"
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        loss.backward()
    names = [e.name for e in prof.events()]
    # The node stores each gradient as .grad itself: the engine runs no AccumulateGrad, and nothing
    # is cloned, copied or multiplied by 1.
    assert _engine_nodes(names) == ["MlpMamlLossBackward"], names
    assert not {"aten::clone", "aten::copy_", "aten::mul"} & set(names), names
    assert all(torch.equal(p.grad, e) for p, e in zip(learner.parameters(), expected))
    # A .grad that exists is added to in place, as AccumulateGrad does (optimizers hold it).
    held = [p.grad for p in learner.parameters()]
    learner.meta_loss(batch).backward()
    assert all(p.grad is h and torch.equal(h, e + e) for p, h, e in zip(learner.parameters(), held, expected))


@requires_extension
def test_anything_observing_a_parameter_keeps_its_accumulate_grad_node():
    """A tensor hook, a post-accumulate hook, a hook on the parameter's AccumulateGrad node (what
    DDP and FSDP register) or one on the loss's node: that parameter's gradient goes through the
    engine's AccumulateGrad (the others' still not), and every hook sees what it would see."""
    def accumulator(p, seen):
        node = p.view_as(p).grad_fn.next_functions[0][0]
        seen.append(node)  # kept alive, as DDP keeps its nodes (the tensor holds it weakly)
        return node

    observers = [  # (which parameter, how), each on a fresh learner (a removed hook leaves its slot)
        (0, lambda p, seen: p.register_hook(lambda g: seen.append(g.clone()))),
        (1, lambda p, seen: p.register_post_accumulate_grad_hook(lambda p: seen.append(p.grad.clone()))),
        (2, lambda p, seen: accumulator(p, seen).register_hook(lambda gi, go: seen.append(go[0].clone()))),
        (3, lambda p, seen: accumulator(p, seen).register_prehook(lambda go: seen.append(go[0].clone()))),
    ]
    for i, observe in observers:
        learner, batch = _setup()
        learner.meta_loss(batch).backward()
        expected = _grads(learner)
        _zero(learner)
        params, seen = list(learner.parameters()), []
        observe(params[i], seen)
        loss = learner.meta_loss(batch)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            loss.backward()
        assert _engine_nodes([e.name for e in prof.events()]).count("torch::autograd::AccumulateGrad") == 1, i
        seen = [g for g in seen if isinstance(g, torch.Tensor)]
        assert len(seen) == 1 and torch.equal(seen[0], expected[i]), i
        assert all(torch.equal(p.grad, e) for p, e in zip(params, expected)), i
    _zero(learner)
    loss = learner.meta_loss(batch)
    outputs = []
    handle = loss.grad_fn.register_hook(lambda grad_inputs, grad_outputs: outputs.append(grad_inputs))
    loss.backward()
    handle.remove()
    assert all(torch.equal(g, e) for g, e in zip(outputs[0], expected, strict=True))
    assert all(torch.equal(p.grad, e) for p, e in zip(params, expected))


def test_other_nodes_feeding_the_same_parameters_add_their_gradients():
    """A regulariser on the weights, or two meta-losses in one backward: every parameter gets the
    sum (a node storing its gradient itself would leave the engine waiting for the others)."""
    learner, batch = _setup()
    other = Sinusoid().sample(5, 4, 4, torch.Generator().manual_seed(9))
    other = TaskBatch(*(t.double() for t in (other.x_support, other.y_support, other.x_query, other.y_query)))
    params = list(learner.parameters())
    learner.meta_loss(batch).backward()
    first = _grads(learner)
    _zero(learner)
    learner.meta_loss(other).backward()
    second = _grads(learner)
    _zero(learner)
    (learner.meta_loss(batch) + 0.5 * sum((p * p).sum() for p in params[::2])).backward()
    for i, (p, g) in enumerate(zip(params, first)):
        torch.testing.assert_close(p.grad, g + p.detach() if i % 2 == 0 else g, rtol=1e-14, atol=0)
    _zero(learner)
    (learner.meta_loss(batch) + learner.meta_loss(other)).backward()
    assert all(torch.equal(p.grad, a + b) for p, a, b in zip(params, first, second))


def test_backward_with_inputs_fills_only_those():
    learner, batch = _setup()
    learner.meta_loss(batch).backward()
    expected = _grads(learner)
    _zero(learner)
    params = list(learner.parameters())
    learner.meta_loss(batch).backward(inputs=[params[1], params[4]])
    assert [p.grad is not None for p in params] == [False, True, False, False, True, False]
    assert torch.equal(params[1].grad, expected[1]) and torch.equal(params[4].grad, expected[4])


def test_double_backward_is_refused():
    learner, batch = _setup()
    loss = learner.meta_loss(batch)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(loss, list(learner.parameters()), create_graph=True)


def test_literal_iterations_with_the_lean_adam_equal_torch_adam_bitwise():
    """zero_grad + meta_loss(batch).backward() + step: maml_ext.train.optim.adam (compiled step
    with the extension) against torch.optim.Adam(fused=True) on a twin, bit for bit."""
    from maml_ext.train import optim

    learner, batch = _setup()
    twin, _ = _setup()
    opt, ref = optim.adam(learner.parameters(), 1e-2), torch.optim.Adam(twin.parameters(), lr=1e-2, fused=True)
    for it in range(4):
        for lr, o in ((learner, opt), (twin, ref)):
            o.zero_grad()
            lr.meta_loss(batch).backward()
            o.step()
        if it == 1:
            assert opt._lists is not None and (opt._lists.compiled is not None) == ops.extension_available()
        for a, b in zip(learner.parameters(), twin.parameters(), strict=True):
            assert torch.equal(a, b), it
    assert str(opt.state_dict()) == str(ref.state_dict())
    assert all(p.grad is not None for p in learner.parameters())  # step leaves .grad to the user
    versions = [s["step"]._version for s in opt.state.values()]
    opt.step()  # the step counts are written in place as add_ writes them: versions move on
    assert [s["step"]._version for s in opt.state.values()] == [v + 1 for v in versions]


@requires_extension
def test_loss_op_passes_opcheck_and_its_value_kernel_agrees():
    learner, batch = _setup()
    params = learner._fused_call.params()
    args = (params, [], 0.01, False, batch.x_support, batch.y_support, None, batch.x_query, batch.y_query, None, 2,
            "relu", "mse", False, learner._fused_call.mean_weight(5, params[0]))
    torch.library.opcheck(torch.ops.maml_ext.mlp_maml_loss.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration",
                                      "test_aot_dispatch_dynamic"))
    expected = learner.meta_loss(batch).detach()
    with torch.no_grad():  # the autograd kernel without a node
        value = torch.ops.maml_ext.mlp_maml_loss.default(*args)
    assert value.grad_fn is None and torch.equal(value, expected)
    with torch.inference_mode():  # below autograd: the value kernel, the same bits
        assert torch.equal(torch.ops.maml_ext.mlp_maml_loss.default(*args), expected)


def test_a_copied_lean_adam_steps_like_the_original():
    """copy.deepcopy (and pickling) of the optimizer keep only torch's state: the copy gathers its
    own lists (here over the copied parameters) and steps bitwise like the original."""
    import copy

    from maml_ext.train import optim

    learner, batch = _setup()
    opt = optim.adam(learner.parameters(), 1e-2)
    learner.meta_loss(batch).backward()
    opt.step()
    twin_learner, twin_opt = copy.deepcopy((learner, opt))
    for lr, o in ((learner, opt), (twin_learner, twin_opt)):
        o.zero_grad()
        lr.meta_loss(batch).backward()
        o.step()
    for a, b in zip(learner.parameters(), twin_learner.parameters(), strict=True):
        assert torch.equal(a, b)
    assert str(opt.state_dict()) == str(twin_opt.state_dict())


@pytest.mark.parametrize("learn_lr", ["none", "per_step"])
def test_a_compiled_function_calling_meta_loss_gives_the_second_order_gradient(learn_lr):
    """``torch.compile`` (AOT autograd) of a function calling ``meta_loss``: the meta-gradient of
    the generic path, not silently the first-order one (AOT tracing drops the inner loop's
    create_graph terms of the reference's nested autograd.grad, the no-extension route)."""
    learner, batch = _setup(learn_lr)
    generic, _ = _setup(learn_lr)
    generic.fused_spec = None
    torch.compile(learner.meta_loss, backend="aot_eager")(batch).backward()
    generic.meta_loss(batch).backward()
    for (name, p), q in zip(learner.named_parameters(), generic.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-14, msg=name)


@pytest.fixture
def engine_free_calls(monkeypatch):
    """What each ``_C.backward_alone`` call (the engine-free ``.backward()``) returned."""
    from maml_ext import _extension

    calls, alone = [], _extension.C.backward_alone

    def spy(loss):
        calls.append(alone(loss))
        return calls[-1]

    monkeypatch.setattr(_extension.C, "backward_alone", spy)
    return calls


@requires_extension
def test_a_plain_backward_runs_without_the_engine_and_stores_the_engines_bits(engine_free_calls):
    learner, batch = _setup()
    loss = learner.meta_loss(batch)
    assert type(loss) is ops.MetaLoss
    torch.autograd.backward(loss)  # torch's engine (the node's own store)
    expected = _grads(learner)
    assert engine_free_calls == []
    _zero(learner)
    loss = learner.meta_loss(batch)
    loss.backward()
    assert engine_free_calls == [True]
    assert all(torch.equal(p.grad, e) for p, e in zip(learner.parameters(), expected))
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()  # the graph was freed as the engine frees it
    assert engine_free_calls == [True, False]
    held = [p.grad for p in learner.parameters()]  # an existing .grad is added to in place
    learner.meta_loss(batch).backward()
    assert all(p.grad is h and torch.equal(h, e + e) for p, h, e in zip(learner.parameters(), held, expected))


@requires_extension
def test_whatever_needs_the_engine_takes_it(engine_free_calls, monkeypatch):
    """Arguments, hooks on the loss or a parameter, a retained graph, anomaly mode, the profiler,
    compiled autograd, a parameter another node also feeds: ``backward_alone`` does nothing (it
    returns False or is not called) and the engine gives what it always gave."""
    import sys
    from types import SimpleNamespace

    from maml_ext import _extension

    learner, batch = _setup()
    learner.meta_loss(batch).backward()
    expected = _grads(learner)
    params = list(learner.parameters())
    cases = {
        "gradient": lambda loss: loss.backward(torch.tensor(2.0, dtype=torch.float64)),
        "retain_graph": lambda loss: loss.backward(retain_graph=True),
        "inputs": lambda loss: loss.backward(inputs=params),
        "retain_grad": lambda loss: (loss.retain_grad(), loss.backward()),
        "loss hook": lambda loss: (loss.register_hook(lambda g: g * 2.0), loss.backward()),
        "node hook": lambda loss: (loss.grad_fn.register_prehook(lambda go: None), loss.backward()),
        "anomaly mode": lambda loss: _in(torch.autograd.set_detect_anomaly(True), loss.backward),
        "profiler": lambda loss: _in(torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]),
                                     loss.backward),
    }
    scale = {"gradient": 2.0, "loss hook": 2.0}
    for name, backward in cases.items():
        engine_free_calls.clear()
        _zero(learner)
        loss = learner.meta_loss(batch)
        backward(loss)
        assert True not in engine_free_calls, name
        assert all(torch.equal(p.grad, scale.get(name, 1.0) * e) for p, e in zip(params, expected)), name
        if name == "retain_grad":
            assert loss.grad.item() == 1.0
    _zero(learner)
    handle = params[3].register_hook(lambda g: g * 3.0)
    learner.meta_loss(batch).backward()
    handle.remove()
    assert engine_free_calls[-1] is False and torch.equal(params[3].grad, 3.0 * expected[3])
    _zero(learner)
    regularised = learner.meta_loss(batch)
    penalty = (params[0] * params[0]).sum()
    assert _extension.C.backward_alone(regularised) is False  # params[0]'s accumulator is shared
    (regularised + penalty).backward()
    torch.testing.assert_close(params[0].grad, expected[0] + 2.0 * params[0].detach(), rtol=1e-14, atol=0)
    engine_free_calls.clear()
    monkeypatch.setitem(sys.modules, "torch._dynamo.compiled_autograd", SimpleNamespace(compiled_autograd_enabled=True))
    _zero(learner)
    learner.meta_loss(batch).backward()
    assert engine_free_calls == [] and all(torch.equal(p.grad, e) for p, e in zip(params, expected))


def _in(context, fn):
    with context:
        fn()


def test_the_loss_prints_formats_and_pickles_as_a_plain_tensor():
    import io
    import pickle

    learner, batch = _setup()
    loss = learner.meta_loss(batch)
    plain = loss * 1.0
    value = loss.item()
    assert repr(loss) == repr(plain).replace("MulBackward0", loss.grad_fn.name()) and str(loss) == repr(loss)
    assert f"{loss:.3f}" == f"{value:.3f}" and f"{loss}" == f"{plain}" == str(value)
    buffer = io.BytesIO()
    torch.save(loss, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert type(loaded) is torch.Tensor and loaded.item() == value and loaded.requires_grad
    assert type(pickle.loads(pickle.dumps(loss))) is torch.Tensor
    assert type(loss.detach()) is torch.Tensor and type(loss + 1) is torch.Tensor
