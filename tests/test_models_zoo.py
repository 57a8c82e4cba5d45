"""A zoo of models researchers write that tests/test_front_models.py does not cover (recurrent
layers in every layout, attention, integer inputs, parametrizations, in-place activations, custom
autograd functions, user hooks, float32, channels_last convolutions, frozen and other
normalisations): each runs through ``MAML`` (second order with 1 and 3 inner steps, first order), batched
``meta_loss`` and a per-task ``clone()`` loop, exactly as a plain per-task ``torch.autograd`` loop
on a copy of the module (float64, ``rtol=1e-10``: query loss and meta-gradient), and leaves the
user's module, its ``state_dict()`` and its attributes as they were. Models that cannot work fail
at once with a message naming the module and what to do (docs/models.md)."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.fx.experimental.proxy_tensor import make_fx
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils import parametrizations
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from maml_ext.algorithms import MAML, whole
from maml_ext.algorithms.trace import trusted
from maml_ext.tasks import TaskBatch
from _model_checks import assert_untouched, clone_meta_loss, meta_grads, one_task_loss, snapshot

LR, TASKS, K, SEQ = 0.2, 2, 3, 4


# ----- recurrent ---------------------------------------------------------------------------------
class Recurrent(nn.Module):
    """An RNN / GRU / LSTM regressor on the last time step; ``[K, SEQ, 1]`` inputs either way."""

    def __init__(self, cell: type[nn.RNNBase], batch_first: bool, **options) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.rnn = cell(1, 3, batch_first=batch_first, **options)
        out = options.get("proj_size") or 3
        self.head = nn.Linear(out * (2 if options.get("bidirectional") else 1), 1)

    def forward(self, x):
        h, _ = self.rnn(x if self.batch_first else x.transpose(0, 1))
        return self.head(h[:, -1] if self.batch_first else h[-1])


class Packed(nn.Module):
    """Variable-length sequences: a packed GRU, the last valid step of each sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.head = nn.GRU(1, 3, batch_first=True), nn.Linear(3, 1)

    def forward(self, x):
        lengths = torch.tensor([SEQ - i % SEQ for i in range(x.shape[0])])
        h, lengths = pad_packed_sequence(
            self.rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))[0], batch_first=True)
        return self.head(h[torch.arange(x.shape[0]), lengths - 1])


# ----- attention ---------------------------------------------------------------------------------
class SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(1, 4)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        h = self.inp(x)
        return self.head(self.attn(h, h, h, need_weights=False)[0].mean(1))


class OwnAttention(nn.Module):
    """Single-head attention written with F.scaled_dot_product_attention."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.head = nn.Linear(1, 12), nn.Linear(4, 1)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.head(F.scaled_dot_product_attention(q, k, v).mean(1))


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(1, 4)
        self.layer = nn.TransformerEncoderLayer(4, 2, dim_feedforward=6, dropout=0.0, batch_first=True)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        return self.head(self.layer(self.inp(x)).mean(1))


# ----- integer inputs ----------------------------------------------------------------------------
class BagOfWords(nn.Module):
    def __init__(self, padding_idx: int | None = None) -> None:
        super().__init__()
        self.embed = nn.Embedding(6, 4, padding_idx=padding_idx)
        self.head = nn.Linear(4, 1)

    def forward(self, tokens):
        return self.head(torch.tanh(self.embed(tokens).mean(1)))


# ----- functions and hooks of the user's own -----------------------------------------------------
class Cube(torch.autograd.Function):
    """x³ with a hand-written, twice-differentiable backward (old style: ``forward(ctx, ...)``)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 3 * x ** 2


