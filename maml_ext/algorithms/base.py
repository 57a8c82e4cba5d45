"""Functional, task-batched core shared by every algorithm.

Parameters are dicts ``name -> Tensor`` used through ``torch.func.functional_call``. A meta-batch
of T tasks is processed together: per-task losses and gradients come from ``vmap`` over the task
dimension, and adapted parameters carry a leading task dimension ``[T, ...]``; the unadapted
initialisation is shared (no task dimension) and broadcast. Inner steps use the fused
``maml_ext.ops.inner_update``, which is differentiable to any order, so backpropagating through
the adapted parameters gives the exact second-order meta-gradient for any model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from maml_ext import ops
from maml_ext.tasks import TaskBatch

LOSSES = ("mse", "cross_entropy")


def task_loss(out: Tensor, y: Tensor, loss: str) -> Tensor:
    """Per-task mean loss ``[T]`` of outputs ``[T, K, out]`` (mse: mean over K and outputs)."""
    if loss == "mse":
        return (out - y).pow(2).flatten(1).mean(1)
    per_example = F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none")
    return per_example.view(y.shape).mean(1)


class Params(NamedTuple):
    """Adapted parameters (per task ``[T, ...]`` once ``per_task``) and the frozen rest (shared)."""

    adapted: dict[str, Tensor]
    frozen: dict[str, Tensor]
    per_task: bool

    def merged(self) -> dict[str, Tensor]:
        return {**self.frozen, **self.adapted}


class MetaLearner(nn.Module, ABC):
    """Wraps a model; subclasses define ``meta_loss``.

    BatchNorm layers use batch statistics at train and test time, as in the original MAML
    (running statistics are dropped: they cannot be updated per task under ``vmap``).

    Args:
        model: any ``nn.Module``; its parameters are the meta-learned initialisation.
        lr: inner-loop step size α.
        steps: inner-loop steps during meta-training.
        loss: "mse" or "cross_entropy" (per task, mean over the K examples).
        adapt: names (or name prefixes) of the parameters adapted in the inner loop; None adapts all.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        lr: float = 0.01,
        steps: int = 1,
        loss: str = "mse",
        adapt: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        torch.func.replace_all_batch_norm_modules_(model)
        self.model = model
        self.lr = float(lr)
        self.steps = int(steps)
        self.loss = loss
        names = [n for n, _ in model.named_parameters()]
        if adapt is None:
            self.adapt_names = names
        else:
            self.adapt_names = [n for n in names if any(n == a or n.startswith(a + ".") for a in adapt)]
            if not self.adapt_names:
                raise ValueError(f"adapt={list(adapt)} matches no parameter; parameters: {names}")

    # ----- functional pieces -------------------------------------------------------------
    def init_params(self) -> Params:
        named = dict(self.model.named_parameters())
        adapted = {n: named[n] for n in self.adapt_names}
        frozen = {n: p for n, p in named.items() if n not in adapted}
        return Params(adapted, frozen, per_task=False)

    def _call(self, adapted: dict[str, Tensor], frozen: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self.model, {**frozen, **adapted}, (x,))

    def predict(self, params: Params, x: Tensor) -> Tensor:
        """Outputs ``[T, N, out]`` of each task's parameters on its inputs ``x [T, N, ...]``."""
        dims = 0 if params.per_task else None
        return vmap(self._call, in_dims=(dims, None, 0))(params.adapted, params.frozen, x)

    def losses(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        return task_loss(self.predict(params, x), y, self.loss)

    def _grads(self, params: Params, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        def one_task(adapted: dict[str, Tensor], frozen: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
            return task_loss(self._call(adapted, frozen, xi)[None], yi[None], self.loss)[0]

        dims = 0 if params.per_task else None
        return vmap(grad(one_task), in_dims=(dims, None, 0, 0))(params.adapted, params.frozen, x, y)

    def step_lr(self, step: int) -> tuple[float | list[Tensor], int | None]:
        """The lr argument of ``ops.inner_update`` for inner step ``step`` (overridden by learned rates)."""
        return self.lr, None

    def inner_loop(
        self, x: Tensor, y: Tensor, steps: int, *, first_order: bool, lr: float | None = None
    ) -> Iterator[Params]:
        """Yields the task-batched parameters after each of ``steps`` SGD steps on (x, y).

        ``first_order`` cuts the graph through the gradients (FOMAML); ``lr`` overrides α
        (used when fine-tuning a baseline at test time).
        """
        params = self.init_params()
        for s in range(steps):
            grads = self._grads(params, x, y)
            if first_order:
                grads = {n: g.detach() for n, g in grads.items()}
            step_lr, row = (lr, None) if lr is not None else self.step_lr(s)
            names = list(params.adapted)
            new = ops.inner_update([params.adapted[n] for n in names], [grads[n] for n in names], step_lr, row)
            params = Params(dict(zip(names, new)), params.frozen, per_task=True)
            yield params

    def adapt(self, x_support: Tensor, y_support: Tensor, steps: int | None = None) -> Params:
        """Per-task parameters after ``steps`` (default: training steps) on the support sets."""
        params = self.init_params()
        for params in self.inner_loop(x_support, y_support, steps or self.steps, first_order=False):
            pass
        return params

    # ----- algorithm interface ------------------------------------------------------------
    @abstractmethod
    def meta_loss(self, batch: TaskBatch, iteration: int = 0) -> Tensor:
        """Scalar whose value is the mean post-adaptation query loss and whose gradient is the
        algorithm's meta-gradient. ``iteration`` drives schedules (MAML++ annealing)."""

    def forward(self, batch: TaskBatch, iteration: int = 0) -> Tensor:
        return self.meta_loss(batch, iteration)

    @torch.no_grad()
    def evaluate(self, batch: TaskBatch, steps: int, lr: float | None = None) -> Tensor:
        """Query losses ``[steps + 1, T]`` after 0..steps adaptation steps on the support sets."""
        params = self.init_params()
        out = [self.losses(params, batch.x_query, batch.y_query)]
        # torch.func.grad computes gradients inside no_grad; the meta-graph is not needed here.
        for params in self.inner_loop(batch.x_support, batch.y_support, steps, first_order=True, lr=lr):
            out.append(self.losses(params, batch.x_query, batch.y_query))
        return torch.stack(out)
