"""Functional, task-batched core shared by every algorithm.

Parameters are dicts ``name -> Tensor`` used through a functional call of the model (:mod:`.functional`). A meta-batch
of T tasks is processed together: the model runs under ``vmap`` over the task dimension, per-task
gradients come from one batched backward, and adapted parameters carry a leading task dimension ``[T, ...]``; the unadapted
initialisation is shared (no task dimension) and broadcast. Inner steps use the fused
``maml_ext.ops.inner_update``, which is differentiable to any order, so backpropagating through
the adapted parameters gives the exact second-order meta-gradient for any model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from maml_ext.tasks import TaskBatch

from ._checks import check_alike, check_examples, check_inputs, check_lr, check_steps, first_layer
from .entry import BATCH_ENTRY_POINTS, ENTRY_POINTS, entry_point
from .clone import TaskClone
from .functional import FunctionalModel, Output
from .inner import InnerSGD, State, inner_step

LOSSES = ("mse", "cross_entropy")
LossFn = Callable[[Tensor, Tensor], Tensor]
"""A custom loss: outputs ``[T, K, ...]`` and targets ``[T, K, ...]`` to per-task losses ``[T]``."""
Loss = Union[str, LossFn]


def check_loss(loss: Loss) -> None:
    if not callable(loss) and loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES} or a callable (outputs, targets) -> [T], got {loss!r}")


def task_loss(out: Tensor, y: Tensor, loss: Loss) -> Tensor:
    """Per-task mean loss ``[T]`` of outputs ``[T, K, out]`` (mse: mean over K and outputs)."""
    if callable(loss):
        value = loss(out, y)
        if not isinstance(value, Tensor) or value.shape != out.shape[:1]:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"loss: a custom loss must return per-task losses of shape [{out.shape[0]}], got {got}")
        return value
    if loss == "mse":
        if out.shape != y.shape:  # no silent broadcasting ([T, K] against [T, K, 1]), as in the fused op
            raise ValueError(f"y: expected targets of the outputs' shape {tuple(out.shape)}, got {tuple(y.shape)}")
        return (out - y).pow(2).flatten(1).mean(1)
    per_example = F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none")
    return per_example.view(y.shape).mean(1)


def mean_task_loss(out: Tensor, y: Tensor, loss: Loss) -> Tensor:
    """``task_loss(out, y, loss).mean()``: for the named losses one op over all tasks (every task
    has the same K, so the mean of per-task means is the mean over all examples), whose backward
    is one node instead of five (difference, square, flatten, per-task mean, mean)."""
    if callable(loss):
        return task_loss(out, y, loss).mean()
    if loss == "mse":
        if out.shape != y.shape:
            raise ValueError(f"y: expected targets of the outputs' shape {tuple(out.shape)}, got {tuple(y.shape)}")
        return torch.ops.aten.mse_loss.default(out, y)  # F.mse_loss's checks and broadcasting are done
    return F.cross_entropy(out.flatten(0, 1), y.flatten())


class Params(NamedTuple):
    """Adapted parameters after ``step`` inner steps (per task ``[T, ...]`` once step > 0) and
    the frozen rest (shared)."""

    adapted: dict[str, Tensor]
    frozen: dict[str, Tensor]
    step: int
    opt_state: State | None = None  # the inner optimizer's (momentum, Adam moments)

    @property
    def per_task(self) -> bool:
        return self.step > 0


class MetaLearner(nn.Module, ABC):
    """Wraps a model; subclasses define ``meta_loss``.

    The model itself is never modified (see :mod:`.functional`): tied and reused parameters stay
    the module's own, parameters with ``requires_grad=False`` are neither adapted nor
    meta-learned, and parameters a loss does not use get a zero inner-loop gradient and no
    meta-gradient (None). BatchNorm layers use batch statistics at train and test time by
    default, as in the original MAML (the module's running statistics are neither used nor
    updated). ``per_step_bn=True`` (MAML++) keeps one set of
    running statistics per inner step instead: updated from every task's batch statistics in
    training mode, used in place of batch statistics in eval mode.

    Args:
        model: any ``nn.Module``; its parameters are the meta-learned initialisation.
        lr: inner-loop step size α.
        steps: inner-loop steps during meta-training.
        loss: "mse" or "cross_entropy" (per task, mean over the K examples), or a callable
            ``(outputs [T, K, ...], targets [T, K, ...]) -> [T]`` (generic path only: the fused MLP
            op computes the two named losses).
        adapt: names (or name prefixes) of the parameters adapted in the inner loop; None adapts
            all (those with ``requires_grad=False`` are never adapted).
        per_step_bn: per-inner-step BatchNorm running statistics (MAML++).
        per_step_bn_weights: with ``per_step_bn``, MAML++'s per-step learned BatchNorm weights
            and biases: row s of ``bn_weight_i`` / ``bn_bias_i`` ``[steps + 1, C]`` (initialised
            from the model's) serves the forward passes with parameters after s steps, in place
            of the model's own; they are meta-learned and not adapted in the inner loop.
        task_batched: run the model's own ``forward_tasks(params, x)`` (per-task parameters
            ``[T, ...]``, inputs ``[T, N, ...]``; e.g. conv4's grouped convolutions) instead of
            ``vmap``; None: whenever the model has one and ``per_step_bn`` is off.
        output: for a model returning a tuple, list or dict, which part the loss sees (None:
            element 0 of a tuple or list; an index or key; or a callable ``output -> Tensor``).
        inner_optimizer: the differentiable inner-loop optimizer (:mod:`.inner`: ``InnerSGD()``,
            the default, ``Momentum(0.9, nesterov=...)``, ``Adam(betas, eps)``); step size α.
        lr_groups: per-parameter-group step sizes ``{name or prefix: α}`` (the longest matching
            prefix wins; other parameters use ``lr``).
        trace: record the ``vmap``-batched forward once per input signature and replay it
            (:mod:`.trace`; faster, same results), and for ``MAML`` the whole meta-gradient
            (:mod:`.whole`). None: when every module is torch.nn's or
            maml_ext's; True also for your own modules, whose ``forward`` must then depend only on
            tensors, shapes and the modules' own attributes (not on other Python state that
            changes between calls: a global, another object's attribute).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        lr: float = 0.01,
        steps: int = 1,
        loss: Loss = "mse",
        adapt: Sequence[str] | None = None,
        per_step_bn: bool = False,
        per_step_bn_weights: bool = False,
        task_batched: bool | None = None,
        output: Output = None,
        inner_optimizer: InnerSGD | None = None,
        lr_groups: dict[str, float] | None = None,
        trace: bool | None = None,
    ) -> None:
        super().__init__()
        check_loss(loss)
        if per_step_bn_weights and not per_step_bn:
            raise ValueError("per_step_bn_weights needs per_step_bn=True (MAML++ keeps both per step)")
        lr, steps = check_lr(lr), check_steps(steps)
        self.model = model
        self.bn_names = [n for n, m in model.named_modules() if isinstance(m, _BatchNorm)] if per_step_bn else []
        if per_step_bn:
            for i, name in enumerate(self.bn_names):
                bn = model.get_submodule(name)
                if not bn.track_running_stats:
                    raise ValueError(f"per_step_bn needs running statistics; {name} has track_running_stats=False")
                # Row s: statistics of the forward passes made with parameters after s steps.
                self.register_buffer(f"bn_mean_{i}", bn.running_mean.detach().repeat(steps + 1, 1))
                self.register_buffer(f"bn_var_{i}", bn.running_var.detach().repeat(steps + 1, 1))
        self.functional = FunctionalModel(model, output, self.bn_names, trace)
        forward_tasks = getattr(model, "forward_tasks", None)
        if task_batched and (not callable(forward_tasks) or per_step_bn):
            raise ValueError("task_batched=True needs a model with forward_tasks(params, x) and per_step_bn off")
        use = callable(forward_tasks) and task_batched is not False and not per_step_bn
        self.forward_tasks = forward_tasks if use else None
        self.lr = float(lr)
        self.steps = int(steps)
        self.loss = loss
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.step_affine = self._per_step_affine() if per_step_bn_weights else {}
        self.adapt_names = [n for n in names if n not in self.step_affine
                            and (adapt is None or any(n == a or n.startswith(a + ".") for a in adapt))]
        if not self.adapt_names:
            frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
            raise ValueError(f"adapt={adapt} leaves no parameter to adapt; trainable parameters: {names}"
                             + (f" (requires_grad=False, never adapted: {frozen})" if frozen else "")
                             + (" (per-step BatchNorm weights are not adapted)" if self.step_affine else ""))
        if inner_optimizer is not None and not isinstance(inner_optimizer, InnerSGD):
            raise ValueError(f"inner_optimizer: expected InnerSGD, Momentum or Adam, got {type(inner_optimizer).__name__}")
        self.inner_optimizer = inner_optimizer or InnerSGD()
        self.adapt_lrs = self._group_lrs(lr_groups or {})
        # check_batch's reference parameter through its slot (a lookup by name costs more than
        # the whole check), and what the model's first layer reads of an example, where known.
        owner, _, attr = self.adapt_names[0].rpartition(".")
        self._ref_slot = (model.get_submodule(owner)._parameters, attr)
        self.first_layer = first_layer(model)

    def __init_subclass__(cls, **kwargs: object) -> None:
        # Every learner's entry points (ours and users' subclasses) check and run alike (.entry).
        super().__init_subclass__(**kwargs)
        for name in ENTRY_POINTS:
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "entry_point", False):
                setattr(cls, name, entry_point(name in BATCH_ENTRY_POINTS)(method))

    def _group_lrs(self, groups: dict[str, float]) -> dict[str, float]:
        """Each adapted parameter's step size: its longest matching ``lr_groups`` prefix, else lr."""
        for prefix, value in groups.items():
            if not any(n == prefix or n.startswith(prefix + ".") for n in self.adapt_names):
                raise ValueError(f"lr_groups: {prefix!r} matches no adapted parameter; adapted: {self.adapt_names}")
            if not value > 0:
                raise ValueError(f"lr_groups: step sizes must be > 0, got {prefix!r}: {value}")
        lrs = {}
        for n in self.adapt_names:
            matches = [p for p in groups if n == p or n.startswith(p + ".")]
            lrs[n] = float(groups[max(matches, key=len)]) if matches else self.lr
        return lrs

    def _per_step_affine(self) -> dict[str, str]:
        """Registers ``bn_weight_i`` / ``bn_bias_i`` ``[steps + 1, C]``; maps the model's BatchNorm
        parameter names to them."""
        mapping = {}
        for i, name in enumerate(self.bn_names):
            bn = self.model.get_submodule(name)
            for kind in ("weight", "bias") if bn.affine else ():
                rows = getattr(bn, kind).detach().repeat(self.steps + 1, 1)
                self.register_parameter(f"bn_{kind}_{i}", nn.Parameter(rows))
                mapping[f"{name}.{kind}"] = f"bn_{kind}_{i}"
        return mapping

    # ----- functional pieces -------------------------------------------------------------
    def init_params(self) -> Params:
        named = self.functional.named_parameters()
        adapted = {n: named[n] for n in self.adapt_names}
        frozen = {n: p for n, p in named.items() if n not in adapted}
        return Params(adapted, frozen, step=0)

    def _step_buffers(self, step: int, tasks: int) -> tuple[dict[str, Tensor], int | None]:
        """BatchNorm buffers for a forward pass with parameters after ``step`` steps, and their vmap dim.

        Training mode gets per-task copies ``[T, C]``, which BatchNorm updates in place under vmap.
        """
        if not self.bn_names:
            return {}, None
        row = min(step, self.steps)
        buffers = {}
        for i, name in enumerate(self.bn_names):
            buffers[f"{name}.running_mean"] = getattr(self, f"bn_mean_{i}")[row]
            buffers[f"{name}.running_var"] = getattr(self, f"bn_var_{i}")[row]
        if not self.training or not buffers:
            return buffers, None
        batched = {k: v.expand(tasks, -1).clone() for k, v in buffers.items()}
        for name in self.bn_names:
            batched[f"{name}.num_batches_tracked"] = torch.zeros(tasks, dtype=torch.long, device=batched[f"{name}.running_mean"].device)
        return batched, 0

    def _commit_buffers(self, step: int, buffers: dict[str, Tensor]) -> None:
        if not self.training or not self.bn_names:  # nothing to commit: skip the no_grad context too
            return
        row = min(step, self.steps)
        with torch.no_grad():
            for i, name in enumerate(self.bn_names):
                getattr(self, f"bn_mean_{i}")[row] = buffers[f"{name}.running_mean"].mean(0)
                getattr(self, f"bn_var_{i}")[row] = buffers[f"{name}.running_var"].mean(0)

    def _over_tasks(
        self, adapted: dict[str, Tensor], frozen: dict[str, Tensor], step: int, batched: bool, x: Tensor
    ) -> Tensor:
        """The model vmapped over the task dimension (``adapted`` per task when ``batched``)."""
        if self.forward_tasks is not None:
            tasks = x.shape[0]
            params = {n: p.expand(tasks, *p.shape) for n, p in frozen.items()}
            params.update(adapted if batched else {n: p.expand(tasks, *p.shape) for n, p in adapted.items()})
            return self.forward_tasks(params, x)
        if self.step_affine:
            row = min(step, self.steps)
            frozen = {**frozen, **{n: getattr(self, attr)[row] for n, attr in self.step_affine.items()}}
        out, buffers = self.functional.over_tasks(adapted, frozen, batched, lambda: self._step_buffers(step, x.shape[0]), x)
        self._commit_buffers(step, buffers)
        return out

    def predict(self, params: Params, x: Tensor) -> Tensor:
        """Outputs ``[T, N, out]`` of each task's parameters on its inputs ``x [T, N, ...]``."""
        return self._over_tasks(params.adapted, params.frozen, params.step, params.per_task, x)

    def losses(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        return task_loss(self.predict(params, x), y, self.loss)

    def mean_loss(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        """``losses(params, x, y).mean()``, computed as :func:`mean_task_loss`."""
        return mean_task_loss(self.predict(params, x), y, self.loss)

    def _grads(self, params: Params, x: Tensor, y: Tensor, create_graph: bool) -> dict[str, Tensor | None]:
        """Per-task gradients ``[T, ...]`` of the support losses w.r.t. the adapted parameters
        (None for a parameter the loss does not use).

        Tasks are independent, so the gradient of the summed losses w.r.t. task-batched parameters
        (shared ones expanded to ``[T, ...]``) is every task's own gradient: one batched backward
        instead of a per-task ``grad`` transform. ``create_graph`` keeps the second-order term.
        """
        tasks = x.shape[0]
        with torch.enable_grad():  # evaluation runs under no_grad but still needs inner gradients
            inputs = {}
            for name, p in params.adapted.items():
                p = p if params.per_task else p.expand(tasks, *p.shape)
                inputs[name] = p if p.requires_grad else p.detach().requires_grad_()
            out = self._over_tasks(inputs, params.frozen, params.step, True, x)
            mean = mean_task_loss(out, y, self.loss)
            # Seeded with T: the gradient of the summed task losses (no multiplication node).
            grads = torch.autograd.grad(mean, list(inputs.values()), mean.new_full((), tasks),
                                        create_graph=create_graph, allow_unused=True)
        return dict(zip(inputs, grads))

    def step_lr(self, step: int) -> tuple[float | list[Tensor], int | None]:
        """The lr argument of ``ops.inner_update`` for inner step ``step`` (overridden by learned rates)."""
        if all(v == self.lr for v in self.adapt_lrs.values()):
            return self.lr, None
        named = dict(self.model.named_parameters())
        return [torch.full((), v, dtype=named[n].dtype, device=named[n].device) for n, v in self.adapt_lrs.items()], None

    def inner_loop(
        self, x: Tensor, y: Tensor, steps: int, *, first_order: bool, lr: float | None = None
    ) -> Iterator[Params]:
        """Yields the task-batched parameters after each of ``steps`` SGD steps on (x, y).

        ``first_order`` cuts the graph through the gradients (FOMAML); ``lr`` overrides α
        (used when fine-tuning a baseline at test time).
        """
        check_examples(x, y)
        params = self.init_params()
        for s in range(steps):
            grads = self._grads(params, x, y, create_graph=not first_order)
            step_lr, row = (lr, None) if lr is not None else self.step_lr(s)
            new, state = inner_step(params.adapted, grads, step_lr, row, x.shape[0], params.per_task,
                                    self.inner_optimizer, params.opt_state or {}, params.step + 1)
            params = Params(new, params.frozen, params.step + 1, state)
            yield params

    @entry_point(checks_batch=False)
    def adapt(self, x_support: Tensor, y_support: Tensor, steps: int | None = None) -> Params:
        """Per-task parameters after ``steps`` (default: training steps) on the support sets, for
        ``predict``: all tasks at once on the learner's loss (``clone().adapt(loss)`` is the
        one-task form: one step on a loss the caller computes)."""
        steps = self.steps if steps is None else check_steps(steps, minimum=0)
        check_examples(x_support, y_support)  # also for steps=0, where inner_loop never starts
        check_inputs(x_support, "x_support", self.first_layer)
        params = self.init_params()
        for params in self.inner_loop(x_support, y_support, steps, first_order=False):
            pass
        return params

    def clone(self, first_order: bool | None = None) -> TaskClone:
        """One task's differentiable copy of the initialisation, adapted with ``adapt(loss)`` on
        losses the caller computes (learn2learn's ``clone()``); see :class:`TaskClone`.
        ``first_order`` defaults to the learner's own setting."""
        if first_order is None:
            first_order = bool(getattr(self, "first_order", False))
        return TaskClone(self, first_order)

    def check_batch(self, batch: TaskBatch, ref: Tensor | None = None) -> None:
        """Device, dtype and shapes, each error naming the tensor, before any work: x and y
        ``[T, K, ...]`` with one T, query examples and labels shaped as the support's, and x as
        the model's first layer reads it where that is known (:func:`._checks.first_layer`: a
        2-D x without the task dimension is refused, not read as T tasks of one example).
        ``ref``: a parameter of the model the caller holds already."""
        if not isinstance(batch, TaskBatch):
            raise TypeError(f"batch: expected a maml_ext.tasks.TaskBatch, got {type(batch).__name__}")
        if ref is None:
            slots, attr = self._ref_slot
            ref = slots[attr]
        device, dtype = ref.device, ref.dtype
        for name in ("x_support", "y_support", "x_query", "y_query"):
            t = getattr(batch, name)
            if not isinstance(t, Tensor):
                raise TypeError(f"batch.{name}: expected a Tensor, got {type(t).__name__}")
            if t.device != device:
                raise RuntimeError(f"{name}: expected device {device} like the model's parameters, got {t.device}")
            if t.dtype != dtype and t.is_floating_point():
                raise TypeError(f"{name}: expected dtype {dtype} like the model's parameters, got {t.dtype}")
        check_examples(batch.x_support, batch.y_support)
        check_examples(batch.x_query, batch.y_query, "query", batch.x_support.shape[0])
        check_inputs(batch.x_support, "x_support", self.first_layer)
        check_alike("x_query", batch.x_query, "x_support", batch.x_support)  # so x_query passes check_inputs too
        check_alike("y_query", batch.y_query, "y_support", batch.y_support)

    # ----- algorithm interface ------------------------------------------------------------
    @abstractmethod
    def meta_loss(self, batch: TaskBatch, iteration: int = 0) -> Tensor:
        """Scalar whose value is the mean post-adaptation query loss and whose gradient is the
        algorithm's meta-gradient. ``iteration`` drives schedules (MAML++ annealing)."""

    def meta_grad(self, batch: TaskBatch, iteration: int = 0, scale: float = 1.0) -> Tensor:
        """Accumulate the gradient of ``scale · meta_loss(batch, iteration)`` into the parameters'
        ``.grad`` (as ``.backward()`` does) and return that scaled loss, detached. The training
        loops call this; learners with a faster route to the same gradient override it."""
        if not torch.is_grad_enabled():  # also inference mode; MAML's fused route comes here then
            raise RuntimeError("meta_grad accumulates the meta-gradient into .grad: call it with gradients enabled, "
                               "not under torch.no_grad() or torch.inference_mode() (for the meta-loss value alone: "
                               "meta_loss under either)")
        loss = self.meta_loss(batch, iteration) * scale
        loss.backward()
        return loss.detach()

    def forward(self, batch: TaskBatch, iteration: int = 0) -> Tensor:
        return self.meta_loss(batch, iteration)

    @entry_point(checks_batch=True)
    @torch.no_grad()
    def evaluate_metrics(self, batch: TaskBatch, steps: int, lr: float | None = None) -> dict[str, Tensor]:
        """Query metrics ``[steps + 1, T]`` after 0..steps adaptation steps on the support sets:
        "loss", plus "accuracy" for classification (cross_entropy)."""

        def metrics(params: Params) -> dict[str, Tensor]:
            out = self.predict(params, batch.x_query)
            found = {"loss": task_loss(out, batch.y_query, self.loss)}
            if self.loss == "cross_entropy":
                found["accuracy"] = (out.argmax(-1) == batch.y_query).float().mean(1)
            return found

        rows = [metrics(self.init_params())]
        for params in self.inner_loop(batch.x_support, batch.y_support, steps, first_order=True, lr=lr):
            rows.append(metrics(params))
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    def evaluate(self, batch: TaskBatch, steps: int, lr: float | None = None) -> Tensor:
        """Query losses ``[steps + 1, T]`` after 0..steps adaptation steps on the support sets."""
        return self.evaluate_metrics(batch, steps, lr)["loss"]