class CubeVmappable(torch.autograd.Function):
    """The same as a functorch-ready function (``setup_context``, ``generate_vmap_rule``)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x ** 3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 3 * x ** 2


class WithFunction(nn.Module):
    def __init__(self, fn: type[torch.autograd.Function]) -> None:
        super().__init__()
        self.fn = fn
        self.body, self.head = nn.Linear(2, 4), nn.Linear(4, 1)

    def forward(self, x):
        return self.head(self.fn.apply(torch.tanh(self.body(x))))


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))


def hooked() -> nn.Module:
    model = mlp()
    model[2].register_forward_pre_hook(lambda m, args: (args[0] * 2,))
    model[2].register_forward_hook(lambda m, args, out: out + 0.5)
    return model


def parametrized(kind: str) -> nn.Module:
    model = mlp()
    getattr(parametrizations, kind)(model[2])
    return model


# ----- convolutions and normalisations -----------------------------------------------------------
def conv(norm: Callable[[], nn.Module] | None = None, channels_last: bool = False) -> nn.Module:
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), norm() if norm else nn.Identity(), nn.ReLU(inplace=True),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    return model.to(memory_format=torch.channels_last) if channels_last else model


def weight_norm_conv() -> nn.Module:
    """A weight-normalised convolution between in-place ReLUs: the recorded graph's relaid sums
    (docs/models.md) and a kernel that reads its gradient as contiguous in the same graph."""
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3, padding=1),
                          nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    parametrizations.weight_norm(model[2])
    return model


def frozen_batchnorm() -> nn.Module:
    model = conv(lambda: nn.BatchNorm2d(4))
    model[1].requires_grad_(False)  # a frozen affine, batch statistics still computed per task
    return model


def relu_inplace(fusable: bool) -> nn.Module:
    """A plain ReLU MLP takes the fused op; a Tanh layer more keeps it on the generic path."""
    more = [] if fusable else [nn.Linear(4, 4), nn.Tanh()]
    return nn.Sequential(nn.Linear(2, 4), nn.ReLU(inplace=True), *more, nn.Linear(4, 1))


# ----- data --------------------------------------------------------------------------------------
def data(x: Callable[[torch.Generator], torch.Tensor], classes: int = 0) -> Callable[[], TaskBatch]:
    def make() -> TaskBatch:
        g = torch.Generator().manual_seed(5)
        y = (lambda: torch.randint(0, classes, (TASKS, K), generator=g)) if classes else (
            lambda: torch.randn(TASKS, K, 1, generator=g, dtype=torch.float64))
        return TaskBatch(x(g), y(), x(g), y())
    return make


def normal(*shape: int) -> Callable[[], TaskBatch]:
    return data(lambda g: torch.randn(TASKS, K, *shape, generator=g, dtype=torch.float64))


sequences, vectors, images = normal(SEQ, 1), normal(2), data(lambda g: torch.randn(TASKS, K, 2, 5, 5, generator=g,
                                                                                  dtype=torch.float64), 3)
tokens = data(lambda g: torch.randint(0, 6, (TASKS, K, SEQ), generator=g))


@dataclass
class Model:
    build: Callable[[], nn.Module]
    batch: Callable[[], TaskBatch]
    loss: str = "mse"
    eval: bool = False  # the module in eval mode (BatchNorm: batch statistics all the same)


ZOO = {
    "rnn_seq_first_2_layers": Model(lambda: Recurrent(nn.RNN, False, num_layers=2), sequences),
    "gru_batch_first": Model(lambda: Recurrent(nn.GRU, True), sequences),
    "gru_seq_first_bidirectional": Model(lambda: Recurrent(nn.GRU, False, bidirectional=True), sequences),
    "lstm_2_layers_bidirectional": Model(lambda: Recurrent(nn.LSTM, True, num_layers=2, bidirectional=True), sequences),
    "lstm_projections_seq_first": Model(lambda: Recurrent(nn.LSTM, False, proj_size=2), sequences),
    "gru_packed_sequences": Model(Packed, sequences),
    "multihead_attention": Model(SelfAttention, sequences),
    "multihead_attention_eval_mode": Model(SelfAttention, sequences, eval=True),
    "own_scaled_dot_product_attention": Model(OwnAttention, sequences),
    "transformer_encoder_layer": Model(Encoder, sequences),
    "transformer_encoder_layer_eval_mode": Model(Encoder, sequences, eval=True),
    "embedding_bag_of_words": Model(BagOfWords, tokens),
    "embedding_padding_idx": Model(lambda: BagOfWords(padding_idx=0), tokens),
    "orthogonal_parametrization": Model(lambda: parametrized("orthogonal"), vectors),
    "weight_norm_parametrization": Model(lambda: parametrized("weight_norm"), vectors),
    "relu_inplace": Model(lambda: relu_inplace(False), vectors),
    "relu_inplace_fused": Model(lambda: relu_inplace(True), vectors),
    "autograd_function": Model(lambda: WithFunction(Cube), vectors),
    "autograd_function_vmappable": Model(lambda: WithFunction(CubeVmappable), vectors),
    "forward_hooks": Model(hooked, vectors),
    "conv_weight_norm_after_inplace_relu": Model(weight_norm_conv, images, "cross_entropy"),
    "conv_channels_last": Model(lambda: conv(channels_last=True), images, "cross_entropy"),
    "batchnorm_frozen": Model(frozen_batchnorm, images, "cross_entropy"),
    "batchnorm_eval_mode": Model(lambda: conv(lambda: nn.BatchNorm2d(4)), images, "cross_entropy", eval=True),
    "groupnorm": Model(lambda: conv(lambda: nn.GroupNorm(2, 4)), images, "cross_entropy"),
    "instancenorm": Model(lambda: conv(lambda: nn.InstanceNorm2d(4, affine=True)), images, "cross_entropy"),
    "instancenorm_running_stats": Model(lambda: conv(lambda: nn.InstanceNorm2d(4, affine=True, track_running_stats=True)),
                                        images, "cross_entropy"),
    "layernorm": Model(lambda: nn.Sequential(nn.Linear(2, 4), nn.LayerNorm(4), nn.GELU(), nn.Linear(4, 1)), vectors),
}


# ----- the per-task torch.autograd reference ---------------------------------------------------
def reference_meta_loss(model: nn.Module, batch: TaskBatch, loss: str, adapt: list[str], steps: int,
                        first_order: bool) -> torch.Tensor:
    """Plain per-task MAML with torch.autograd on a copy of the module: BatchNorm on batch
    statistics (the original MAML), every forward from the module's buffers as they are, attention
    on its math kernel (the only one with a double backward); gradients flow to the user's own
    parameters (first order: the inner gradients detached)."""
    twin = copy.deepcopy(model)
    torch.func.replace_all_batch_norm_modules_(twin)
    named = dict(model.named_parameters())
    buffers = dict(twin.named_buffers())
    loss_fn = one_task_loss(loss)

    def f(params, x):
        with sdpa_kernel(SDPBackend.MATH):
            return functional_call(twin, {**{n: b.clone() for n, b in buffers.items()}, **named, **params}, (x,))

    losses = []
    for t in range(TASKS):
        fast = {n: named[n] for n in adapt}
        for _ in range(steps):
            grads = torch.autograd.grad(loss_fn(f(fast, batch.x_support[t]), batch.y_support[t]), list(fast.values()),
                                        create_graph=not first_order, allow_unused=True)
            fast = {n: p if g is None else p - LR * g for (n, p), g in zip(fast.items(), grads)}
        losses.append(loss_fn(f(fast, batch.x_query[t]), batch.y_query[t]))
    return torch.stack(losses).mean()


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal to 1e-10 relative to the tensor's largest entry (an entry near zero is a difference of
    the others' rounding, as between two orders of the same sums)."""
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10 * float(want.detach().abs().max()) + 1e-14)


