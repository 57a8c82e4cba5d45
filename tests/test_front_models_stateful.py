"""Models whose forward writes into the module: torch's weight/spectral normalisation, a layer
that keeps its output.

The deprecated ``torch.nn.utils.weight_norm`` / ``spectral_norm`` hooks store the computed weight
as a plain module attribute on every call (under ``vmap`` a batched tensor that outlives the call),
and spectral normalisation in training mode updates its power-iteration vectors (buffers) in
place; research code keeps activations (``self.last_output = out``). maml_ext runs such a model
exactly, every forward starting from the module as the user left it, and leaves the module, its
buffers and its attributes unchanged (docs/models.md)."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.utils import parametrizations

from maml_ext.algorithms import MAML
from maml_ext.tasks import TaskBatch

LR, STEPS, TASKS, K = 0.3, 2, 3, 4

class KeepsItsOutput(nn.Linear):
    """A layer that keeps its last output for inspection, as research code does."""

    def forward(self, x):
        self.last_output = super().forward(x)
        return self.last_output


class KeepsItsOutputs(nn.Linear):
    """Activations kept in containers: a list appended to, a list replaced, a dict filled."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.acts, self.cache, self.named = [], None, {}

    def forward(self, x):
        out = super().forward(x)
        self.acts.append(out)
        self.cache = [out]
        self.named["out"] = (out,)
        return out


with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated
    MODELS = {
        "keeps_its_output": lambda: KeepsItsOutput(2, 5),
        "keeps_its_outputs_in_containers": lambda: KeepsItsOutputs(2, 5),
        "weight_norm_hook": lambda: torch.nn.utils.weight_norm(nn.Linear(2, 5)),
        "spectral_norm_hook": lambda: torch.nn.utils.spectral_norm(nn.Linear(2, 5)),
        "spectral_norm_parametrization": lambda: parametrizations.spectral_norm(nn.Linear(2, 5)),
    }


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return nn.Sequential(MODELS[name](), nn.Tanh(), nn.Linear(5, 1)).double()


def regression() -> TaskBatch:
    g = torch.Generator().manual_seed(3)
    return TaskBatch(*(torch.randn(TASKS, K, n, generator=g, dtype=torch.float64) for n in (2, 1, 2, 1)))


def reference_meta_loss(model: nn.Module, batch: TaskBatch) -> torch.Tensor:
    """Per-task torch.autograd MAML; each forward gets copies of the module's buffers (it starts
    from the buffers as they are) and the module's tensor attributes are put back after it."""
    params = dict(model.named_parameters())
    saved = [(vars(m), dict(vars(m))) for m in model.modules()]

    def f(p, x):
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        try:
            return functional_call(model, {**buffers, **p}, (x,))
        finally:
            for d, before in saved:
                d.clear()
                d.update(before)

    losses = []
    for t in range(TASKS):
        fast = dict(params)
        for _ in range(STEPS):
            grads = torch.autograd.grad(F.mse_loss(f(fast, batch.x_support[t]), batch.y_support[t]),
                                        list(fast.values()), create_graph=True)
            fast = {n: p - LR * g for (n, p), g in zip(fast.items(), grads)}
        losses.append(F.mse_loss(f(fast, batch.x_query[t]), batch.y_query[t]))
    return torch.stack(losses).mean()


def module_state(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every tensor the module holds: parameters, buffers and plain tensor attributes."""
    return [(f"{name}.{k}", v) for name, m in model.named_modules()
            for k, v in {**m._parameters, **m._buffers, **vars(m)}.items() if isinstance(v, torch.Tensor)]


def public_attributes(model: nn.Module) -> list[tuple[str, int, object]]:
    """Each module's public attributes: name, object id and (lists and dicts) contents' ids."""
    return [(k, id(v), [id(e) for e in (v.values() if isinstance(v, dict) else v)]
             if isinstance(v, (list, dict)) else None)
            for m in model.modules() for k, v in vars(m).items() if k[0] != "_"]


@pytest.mark.parametrize("trace", [None, True, False])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_normalised_layers_are_exact_and_leave_the_module_as_it_was(name, trace):
    model = build(name)
    batch = regression()
    before = [(n, v, v.detach().clone()) for n, v in module_state(model)]
    attributes = public_attributes(model)
    learner = MAML(model, lr=LR, steps=STEPS, trace=trace)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the per-task-loop notice (spectral norm's out= under vmap)
        first, second = learner.meta_loss(batch), learner.meta_loss(batch)
    assert public_attributes(model) == attributes  # containers left as they were
    want = reference_meta_loss(model, batch)
    for got in (first, second):  # the second call starts from the same module as the first
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        trainable = list(model.parameters())
        for a, b in zip(torch.autograd.grad(got, trainable, retain_graph=True),
                        torch.autograd.grad(want, trainable, retain_graph=True)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    after = dict(module_state(model))
    assert list(after) == [n for n, _, _ in before]
    for n, obj, value in before:
        assert after[n] is obj, n  # the same tensor object (no batched tensor left in a slot)
        assert torch.equal(obj.detach(), value), n  # with the same values (buffers not updated)
    if not name.endswith("_parametrization"):  # torch pickles no parametrized module, only its state_dict()
        torch.save(model, io.BytesIO())  # a batched tensor left in the module could not be saved
