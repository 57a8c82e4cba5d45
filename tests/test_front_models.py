"""Models users write (docs/models.md's table, one case per row): the batched ``meta_loss`` and a
per-task ``clone()`` loop give a per-task ``torch.autograd`` reference's meta-gradient in float64,
and the user's module, its parameters and ``state_dict()`` are left exactly as they were."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from maml_ext.algorithms import MAML
from maml_ext.tasks import TaskBatch

from _model_checks import assert_untouched, clone_meta_loss, meta_grads, one_task_loss, snapshot

LR, STEPS, TASKS, K = 0.3, 2, 3, 4


# ----- models users write ------------------------------------------------------------------
class LSTMRegressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(1, 5, batch_first=True)
        self.head = nn.Linear(5, 1)

    def forward(self, x):
        h, _ = self.lstm(x)
        return self.head(h[:, -1])


class TiedEmbeddings(nn.Module):
    def __init__(self, vocab: int = 7, dim: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.hidden = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab)
        self.out.weight = self.embed.weight  # tied input/output embeddings

    def forward(self, tokens):
        return self.out(torch.tanh(self.hidden(self.embed(tokens))))


def frozen_features() -> nn.Module:
    model = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 1))
    model[0].requires_grad_(False)  # a frozen feature extractor; 2 is meta-learned, 4 (adapt=) adapted
    return model


class ResBlockBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin1, self.bn1 = nn.Linear(4, 6), nn.BatchNorm1d(6)
        self.lin2, self.bn2 = nn.Linear(6, 6), nn.BatchNorm1d(6)
        self.skip, self.head = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.bn1(self.lin1(x)))
        return self.head(torch.relu(self.bn2(self.lin2(h)) + self.skip(x)))


class UnusedBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(2, 5), nn.Linear(5, 1)
        self.aux_head = nn.Linear(5, 3)  # defined, never called

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)))


class WithAux(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(2, 5), nn.Linear(5, 1)

    def forward(self, x):
        h = torch.tanh(self.body(x))
        return self.head(h), h.pow(2).mean()  # (prediction, auxiliary)


class Standardised(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([0.5, -1.0]))
        self.net = nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 1))

    def forward(self, x):
        return self.net(x - self.shift)


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(2, 1), nn.Linear(2, 1)

    def forward(self, x):
        return self.a(x) if x.sum() > 0 else self.b(x).tanh()  # Python control flow on the data


def reused_module() -> nn.Module:
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3))
    model[4] = model[0]  # the same layer twice
    return model


def dropout_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 1))


def per_task_huber(out, y):
    return F.huber_loss(out, y, reduction="none", delta=0.5).flatten(1).mean(1)


# ----- data ------------------------------------------------------------------------------------
def regression(x_shape=(2,), out=1):
    g = torch.Generator().manual_seed(3)
    return TaskBatch(*(torch.randn(TASKS, K, *shape, generator=g, dtype=torch.float64)
                       for shape in (x_shape, (out,), x_shape, (out,))))


def classification(inputs, classes):
    g = torch.Generator().manual_seed(4)
    labels = lambda: torch.randint(0, classes, (TASKS, K), generator=g)  # noqa: E731
    return TaskBatch(inputs(g), labels(), inputs(g), labels())


@dataclass
class Case:
    build: Callable[[], nn.Module]
    batch: Callable[[], TaskBatch]
    loss: str | Callable = "mse"
    options: dict = field(default_factory=dict)
    select: Callable = lambda out: out  # noqa: E731
    random: bool = False  # dropout: the per-task reference draws masks in the same order


CASES = {
    "lstm": Case(LSTMRegressor, lambda: regression((3, 1))),
    "tied": Case(TiedEmbeddings, lambda: classification(lambda g: torch.randint(0, 7, (TASKS, K), generator=g), 7),
                 "cross_entropy"),
    "shared_module": Case(reused_module, lambda: regression((3,), 3)),
    "frozen": Case(frozen_features, regression),
    "frozen_adapt_head": Case(frozen_features, regression, options={"adapt": ["4"]}),
    "unused": Case(UnusedBranch, regression),
    "buffers": Case(Standardised, regression),
    "batchnorm": Case(ResBlockBN, lambda: classification(
        lambda g: torch.randn(TASKS, K, 4, generator=g, dtype=torch.float64), 3), "cross_entropy"),
    "dropout": Case(dropout_mlp, regression, random=True),
    "control_flow": Case(DataDependent, regression),
    "tuple_output": Case(WithAux, regression, select=lambda out: out[0]),
    "dict_output": Case(lambda: OutputDict(WithAux()), regression, options={"output": "y"},
                        select=lambda out: out["y"]),
    "custom_loss": Case(UnusedBranch, regression, per_task_huber),
}


class OutputDict(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        y, aux = self.inner(x)
        return {"aux": aux, "y": y}


# ----- the per-task torch.autograd reference -------------------------------------------------
def reference_meta_loss(model, batch, case, adapt, task_major):
    """Plain per-task MAML with torch.autograd on a copy of the module (batch statistics in
    BatchNorm, as in the original MAML); gradients flow to the user's own parameters."""
    twin = copy.deepcopy(model)
    torch.func.replace_all_batch_norm_modules_(twin)
    named = dict(model.named_parameters())
    loss = one_task_loss(case.loss)
    fast = [{n: named[n] for n in adapt} for _ in range(TASKS)]

    def f(params, x):
        return case.select(functional_call(twin, {**named, **params}, (x,)))

    def step(t):
        value = loss(f(fast[t], batch.x_support[t]), batch.y_support[t])
        grads = torch.autograd.grad(value, list(fast[t].values()), create_graph=True, allow_unused=True)
        fast[t] = {n: p if g is None else p - LR * g for (n, p), g in zip(fast[t].items(), grads)}

    def query(t):
        return loss(f(fast[t], batch.x_query[t]), batch.y_query[t])

    if task_major:  # clone() loop order: task by task
        losses = []
        for t in range(TASKS):
            for _ in range(STEPS):
                step(t)
            losses.append(query(t))
    else:  # batched order: each step for every task, then the queries
        for _ in range(STEPS):
            for t in range(TASKS):
                step(t)
        losses = [query(t) for t in range(TASKS)]
    return torch.stack(losses).mean()