def public_attributes(model: nn.Module) -> list[list[tuple[str, object]]]:
    """Each module's public attributes: plain values as they are, other objects by identity."""
    plain = (bool, int, float, str, tuple, type(None))
    return [[(k, v if isinstance(v, plain) else id(v)) for k, v in vars(m).items() if k[0] != "_"]
            for m in model.modules()]


def runs() -> list:
    """Each model: MAML with 1 and 3 steps, FOMAML with 1, on the default path (torch.nn-only
    models recorded, others step by step); a model with its own forward also recorded
    (``trace=True``)."""
    found = []
    for name in sorted(ZOO):
        model = ZOO[name].build()
        # Recurrent layers run per task either way (no vmap rule): recording them only costs time.
        own_forward = not trusted(model) and not any(isinstance(m, nn.RNNBase) for m in model.modules())
        for steps, first_order, trace in [(1, False, None), (3, False, None), (1, True, None)] + own_forward * [(3, False, True)]:
            label = f"{name}-{'fomaml' if first_order else 'maml'}{steps}{'-trace' if trace else ''}"
            found.append(pytest.param(name, steps, first_order, trace, id=label))
    return found


@pytest.mark.parametrize(("name", "steps", "first_order", "trace"), runs())
def test_zoo_model_equals_per_task_autograd(name, steps, first_order, trace):
    entry = ZOO[name]
    torch.manual_seed(0)
    model = entry.build().double()
    model.train(not entry.eval)
    batch = entry.batch()
    before, attributes = snapshot(model), public_attributes(model)
    learner = MAML(model, lr=LR, steps=steps, first_order=first_order, loss=entry.loss, trace=trace)
    want = reference_meta_loss(model, batch, entry.loss, learner.adapt_names, steps, first_order)
    want_grads = meta_grads(model, want)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the per-task-loop notice (RNNs) has its own test
        for got in (learner.meta_loss(batch), learner.meta_loss(batch),  # recorded, then replayed
                    clone_meta_loss(learner, batch, one_task_loss(entry.loss), steps)):
            assert_close(got, want)
            for a, b in zip(meta_grads(model, got), want_grads):
                assert (a is None) == (b is None)
                if a is not None:
                    assert_close(a, b)
    assert_untouched(model, before)
    assert public_attributes(model) == attributes


