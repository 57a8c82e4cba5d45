"""What BMAML and PLATIPUS share: parameter sets as extra rows of the task dimension.

A meta-batch of T tasks with S parameter sets each (BMAML's particles, PLATIPUS's samples) is
run as T·S rows, row t·S + s holding task t's set s, so the batched core (vmap, conv4's grouped
convolutions) and the fused MLP op see just a larger task batch. Per-row support-loss gradients
come from ``ops.mlp_hvp`` for a fused MLP (its gradient output is differentiable w.r.t. the
parameters, so steps built from it are exactly second order) and from one batched backward
otherwise; steps are applied by ``ops.inner_update`` (BMAML's SVGD steps by ``ops.svgd_step``).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from maml_ext import ops
from maml_ext.models import FusedMLPSpec
from maml_ext.tasks import TaskBatch

from .base import MetaLearner, Params, task_loss
from .clone import TaskClone
from .fusable import choose_spec

Rows = dict[str, Tensor]


def expand_rows(x: Tensor, sets: int) -> Tensor:
    """``[T, ...]`` -> ``[T·sets, ...]`` with row t·sets + s a copy of task t."""
    return x.unsqueeze(1).expand(x.shape[0], sets, *x.shape[1:]).reshape(x.shape[0] * sets, *x.shape[1:])


def soft_min_loss(losses: Tensor, temperature: float) -> Tensor:
    """−τ log 1/S Σ_s exp(−L_{t,s}/τ) of ``losses [T, S]``, mean over tasks: the negative log of a
    likelihood mixture over a task's S parameter sets (τ → 0: the best set per task; τ → ∞: the
    mean; S = 1: the loss itself)."""
    return -temperature * (torch.logsumexp(-losses / temperature, dim=1) - math.log(losses.shape[1])).mean()


def compiled_on_cpu(t: Tensor) -> bool:
    """Whether the compiled kernels run for tensors like ``t`` (extension loaded, CPU): where the
    fused-MLP rows use the autograd nodes built directly on the compiled ops."""
    return ops.extension_available() and t.device.type == "cpu"


class _MLPRowLoss(torch.autograd.Function):
    """Per-row mean losses ``[R]`` of a fused MLP from one ``mlp_hvp`` call (no R-pass). Their
    gradient w.r.t. the rows is that call's gradient output, so the backward only scales it (a
    first derivative: ``ops.mlp_hvp`` through autograd would run an HVP for its unused gradient
    outputs, the generic forward a batched backward). A second derivative raises."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, activation: str, loss: str, *rows: Tensor) -> Tensor:
        losses, grads, _ = torch.ops.maml_ext.mlp_hvp([r.contiguous() for r in rows], x, y, [], None, activation, loss)
        ctx.save_for_backward(*grads)
        return losses

    @staticmethod
    def backward(ctx, d_losses: Tensor) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():  # create_graph: the saved gradients carry no graph of their own
            raise RuntimeError(
                "row_losses of a fused MLP on the compiled kernels is differentiable once; for a second "
                "derivative (create_graph=True) use the generic path (fused=False)"
            )
        return (None,) * 4 + tuple(g * d_losses.view(-1, *([1] * (g.dim() - 1))) for g in ctx.saved_tensors)


