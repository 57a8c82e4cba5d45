"""MR-MAML(W) (Yin et al., "Meta-Learning without Memorization", ICLR 2020): MAML with a
meta-regulariser on the weights.

When meta-training tasks are not mutually exclusive (one function solves them all without the
support set: the task identity is readable from the input, or class-to-label assignments are
fixed), MAML can memorise the tasks and learn to ignore the support set. MR-MAML(W) makes a chosen
subset θ̃ of the meta-parameters stochastic, q(θ̃) = N(μ, σ²) with σ = softplus(ρ), and penalises
the information they carry about the meta-training tasks with β · KL(q(θ̃) ‖ N(0, prior_std²)), so
task information has to flow through the adaptation of the other parameters instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maml_ext.tasks import TaskBatch

from .base import Params
from .maml import MAML
from .platipus import gaussian_kl


def _first_layer(model: nn.Module) -> str:
    """Name of the first submodule that owns parameters (the paper's stochastic encoder)."""
    owners = [name for name, m in model.named_modules() if name and list(m.parameters(recurse=False))]
    if len(owners) < 2:
        raise ValueError("mr-maml needs a model with at least two named submodules holding parameters "
                         "(a stochastic encoder and an adapted rest), or explicit stochastic/adapt names")
    return owners[0]


def _select(names: Sequence[str], prefixes: Sequence[str]) -> list[str]:
    return [n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)]


class MRMAML(MAML):
    """MR-MAML(W): stochastic meta-parameters with a KL meta-regulariser, on the MAML core.

    Meta-parameters: the model's parameters (μ for the stochastic ones) and ρ, one entry per
    stochastic weight entry (σ = softplus(ρ), as in the paper's code). In training mode each call
    of ``init_params`` (one per ``meta_loss``: the meta-batch shares one draw, as the paper's code
    shares one encoder draw per batch) draws θ̃ = μ + σ ⊙ ε, ε ~ N(0, I) from the global RNG
    (reparameterised, so the meta-gradient reaches μ and ρ); MAML then runs as usual from θ̃
    (the batched generic path: vmap or the model's ``forward_tasks``). In eval mode θ̃ = μ. The
    objective is the mean post-adaptation query loss + β · KL(N(μ, σ²) ‖ N(0, prior_std²)) summed
    over the stochastic entries; ``meta_loss``'s value is the query loss alone (its gradient
    includes the KL term's), as for PLATIPUS.

    Which weights: the paper's MR-MAML(W) makes the encoder (the first layers) stochastic and
    adapts only the rest. Defaults follow that: with neither ``stochastic`` nor ``adapt`` given,
    the first parameter-owning submodule is stochastic and every other parameter is adapted;
    given one of them, the other is its complement; given both, they may overlap (a stochastic
    weight that is also adapted starts each task's adaptation from its draw).

    Paper's values (the official code, google-research/meta_learning_without_memorization):
    sinusoid β = 5e-5 (encoder 21-100-5 stochastic, adapted 5-40-40-1, inner lr 0.01); pose
    regression β = 1e-3 (conv encoder stochastic); prior N(0, I); σ initialised at softplus(−50)
    (sinusoid) or softplus(−20) ≈ 2e-9 (pose), i.e. effectively zero: the KL term first acts as an
    L2 pull of μ towards the prior mean, while σ grows as far as the query loss allows.

    Args (beyond :class:`MAML`'s, which are passed on; ``fused`` is not available: the fused
    MLP op would bypass the draw):
        beta: weight β of the KL term (>= 0).
        stochastic: names (or name prefixes) of the stochastic parameters.
        prior_std: standard deviation of the zero-mean Gaussian prior.
        init_std: initial σ (> 0); default softplus(−20), the pose code's.
        sample_eval: draw θ̃ in eval mode too (the paper's code evaluates with drawn weights:
            its encoder layers draw on every call); default: the mean μ.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.01,
        steps: int = 1,
        *,
        beta: float = 5e-5,
        stochastic: Sequence[str] | None = None,
        adapt: Sequence[str] | None = None,
        prior_std: float = 1.0,
        init_std: float | None = None,
        sample_eval: bool = False,
        **options: Any,
    ) -> None:
        if options.get("fused"):
            raise ValueError("fused=True is not possible for mr-maml: the fused MLP op would bypass the weight draw")
        options.pop("fused", None)
        if not (isinstance(beta, (int, float)) and not isinstance(beta, bool) and beta >= 0):
            raise ValueError(f"beta must be a number >= 0, got {beta!r}")
        init_std = F.softplus(torch.tensor(-20.0, dtype=torch.float64)).item() if init_std is None else init_std
        for key, value in (("prior_std", prior_std), ("init_std", init_std)):
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
                raise ValueError(f"{key} must be a finite number > 0, got {value!r}")
        names = [n for n, _ in model.named_parameters()]
        if stochastic is None and adapt is None:
            stochastic = [_first_layer(model)]
        stochastic_names = _select(names, stochastic) if stochastic is not None else [
            n for n in names if n not in _select(names, adapt)]
        if not stochastic_names:
            raise ValueError(f"stochastic={stochastic} (adapt={adapt}) selects no parameter; parameters: {names}")
        if adapt is None:
            adapt = [n for n in names if n not in stochastic_names]
            if not adapt:
                raise ValueError(f"stochastic={stochastic} covers every parameter: pass adapt to say which are adapted")
        super().__init__(model, lr, steps, adapt=adapt, fused=False, **options)
        self.beta = float(beta)
        self.prior_std = float(prior_std)
        self.stochastic_names = stochastic_names
        self.sample_eval = bool(sample_eval)
        named = dict(model.named_parameters())
        rho = math.log(math.expm1(init_std))  # softplus⁻¹
        self.rho = nn.ParameterList(nn.Parameter(torch.full_like(named[n], rho).detach()) for n in stochastic_names)

    def std(self) -> dict[str, Tensor]:
        """σ = softplus(ρ) per stochastic parameter."""
        return {n: F.softplus(r) for n, r in zip(self.stochastic_names, self.rho)}

    def init_params(self) -> Params:
        """The initialisation: θ̃ drawn from q in training mode (and in eval mode with
        ``sample_eval``), its mean μ otherwise."""
        params = super().init_params()
        if not (self.training or self.sample_eval):
            return params
        mean = {**params.adapted, **params.frozen}
        draws = {n: mean[n] + sigma * torch.randn_like(mean[n]) for n, sigma in self.std().items()}
        return params._replace(
            adapted={n: draws.get(n, p) for n, p in params.adapted.items()},
            frozen={n: draws.get(n, p) for n, p in params.frozen.items()},
        )

    def kl(self) -> Tensor:
        """KL(q(θ̃) ‖ N(0, prior_std²)), summed over every stochastic entry."""
        named = dict(self.model.named_parameters())
        logvar_p = 2.0 * math.log(self.prior_std)
        total = next(iter(named.values())).new_zeros(())
        for n, sigma in self.std().items():
            mu = named[n]
            total = total + gaussian_kl(mu, 2.0 * sigma.log(), torch.zeros_like(mu), torch.full_like(mu, logvar_p)).sum()
        return total

    def penalty(self) -> Tensor:
        """β · KL: what ``meta_loss`` adds to the objective (add it yourself when training with ``clone()``)."""
        return self.beta * self.kl()

    def meta_loss(self, batch: TaskBatch, iteration: int = 0) -> Tensor:
        query = super().meta_loss(batch, iteration)
        penalty = self.penalty()
        return query + penalty - penalty.detach()
