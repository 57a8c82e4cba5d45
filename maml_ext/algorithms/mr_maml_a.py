"""MR-MAML(A) (Yin et al., "Meta-Learning without Memorization", ICLR 2020): MAML with an
information bottleneck on the activations.

A meta-learned stochastic encoder, never adapted, maps each input x to q(z|x) = N(μ(x), σ(x)²);
z is drawn per input (reparameterised) and a head is adapted on (z, y) of the support set by the
usual inner loop. The meta-objective adds β · KL(q(z*|x*) ‖ N(0, I)) on the query inputs x*
(the paper's information bottleneck I(x*; z*), its eq. for MR-MAML(A)): the less the encoder
tells about an input, the less of the task can be read from the query input alone, so the head
has to take it from the support set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maml_ext.tasks import TaskBatch

from ._checks import check_examples, first_layer
from .base import Params
from .clone import TaskClone
from .functional import FunctionalModel
from .maml import MAML
from .platipus import gaussian_kl

# How the encoder's second half of features (r) gives the standard deviation and log-variance.
def _softplus_scale(r: Tensor) -> tuple[Tensor, Tensor]:
    std = F.softplus(r)
    return std, 2.0 * std.log()


SCALES: dict[str, Callable[[Tensor], tuple[Tensor, Tensor]]] = {
    "softplus": _softplus_scale,  # the paper's stochastic layer
    "logvar": lambda r: ((0.5 * r).exp(), r),
}


def _submodule(model: nn.Module, name: object, role: str) -> nn.Module:
    """The submodule ``name`` (a ``"0."``-style prefix is accepted) playing ``role``."""
    children = [n for n, _ in model.named_children()]
    if not isinstance(name, str) or not name.rstrip("."):
        raise ValueError(f"{role}: expected the name of a submodule of the model (its children: {children}), got {name!r}")
    try:
        module = model.get_submodule(name.rstrip("."))
    except AttributeError:
        raise ValueError(f"{role}={name!r} is not a submodule of {type(model).__name__} (its children: {children}); "
                         "mr-maml-a needs a model with an encoder and a head submodule") from None
    if next(module.parameters(), None) is None:
        raise ValueError(f"{role}={name!r} has no parameters")
    return module


def _no_buffers() -> tuple[dict[str, Tensor], None]:
    return {}, None


class MRMAMLA(MAML):
    """MR-MAML(A): a stochastic, meta-learned encoder and a head adapted on its samples.

    The model is any ``nn.Module`` with two submodules: ``encoder`` (inputs ``[N, ...]`` to
    ``[N, 2 d]``: the means μ of the d-dimensional latent, then d scale parameters r) and
    ``head`` (latents ``[N, d]`` to outputs); every trainable parameter must be in one of them
    and none in both. ``maml_ext.models: bottleneck_mlp`` builds such a model. The learner runs
    the two itself (the model's own ``forward`` is not used): the encoder per task with the
    module's own parameters (meta-learned, not adapted; BatchNorm on batch statistics), then the
    MAML core on the head (``learner.model`` is the head; ``adapt`` names its parameters, default
    all, as ANIL adapts a head).

    In training mode every call that takes inputs (``meta_loss``, ``inner_loop``, ``predict``)
    draws z = μ + σ ⊙ ε, ε ~ N(0, I) from the global RNG, once per input: the support set is
    encoded once per ``meta_loss`` and its draw serves every inner step; the query set once per
    query loss (per step with ``multi_step_loss``). In eval mode z = μ (or a draw with
    ``sample_eval``). ``meta_loss``'s value is the query loss alone; its gradient includes β · KL,
    the KL of q(z*|x*) to N(0, I) averaged over the latent dimensions, the query inputs and the
    tasks (the paper's code averages it).

    Args (beyond :class:`MAML`'s, which are passed on; ``fused`` is not available: the fused MLP
    op would run the head on the raw inputs):
        beta: weight β of the KL term (>= 0); 5 in the paper's sinusoid code (see
            docs/memorization.md).
        encoder, head: names of the two submodules (default ``"encoder"`` and ``"head"``).
        scale: how r gives σ: ``"softplus"`` (σ = softplus(r), the paper's stochastic layer) or
            ``"logvar"`` (r is log σ²).
        sample_eval: draw z in eval mode too (default: the mean μ).
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.01,
        steps: int = 1,
        *,
        beta: float = 5.0,
        encoder: str = "encoder",
        head: str = "head",
        scale: str = "softplus",
        sample_eval: bool = False,
        **options: Any,
    ) -> None:
        if options.get("fused"):
            raise ValueError("fused=True is not possible for mr-maml-a: the fused MLP op would run the head on the raw inputs")
        options.pop("fused", None)
        if not (isinstance(beta, (int, float)) and not isinstance(beta, bool) and beta >= 0):
            raise ValueError(f"beta must be a number >= 0, got {beta!r}")
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
        enc, hd = _submodule(model, encoder, "encoder"), _submodule(model, head, "head")
        enc_ids = {id(p) for p in enc.parameters()}
        shared = [n for n, p in hd.named_parameters() if id(p) in enc_ids]
        if shared:
            raise ValueError(f"encoder={encoder!r} and head={head!r} share parameters (head's {shared}): "
                             "the encoder is meta-learned only, the head adapted; they must be disjoint")
        inside = enc_ids | {id(p) for p in hd.parameters()}
        outside = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in inside]
        if outside:
            raise ValueError(f"parameters {outside} are in neither encoder={encoder!r} nor head={head!r}: "
                             "mr-maml-a runs only those two submodules")
        super().__init__(hd, lr, steps, fused=False, **options)
        self.encoder = enc
        self.first_layer = first_layer(enc)  # inputs go to the encoder (the learner's model is the head)
        self.beta = float(beta)
        self.scale = scale
        self.sample_eval = bool(sample_eval)
        self._encoder_call = FunctionalModel(enc, None, [])

    def latent_stats(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean μ, standard deviation σ and log-variance of q(z|x), each ``[T, N, d]``, for
        inputs ``x [T, N, ...]``."""
        params = dict(self.encoder.named_parameters())
        out, _ = self._encoder_call.over_tasks({}, params, False, _no_buffers, x)
        if out.dim() != 3 or out.shape[-1] % 2:
            raise ValueError(f"encoder: expected outputs [T, N, 2 * latent] (the means, then the scale parameters) "
                             f"for inputs of shape {tuple(x.shape)}, got shape {tuple(out.shape)}")
        mean, raw = out.chunk(2, dim=-1)
        std, logvar = SCALES[self.scale](raw)
        return mean, std, logvar

    def encode(self, x: Tensor) -> Tensor:
        """Latents ``[T, N, d]`` of inputs ``x [T, N, ...]``: drawn from q(z|x) in training mode
        (and with ``sample_eval``), the mean otherwise."""
        mean, std, _ = self.latent_stats(x)
        if not (self.training or self.sample_eval):
            return mean
        return mean + std * torch.randn_like(mean)

    def kl(self, x: Tensor) -> Tensor:
        """KL(q(z|x) ‖ N(0, I)) averaged over the latent dimensions, the inputs and the tasks."""
        mean, _, logvar = self.latent_stats(x)
        zero = torch.zeros((), dtype=mean.dtype, device=mean.device)
        return gaussian_kl(mean, logvar, zero, zero).mean()

    # The head runs on latents: every entry point that takes inputs encodes them first.
    def inner_loop(self, x: Tensor, y: Tensor, steps: int, *, first_order: bool, lr: float | None = None) -> Iterator[Params]:
        check_examples(x, y)
        return super().inner_loop(self.encode(x), y, steps, first_order=first_order, lr=lr)

    def predict(self, params: Params, x: Tensor) -> Tensor:
        return super().predict(params, self.encode(x))

    def meta_loss(self, batch: TaskBatch, iteration: int = 0) -> Tensor:
        query = super().meta_loss(batch, iteration)
        if self.beta == 0:
            return query
        penalty = self.beta * self.kl(batch.x_query)
        return query + penalty - penalty.detach()

    def clone(self, first_order: bool | None = None) -> TaskClone:
        raise NotImplementedError("mr-maml-a has no clone(): a clone runs the model on raw inputs, this learner "
                                  "encodes them first; use meta_loss, or adapt and predict")