def assert_same(got, want):
    for a, b in zip(got, want):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("trace", [None, True, False])  # recorded forward: torch.nn models only / all / none
@pytest.mark.parametrize("name", sorted(CASES))
def test_meta_gradient_equals_per_task_autograd(name, trace):
    case = CASES[name]
    torch.manual_seed(0)
    model = case.build().double()
    batch = case.batch()
    before = snapshot(model)
    learner = MAML(model, lr=LR, steps=STEPS, loss=case.loss, trace=trace, **case.options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the per-task-loop notice has its own test
        for task_major, run in ((False, lambda: learner.meta_loss(batch)),
                                (True, lambda: clone_meta_loss(learner, batch, one_task_loss(case.loss), STEPS))):
            torch.manual_seed(1)
            got = run()
            torch.manual_seed(1)
            want = reference_meta_loss(model, batch, case, learner.adapt_names, task_major)
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
            assert_same(meta_grads(model, got), meta_grads(model, want))
            assert_untouched(model, before)
    if name == "unused":
        assert meta_grads(model, learner.meta_loss(batch))[-1] is None


def test_vmap_fallback_is_announced_once_and_only_when_needed():
    torch.manual_seed(0)
    learner = MAML(LSTMRegressor().double(), lr=LR, steps=1)
    batch = regression((3, 1))
    with pytest.warns(UserWarning, match="vmap cannot batch LSTMRegressor.*exact per-task loop") as seen:
        learner.meta_loss(batch)
        learner.meta_loss(batch)
    assert len(seen) == 1 and learner.functional.vmap_ok is False
    plain = MAML(frozen_features().double(), lr=LR, steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain.meta_loss(regression())
    assert plain.functional.vmap_ok is True


def test_a_model_error_is_the_models_own_not_a_functorch_one():
    # A first layer the entry check cannot see (Identity first): the error comes from the forward.
    learner = MAML(nn.Sequential(nn.Identity(), nn.Linear(3, 1)).double(), lr=LR)
    with pytest.raises(RuntimeError, match="mat1 and mat2 shapes cannot be multiplied") as info:
        learner.meta_loss(regression((2,)))
    assert "vmap" not in str(info.value)


def test_output_rule_tuple_dict_and_bad_selector():
    torch.manual_seed(0)
    batch = regression()
    tuple_learner = MAML(WithAux().double(), lr=LR)
    task = tuple_learner.clone()
    out = task(batch.x_query[0])
    assert out.shape == (K, 1)  # the prediction, no task dimension left over
    torch.testing.assert_close(out, tuple_learner.model(batch.x_query[0])[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"output: the model returns a dict \(keys \['aux', 'y'\]\); pass output=<key>"):
        MAML(OutputDict(WithAux()).double(), lr=LR).meta_loss(batch)
    by_callable = MAML(OutputDict(WithAux()).double(), lr=LR, output=lambda out: out["y"])
    assert by_callable.clone()(batch.x_query[0]).shape == (K, 1)
    with pytest.raises(ValueError, match="output: expected None, an index, a dict key or a callable, got float"):
        MAML(WithAux(), output=1.5)
    with pytest.raises(ValueError, match="output: expected the selected model output to be a tensor, got dict"):
        MAML(OutputDict(WithAux()).double(), lr=LR, output=lambda out: out).meta_loss(batch)


@pytest.mark.parametrize("fused", [None, False], ids=["fused", "generic"])
def test_targets_must_match_the_outputs_shape(fused):
    from maml_ext.models.mlp import build

    torch.manual_seed(0)
    learner = MAML(build(2, 1, hidden=(4,)).double(), lr=LR, fused=fused)
    assert (learner.fused_spec is not None) == (fused is None)
    batch = regression()
    flat = TaskBatch(batch.x_support[:, :TASKS], batch.y_support[:, :TASKS, 0],
                     batch.x_query[:, :TASKS], batch.y_query[:, :TASKS, 0])  # [T, K] against [T, K, 1], T == K
    with pytest.raises(ValueError, match=r"y: expected"):
        learner.meta_loss(flat)


def test_adapt_accepts_one_element_losses():
    torch.manual_seed(0)
    learner = MAML(WithAux().double(), lr=LR)
    batch = regression()
    a, b = learner.clone(), learner.clone()
    a.adapt(F.mse_loss(a(batch.x_support[0]), batch.y_support[0]).reshape(1, 1))
    b.adapt(F.mse_loss(b(batch.x_support[0]), batch.y_support[0]))
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("fused", [None, False], ids=["fused", "generic"])
def test_bad_batches_are_named_before_any_work(fused):
    from maml_ext.models.mlp import build

    learner = MAML(build(2, 1, hidden=(4,)).double(), lr=LR, fused=fused)
    good = regression()
    cases = [
        (TaskBatch(good.x_support.float(), good.y_support, good.x_query, good.y_query), TypeError,
         r"x_support: expected dtype torch.float64 like the model's parameters, got torch.float32"),
        (TaskBatch(good.x_support, good.y_support, good.x_query[:2], good.y_query), ValueError,
         r"x_query: expected \[T=3, K, ...\] with the K of x_query, got shape \(2, 4, 2\)"),
        (TaskBatch(good.x_support, good.y_support[:, :2], good.x_query, good.y_query), ValueError,
         r"y_support: expected \[T=3, K, ...\] with the K of x_support, got shape \(3, 2, 1\)"),
        (TaskBatch(good.x_support, good.y_support, good.x_query, good.y_query.to("meta")), RuntimeError,
         r"y_query: expected device cpu like the model's parameters, got meta"),
    ]
    for batch, kind, message in cases:
        with pytest.raises(kind, match=message):
            learner.meta_loss(batch)


@pytest.mark.parametrize("algorithm", ["anil", "bmaml", "fomaml", "maml", "maml++", "metasgd", "platipus", "pretrain", "reptile"])
def test_every_learner_leaves_the_users_module_untouched(algorithm):
    from maml_ext.algorithms import ALGORITHMS, build_algorithm

    assert algorithm in ALGORITHMS
    torch.manual_seed(0)
    model = ResBlockBN().double()
    model.out = model.head  # a second name for the head: shared parameters too
    before = snapshot(model)
    batch = CASES["batchnorm"].batch()
    learner = build_algorithm(algorithm, model, lr=LR, steps=2, loss="cross_entropy")
    learner.meta_loss(batch).backward()
    learner.eval()
    learner.evaluate(batch, steps=2)
    learner.train()
    assert_untouched(model, before)