def to_float(batch: TaskBatch) -> TaskBatch:
    parts = (batch.x_support, batch.y_support, batch.x_query, batch.y_query)
    return TaskBatch(*(t.float() if t.is_floating_point() else t for t in parts))


@pytest.mark.parametrize("name", ["gru_batch_first", "conv_channels_last", "transformer_encoder_layer"])
def test_a_float32_model_equals_its_per_task_autograd_loop(name):
    """float32 end to end (the data must match the model's dtype): the reference's float32
    meta-gradient to float32 rounding, and the float64 one to the float32 model's precision."""
    entry = ZOO[name]
    torch.manual_seed(0)
    model = entry.build().float()
    batch = to_float(entry.batch())
    learner = MAML(model, lr=LR, steps=2, loss=entry.loss)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = learner.meta_loss(batch)
    want = reference_meta_loss(model, batch, entry.loss, learner.adapt_names, 2, False)
    exact = reference_meta_loss(copy.deepcopy(model).double(), entry.batch(), entry.loss, learner.adapt_names, 2, False)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=1e-6)
    for a, b in zip(meta_grads(model, got), meta_grads(model, want)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_an_adapted_padding_embedding_runs_per_task_and_says_why():
    learner = MAML(BagOfWords(padding_idx=0).double(), lr=LR)
    with pytest.warns(UserWarning, match=r"vmap cannot batch BagOfWords over tasks \(its batching rule gives a wrong "
                                         r"gradient for the adapted nn.Embedding 'embed' with padding_idx\)"):
        learner.meta_loss(tokens())
    assert learner.functional.vmap_ok is False
    head_only = MAML(BagOfWords(padding_idx=0).double(), lr=LR, adapt=["head"])  # the embedding meta-learned only
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        head_only.meta_loss(tokens())
    assert head_only.functional.vmap_ok is True


@pytest.mark.parametrize(("attribute", "value", "message"), [
    ("max_norm", 1.0, r"has max_norm=1.0, which renormalises its weight in place on every forward .* use max_norm=None"),
    ("sparse", True, r"has sparse=True: the inner loop needs dense gradients .* use sparse=False"),
])
def test_embeddings_maml_cannot_run_are_refused_at_once(attribute, value, message):
    model = BagOfWords()
    setattr(model.embed, attribute, value)
    with pytest.raises(ValueError, match=r"model: nn.Embedding 'embed' " + message):
        MAML(model.double(), lr=LR)


SOME = ["embedding_padding_idx", "forward_hooks", "gru_batch_first", "instancenorm_running_stats", "multihead_attention",
        "weight_norm_parametrization"]


@pytest.mark.parametrize("algorithm", ["anil", "metasgd"])
@pytest.mark.parametrize("name", SOME)
def test_other_learners_on_the_generic_path_are_exact(name, algorithm):
    """ANIL (the last layer adapted) and Meta-SGD (learned step sizes, at their initial value α)
    give the per-task reference's meta-loss and meta-gradient of the model's parameters."""
    from maml_ext.algorithms import build_algorithm

    entry = ZOO[name]
    torch.manual_seed(0)
    model = entry.build().double()
    batch = entry.batch()
    before = snapshot(model)
    learner = build_algorithm(algorithm, model, lr=LR, steps=2, loss=entry.loss)
    want = reference_meta_loss(model, batch, entry.loss, learner.adapt_names, 2, False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = learner.meta_loss(batch)
    assert_close(got, want)
    for a, b in zip(meta_grads(model, got), meta_grads(model, want)):
        assert (a is None) == (b is None)
        if a is not None:
            assert_close(a, b)
    assert_untouched(model, before)


@pytest.mark.parametrize("algorithm", ["maml++", "reptile", "imaml"])
@pytest.mark.parametrize("name", SOME)
def test_other_learners_leave_a_zoo_model_untouched(name, algorithm):
    from maml_ext.algorithms import build_algorithm

    entry = ZOO[name]
    torch.manual_seed(0)
    model = entry.build().double()
    batch = entry.batch()
    before, attributes = snapshot(model), public_attributes(model)
    learner = build_algorithm(algorithm, model, lr=LR, steps=2, loss=entry.loss)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        learner.meta_loss(batch).backward()
        learner.eval()
        learner.evaluate(batch, steps=2)
    learner.train()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    assert_untouched(model, before)
    assert public_attributes(model) == attributes


def weight_norm_backward_of_a_relaid_sum(after: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., tuple]:
    """A gradient accumulated onto zeros from a transposed product (``_drop_identities`` drops the
    addition, so the sum is relaid: column-major), ``after`` applied, read by CPU
    ``_weight_norm_interface_backward``, which reads it as contiguous without checking."""
    aten = torch.ops.aten

    def f(v, g, y, z):
        w, norms = aten._weight_norm_interface(v, g, 0)
        grad = after(aten.add.Tensor(aten.zeros_like(w), aten.t(aten.mm(y, z))))
        return aten._weight_norm_interface_backward(grad, v, g, norms, 0)
    return f


@pytest.mark.parametrize("after", [lambda t: t, torch.ops.aten.neg.default], ids=["read_directly", "read_after_neg"])
def test_a_recorded_graph_gives_layout_sensitive_kernels_their_recorded_layout(after):
    """No zoo model has such a reader (docs/models.md): a graph that does, recorded, simplified
    and lowered as the generic path does, equals running it (bitwise: same operators)."""
    f = weight_norm_backward_of_a_relaid_sum(after)
    g = torch.Generator().manual_seed(0)
    inputs = tuple(torch.randn(*shape, generator=g, dtype=torch.float64) for shape in [(4, 3), (4, 1), (3, 2), (2, 4)])
    gm = whole.simplify_whole(make_fx(f)(*inputs))
    got, want = whole.lower(gm, inputs)(*inputs), f(*inputs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
