"""The inner-loop step: differentiable optimizers on task-batched gradients.

An optimizer turns each step's per-task gradients ``g [T, ...]`` into step directions ``d``
(differentiable torch ops, so first- and second-order meta-gradients flow through its state), and
:func:`apply_step` applies θ' = θ − α ⊙ d, so learned rates (Meta-SGD, MAML++ LSLR) and
per-group step sizes compose with any optimizer. The formulas are ``torch.optim``'s
(no weight decay): :class:`Momentum` is ``SGD(momentum, nesterov)``, :class:`Adam` is ``Adam``.
"""

from __future__ import annotations

import torch
from torch import Tensor

State = dict[str, tuple[Tensor, ...]]


class InnerSGD:
    """Plain SGD: d = g (the default)."""

    def directions(self, grads: dict[str, Tensor], state: State, step: int) -> tuple[dict[str, Tensor], State]:
        """Directions for ``grads`` at inner step ``step`` (1-based) and the new state."""
        return grads, state

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Momentum(InnerSGD):
    """Heavy-ball momentum, ``torch.optim.SGD`` semantics: b₁ = g₁, b = μ b + g;
    d = b, or g + μ b with ``nesterov``."""

    def __init__(self, momentum: float = 0.9, nesterov: bool = False) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum: expected 0 <= momentum < 1, got {momentum}")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def directions(self, grads: dict[str, Tensor], state: State, step: int) -> tuple[dict[str, Tensor], State]:
        out, new = {}, dict(state)
        for n, g in grads.items():
            buf = g if n not in state else self.momentum * state[n][0] + g
            new[n] = (buf,)
            out[n] = g + self.momentum * buf if self.nesterov else buf
        return out, new

    def __repr__(self) -> str:
        return f"Momentum(momentum={self.momentum}, nesterov={self.nesterov})"


class Adam(InnerSGD):
    """Adam, ``torch.optim.Adam`` semantics: bias-corrected m̂ / (√v̂ + eps). The step size is the
    learner's α. (√v is not differentiable at v = 0: a parameter whose every gradient entry is
    exactly 0 gives an infinite second-order term, as in any differentiable Adam.)"""

    def __init__(self, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas: expected two values in [0, 1), got {betas}")
        if not eps > 0:
            raise ValueError(f"eps: expected > 0, got {eps}")
        self.betas, self.eps = (float(betas[0]), float(betas[1])), float(eps)

    def directions(self, grads: dict[str, Tensor], state: State, step: int) -> tuple[dict[str, Tensor], State]:
        b1, b2 = self.betas
        out, new = {}, dict(state)
        for n, g in grads.items():
            m0, v0 = state.get(n, (0.0, 0.0))
            m, v = b1 * m0 + (1 - b1) * g, b2 * v0 + (1 - b2) * g * g
            new[n] = (m, v)
            out[n] = (m / (1 - b1**step)) / ((v / (1 - b2**step)).sqrt() + self.eps)
        return out, new

    def __repr__(self) -> str:
        return f"Adam(betas={self.betas}, eps={self.eps})"


def apply_step(params: list[Tensor], directions: list[Tensor], lr: float | list[Tensor], row: int | None) -> list[Tensor]:
    """θ' = θ − α ⊙ d per tensor (shared θ broadcast over the task dimension of d): ``ops.inner_update``'s
    formula as one differentiable torch op per tensor. On the generic path this is cheaper than the
    fused op: no custom-op dispatch per step, and one pass over θ instead of two (forward and
    backward), which is what the large-model case is bound by."""
    if not isinstance(lr, list):
        return [torch.add(p, d, alpha=-lr) for p, d in zip(params, directions)]
    rates = lr if row is None else [rate[row] for rate in lr]
    return [torch.addcmul(p, rate, d, value=-1) for p, rate, d in zip(params, rates, directions)]


def inner_step(
    adapted: dict[str, Tensor],
    grads: dict[str, Tensor | None],
    lr: float | list[Tensor],
    row: int | None,
    tasks: int,
    per_task: bool,
    optimizer: InnerSGD,
    state: State,
    step: int,
) -> tuple[dict[str, Tensor], State]:
    """Inner step ``step`` (1-based) with task-batched ``grads [T, ...]`` (``adapted`` has the
    task dimension when ``per_task``); returns the new parameters and optimizer state.

    A parameter the loss did not use (gradient None) keeps its value and state without a graph
    through the step, so, as with autograd's ``allow_unused``, it gets no meta-gradient unless a
    later loss uses it."""
    names = [n for n in adapted if grads[n] is not None]
    if isinstance(lr, list):  # one rate per adapted parameter
        lr = [rate for n, rate in zip(adapted, lr) if grads[n] is not None]
    directions, state = optimizer.directions({n: grads[n] for n in names}, state, step)
    stepped = apply_step([adapted[n] for n in names], [directions[n] for n in names], lr, row)
    new = dict(zip(names, stepped))
    # (not new.get(n, p.expand(...)): that would expand every parameter on every step)
    return {n: new[n] if n in new else p if per_task else p.expand(tasks, *p.shape) for n, p in adapted.items()}, state