class RowLearner(MetaLearner):
    """A learner whose adapted parameters are several sets per task, held as rows.

    Every parameter is adapted (there is no ``adapt`` option) and BatchNorm uses batch
    statistics. The single-set ``inner_loop`` / ``adapt`` of :class:`MetaLearner` do not apply
    and raise; ``adapted_sets`` and ``sample_predictions`` give the adapted sets. ``fused``: use the fused MLP op for per-row gradients when the model declares a
    fused MLP spec or is detected as a plain MLP (None: whenever possible; True: required, else an error).
    """

    def __init__(
        self, model: nn.Module, *, lr: float, steps: int, loss: str, fused: bool | None,
        task_batched: bool | None,
    ) -> None:
        if callable(loss):  # the predictive metrics (point_metrics) are defined for these two
            raise ValueError(f"loss: {type(self).__name__} needs 'mse' or 'cross_entropy', got a callable")
        super().__init__(model, lr=lr, steps=steps, loss=loss, task_batched=task_batched)
        # The same rule as MAML's: never the op for a model it would compute differently.
        self.fused_spec: FusedMLPSpec | None = choose_spec(model, fused)

    def inner_loop(self, *args: object, **kwargs: object) -> Iterator[Params]:
        raise NotImplementedError(
            f"{type(self).__name__} adapts several parameter sets per task: use adapted_sets() or sample_predictions()"
        )

    def clone(self, first_order: bool | None = None) -> TaskClone:
        raise NotImplementedError(f"{type(self).__name__} adapts several parameter sets per task: clone() adapts one")

    # ----- rows ---------------------------------------------------------------------------
    def row_predict(self, rows: Rows, x: Tensor) -> Tensor:
        """Outputs ``[R, N, out]`` of each row's parameters on its inputs ``x [R, N, ...]``."""
        return self._over_tasks(rows, {}, 1, True, x)

    def row_losses(self, rows: Rows, x: Tensor, y: Tensor) -> Tensor:
        """Per-row mean loss ``[R]`` of the rows' parameters on ``(x, y)`` (differentiable once
        w.r.t. the rows for a fused MLP on the compiled kernels)."""
        spec = self.fused_spec
        if spec is not None and compiled_on_cpu(x):
            return _MLPRowLoss.apply(x, y, spec.activation, self.loss, *(rows[n] for n in spec.param_names))
        return task_loss(self.row_predict(rows, x), y, self.loss)

    def row_grads(self, rows: Rows, x: Tensor, y: Tensor, create_graph: bool) -> tuple[Tensor, Rows]:
        """Per-row support losses ``[R]`` and their gradients w.r.t. each row's parameters.

        ``create_graph`` keeps the gradients differentiable w.r.t. the rows (second order)."""
        spec = self.fused_spec
        if spec is not None:
            params = [rows[n] if create_graph else rows[n].detach() for n in spec.param_names]
            params = [p.contiguous() for p in params]
            with torch.enable_grad():  # no direction: loss and gradient only, no R-pass
                losses, grads, _ = ops.mlp_hvp(params, x, y, activation=spec.activation, loss=self.loss)
            if not create_graph:
                losses, grads = losses.detach(), [g.detach() for g in grads]
            return losses, dict(zip(spec.param_names, grads))
        with torch.enable_grad():  # evaluation runs under no_grad but still needs inner gradients
            inputs = {n: p if (p.requires_grad and create_graph) else p.detach().requires_grad_() for n, p in rows.items()}
            losses = task_loss(self.row_predict(inputs, x), y, self.loss)
            grads = torch.autograd.grad(losses.sum(), list(inputs.values()), create_graph=create_graph)
        if not create_graph:
            losses, grads = losses.detach(), tuple(g.detach() for g in grads)
        return losses, dict(zip(inputs, grads))

    def sgd_rows(self, rows: Rows, x: Tensor, y: Tensor, steps: int, lr: float, first_order: bool) -> Iterator[Rows]:
        """Plain SGD steps on every row, yielding the rows after each step."""
        for _ in range(steps):
            _, grads = self.row_grads(rows, x, y, create_graph=not first_order)
            names = list(rows)
            new = ops.inner_update([rows[n] for n in names], [grads[n] for n in names], lr)
            rows = dict(zip(names, new))
            yield rows

    # ----- prediction and evaluation ------------------------------------------------------
    @abstractmethod
    def adapted_sets(
        self, x_support: Tensor, y_support: Tensor, steps: int, lr: float | None, generator: torch.Generator | None
    ) -> Iterator[tuple[Rows, int]]:
        """Rows ``[T·S, ...]`` and S before adaptation and after each of ``steps`` test-time
        steps on the support sets (no meta-gradient graph); ``generator`` seeds any sampling."""

    @torch.no_grad()
    def sample_predictions(
        self, x_support: Tensor, y_support: Tensor, x_query: Tensor, steps: int, lr: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Per-set outputs ``[steps + 1, T, S, N, out]`` on ``x_query [T, N, ...]`` after
        0..steps adaptation steps; the same generator state gives the same samples."""
        tasks = x_support.shape[0]
        outs = []
        for rows, sets in self.adapted_sets(x_support, y_support, steps, lr, generator):
            out = self.row_predict(rows, expand_rows(x_query, sets))
            outs.append(out.view(tasks, sets, *out.shape[1:]))
        return torch.stack(outs)

    @torch.no_grad()
    def evaluate_metrics(self, batch: TaskBatch, steps: int, lr: float | None = None) -> dict[str, Tensor]:
        """Query metrics ``[steps + 1, T]`` of the predictive distribution (see
        :func:`point_metrics`): "loss" (MSE of the mean prediction, or the NLL of the averaged
        class probabilities) and, for classification, "accuracy". Samples are seeded with 0."""
        gen = torch.Generator(device=batch.x_support.device).manual_seed(0)
        samples = self.sample_predictions(batch.x_support, batch.y_support, batch.x_query, steps, lr, gen)
        return point_metrics(samples, batch.y_query, self.loss)


def point_metrics(samples: Tensor, y: Tensor, loss: str) -> dict[str, Tensor]:
    """"loss" (and "accuracy") ``[steps + 1, T]`` of the predictive distribution formed by the
    sets in ``samples [steps + 1, T, S, N, out]``: regression, the MSE of the mean over sets;
    classification, −log of the set-averaged class probabilities (and its argmax's accuracy)."""
    if loss == "mse":
        return {"loss": (samples.mean(2) - y).pow(2).flatten(2).mean(2)}
    log_probs = torch.logsumexp(torch.log_softmax(samples, -1), dim=2) - torch.log(
        torch.tensor(float(samples.shape[2]), dtype=samples.dtype)
    )
    nll = -log_probs.gather(-1, y.unsqueeze(0).expand(log_probs.shape[0], *y.shape).unsqueeze(-1)).squeeze(-1)
    accuracy = (log_probs.argmax(-1) == y).to(samples.dtype)
    return {"loss": nll.mean(2), "accuracy": accuracy.mean(2)}
