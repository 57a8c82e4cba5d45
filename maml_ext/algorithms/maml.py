"""MAML and its gradient-through-adaptation variants: FOMAML, Meta-SGD, ANIL and MAML++ options."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maml_ext import ops
from maml_ext.models import FusedMLPSpec
from maml_ext.tasks import TaskBatch

from .base import Loss, MetaLearner
from .functional import Output
from .fusable import choose_spec
from .fused_call import FusedMLPCall
from .inner import InnerSGD
from .whole import WholeRecorder

LEARN_LR = ("none", "elementwise", "per_step")
# How a learned step size α is stored: as is (any sign, as in the Meta-SGD paper), or as a raw
# parameter r with α = softplus(r) or α = exp(r) (always positive).
LR_PARAMETERISATIONS = {
    "identity": (lambda r: r, lambda a: a),
    "softplus": (F.softplus, lambda a: a + torch.log(-torch.expm1(-a))),
    "exp": (torch.exp, torch.log),
}


# What the recorded meta-gradient runs: a subclass overriding one of these keeps the stepwise path.
RECORDED_METHODS = ("_stepwise_meta_loss", "inner_loop", "init_params", "_grads", "step_lr", "learned_lrs",
                    "predict", "mean_loss", "_over_tasks", "_step_buffers", "_commit_buffers")


def msl_weights(steps: int, iteration: int, anneal: int) -> Tensor:
    """MAML++ multi-step-loss weights: uniform at first, then decayed linearly over ``anneal``
    iterations towards the last step (non-final weights floor at 0.03/steps, as in MAML++)."""
    decay = iteration / (steps * anneal)
    floor = 0.03 / steps
    w = torch.full((steps,), max(1.0 / steps - decay, floor))
    w[-1] = 1.0 - w[:-1].sum()
    return w


class MAML(MetaLearner):
    """Model-agnostic meta-learning (Finn et al. 2017) over a task-batched functional core.

    Usage::

        learner = MAML(model, lr=0.01, steps=1)
        loss = learner.meta_loss(batch)   # TaskBatch of T tasks, adapted together
        loss.backward(); meta_opt.step()

    Args (beyond :class:`MetaLearner`'s):
        first_order: drop the second-order term (FOMAML).
        learn_lr: "none" (fixed α), "elementwise" (Meta-SGD: a learned α per parameter entry) or
            "per_step" (MAML++ LSLR: a learned α per parameter tensor and inner step).
        lr_parameterisation: how a learned α is stored: "identity" (α itself, any sign: a
            learned α may turn negative, as Meta-SGD allows), "softplus" or "exp" (α =
            softplus(r) or exp(r) of a raw parameter r: always positive).
        multi_step_loss: MAML++ MSL; the number of iterations over which the per-step query-loss
            weights anneal from uniform to the last step (0: only the final query loss).
        second_order_after: MAML++ derivative-order annealing; first-order meta-gradients for
            iterations before this one, second order afterwards.
        fused: use ``ops.mlp_maml`` for models that declare a fused MLP spec or are a plain
            ``nn.Sequential`` of ``nn.Linear`` and ReLU/Tanh (detected; None: whenever possible;
            it is skipped for ANIL, multi-step loss, frozen, shared or hooked parameters and
            anything else it would compute differently).
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.01,
        steps: int = 1,
        *,
        first_order: bool = False,
        loss: Loss = "mse",
        adapt: Sequence[str] | None = None,
        learn_lr: str = "none",
        lr_parameterisation: str = "identity",
        multi_step_loss: int = 0,
        second_order_after: int = 0,
        per_step_bn: bool = False,
        per_step_bn_weights: bool = False,
        task_batched: bool | None = None,
        fused: bool | None = None,
        output: Output = None,
        inner_optimizer: InnerSGD | None = None,
        lr_groups: dict[str, float] | None = None,
        trace: bool | None = None,
    ) -> None:
        super().__init__(
            model, lr=lr, steps=steps, loss=loss, adapt=adapt, per_step_bn=per_step_bn,
            per_step_bn_weights=per_step_bn_weights, task_batched=task_batched, output=output,
            inner_optimizer=inner_optimizer, lr_groups=lr_groups, trace=trace,
        )
        if learn_lr not in LEARN_LR:
            raise ValueError(f"learn_lr must be one of {LEARN_LR}, got {learn_lr!r}")
        if lr_parameterisation not in LR_PARAMETERISATIONS:
            raise ValueError(
                f"lr_parameterisation must be one of {tuple(LR_PARAMETERISATIONS)}, got {lr_parameterisation!r}"
            )
        if multi_step_loss < 0 or second_order_after < 0:
            raise ValueError("multi_step_loss and second_order_after must be >= 0")
        self.first_order = first_order
        self.learn_lr = learn_lr
        self.multi_step_loss = multi_step_loss
        self.second_order_after = second_order_after
        self.lr_parameterisation = lr_parameterisation
        named = dict(model.named_parameters())
        # self.lrs holds the raw parameters r (α = transform(r), see learned_lrs).
        raw = LR_PARAMETERISATIONS[lr_parameterisation][1]
        if learn_lr == "elementwise":
            self.lrs = nn.ParameterList(
                nn.Parameter(raw(torch.full_like(named[n], self.adapt_lrs[n])).detach()) for n in self.adapt_names
            )
        elif learn_lr == "per_step":
            ref = named[self.adapt_names[0]]
            self.lrs = nn.ParameterList(
                nn.Parameter(raw(torch.full((steps,), self.adapt_lrs[n], dtype=ref.dtype, device=ref.device)))
                for n in self.adapt_names
            )
        self.fused_spec = self._fused_spec(fused)
        if self.fused_spec is not None:
            lr_names = self.adapt_names if learn_lr != "none" else ()
            self._fused_call = FusedMLPCall(model, self.fused_spec.param_names, lr_names)
        # The whole meta-gradient recorded (.whole) where the forward is (trace) and nothing a
        # subclass overrides could read state a recording would freeze (MR-MAML's noise, say).
        own = all(getattr(type(self), m) is getattr(MAML, m) for m in RECORDED_METHODS)
        whole = self.fused_spec is None and self.functional.recorder is not None and own
        self.whole_recorder = WholeRecorder(self.functional.recorder) if whole else None

    def _fused_spec(self, fused: bool | None) -> FusedMLPSpec | None:
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        return choose_spec(self.model, fused, (
            ("only part of the model is adapted (ANIL)", self.adapt_names != names),
            ("multi_step_loss needs every step's query loss", self.multi_step_loss > 0),
            ("per-step BatchNorm statistics", bool(self.bn_names)),
            ("a custom loss function (the fused op computes mse and cross_entropy)", callable(self.loss)),
            ("an inner optimizer other than plain SGD", type(self.inner_optimizer) is not InnerSGD),
            ("per-group step sizes (lr_groups)", len(set(self.adapt_lrs.values())) > 1 and self.learn_lr == "none"),
        ))

    def learned_lrs(self) -> list[Tensor]:
        """The learned step sizes α, one tensor per adapted parameter (differentiable)."""
        transform = LR_PARAMETERISATIONS[self.lr_parameterisation][0]
        return [transform(r) for r in self.lrs]

    def step_lr(self, step: int) -> tuple[float | list[Tensor], int | None]:
        if self.learn_lr == "none":
            return super().step_lr(step)
        # Evaluation may run more steps than training: later steps reuse the last learned row.
        return self.learned_lrs(), (min(step, self.steps - 1) if self.learn_lr == "per_step" else None)

    def uses_first_order(self, iteration: int) -> bool:
        return self.first_order or iteration < self.second_order_after

    def meta_loss(self, batch: TaskBatch, iteration: int = 0) -> Tensor:
        first_order = self.uses_first_order(iteration)
        if self.fused_spec is not None:  # the batch was checked on entry (.entry)
            return self._fused_meta_loss(batch, first_order)
        weights = msl_weights(self.steps, iteration, self.multi_step_loss) if self.multi_step_loss else None
        data = (batch.x_support, batch.y_support, batch.x_query, batch.y_query)
        if self.whole_recorder is not None:
            recorded = self._recorded_meta_loss(data, first_order, weights)
            if recorded is not None:
                return recorded
        return self._stepwise_meta_loss(*data, first_order, weights)

    def _stepwise_meta_loss(self, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor, first_order: bool,
                            weights: Tensor | None) -> Tensor:
        total = None  # no zero to start from: one add and its backward node fewer
        for s, params in enumerate(self.inner_loop(xs, ys, self.steps, first_order=first_order)):
            if weights is None and s < self.steps - 1:
                continue
            query = self.mean_loss(params, xq, yq)
            query = query if weights is None else weights[s] * query
            total = query if total is None else total + query
        return total

    def _recorded_meta_loss(self, data: tuple[Tensor, ...], first_order: bool, weights: Tensor | None) -> Tensor | None:
        """The meta-loss from the recorded whole meta-gradient (:mod:`.whole`); None where the
        step-by-step path must run (see there)."""
        functional = self.functional
        recorder = functional.recorder
        if (not torch.is_grad_enabled() or not recorder.enabled or self.bn_names or self.forward_tasks is not None
                or callable(self.loss) or type(self.inner_optimizer).__module__ != InnerSGD.__module__):
            return None
        slots = [(d, a) for d, a, _ in functional.param_slots]
        if self.learn_lr != "none":
            slots += [(self.lrs._parameters, k) for k in self.lrs._parameters]
        tensors = tuple(d[a] for d, a in slots)
        data = data if weights is None else (*data, weights)
        settings = (first_order, self.steps, self.lr, tuple(self.adapt_lrs.values()), self.loss,
                    repr(self.inner_optimizer), self.learn_lr, self.lr_parameterisation)
        key = recorder.key(tuple(a for _, a in slots), settings, (*data, *tensors))
        if key is None:  # hooks
            return None

        def meta_loss(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor, *w: Tensor) -> Tensor:
            functional.recorder = None  # the forward is recorded as part of the whole (no nested tracing)
            try:
                return self._stepwise_meta_loss(xs, ys, xq, yq, first_order, w[0] if w else None)
            finally:
                functional.recorder = recorder

        return self.whole_recorder.run(key, slots, meta_loss, data, tensors)

    def meta_grad(self, batch: TaskBatch, iteration: int = 0, scale: float = 1.0) -> Tensor:
        """As :meth:`MetaLearner.meta_grad`, with the same result. On the fused path the gradients
        come from one ``ops.mlp_maml_grad`` call and are accumulated into ``.grad`` directly:
        ``meta_loss(batch).backward()`` now does the same without torch's engine where nothing
        needs it (``ops.MetaLoss``; benchmarks/RESULTS.md, the literal path without the engine)."""
        call = self._fused_call if self.fused_spec is not None else None
        # A subclass's own meta_loss (a penalty, say) defines its gradient: backward it.
        if call is None or not torch.is_grad_enabled() or type(self).meta_loss is not MAML.meta_loss:
            return super().meta_grad(batch, iteration, scale)
        params = call.params()
        if _has_grad_hooks((*params, *self.lrs) if self.learn_lr != "none" else params):
            return super().meta_grad(batch, iteration, scale)
        self.check_batch(batch, params[0])
        lrs, kwargs = self._fused_args(batch, self.uses_first_order(iteration), params)
        query_loss, grads, lr_grads = ops.mlp_maml_grad(params, batch.x_support, batch.y_support,
                                                        batch.x_query, batch.y_query, **kwargs)
        # The same products as autograd's: loss · scale forward, grad · scale backward.
        chained = []
        for t, g in zip((*params, *lrs), (*grads, *lr_grads)):
            if not t.requires_grad:
                continue
            if scale != 1.0:
                g = g * scale
            if t.grad_fn is not None:  # a transformed learned rate α = f(r): chain through f
                chained.append((t, g))
            elif t.grad is None:
                t.grad = g
            else:
                t.grad += g
        if chained:
            torch.autograd.backward([t for t, _ in chained], [g for _, g in chained])
        loss = (query_loss * kwargs["loss_weight"]).sum()
        return loss if scale == 1.0 else loss * scale

    def meta_step_adam_(self, batch: TaskBatch, optimizer: object, iteration: int = 0,
                        clip_value: float | None = None) -> tuple[float, bool] | None:
        """A whole training step in one op call (``ops.mlp_maml_adam_``): the meta-gradient of
        ``meta_loss(batch, iteration)``, clipped to [-clip_value, clip_value], and ``optimizer``'s
        Adam update of the parameters, applied only when the loss and gradient are finite; ``.grad``
        is not touched. Returns (the meta-loss, whether the update was applied), or None where
        this does not apply and nothing was done (then: ``meta_grad`` and ``optimizer.step()``):
        off the compiled CPU fused path, learned step sizes, a subclass's own ``meta_loss`` or
        ``meta_grad``, gradient hooks, or an optimizer whose ``fused_state(params)`` (see
        ``train.optim.LeanFusedAdam``) offers no plain Adam state for exactly these parameters.
        On the paper's sinusoid config a meta-iteration then costs 1.11x the bare ``mlp_maml_grad``
        call instead of 1.23x (benchmarks/RESULTS.md, issue 14.2, third pass)."""
        call = self._fused_call if self.fused_spec is not None else None
        if (call is None or self.learn_lr != "none" or type(self).meta_loss is not MAML.meta_loss
                or type(self).meta_grad is not MAML.meta_grad or not ops.extension_available()):
            return None
        params = call.params()
        fused_state = getattr(optimizer, "fused_state", None)
        state = fused_state(params) if fused_state is not None and params[0].device.type == "cpu" else None
        if state is None or _has_grad_hooks(params):
            return None
        # No check_batch: the op checks the same (each error naming the tensor) before any work.
        x = batch.x_support
        loss, applied, _ = ops.mlp_maml_adam_(
            params, x, batch.y_support, batch.x_query, batch.y_query, lr=self.lr, steps=self.steps,
            activation=self.fused_spec.activation, loss=self.loss, first_order=self.uses_first_order(iteration),
            loss_weight=call.mean_weight(x.shape[0] if x.dim() == 3 else 0, params[0]),
            exp_avgs=state.exp_avgs, exp_avg_sqs=state.exp_avg_sqs, step_counts=state.step_counts,
            adam_lr=state.lr, betas=state.betas, weight_decay=state.weight_decay, eps=state.eps,
            maximize=state.maximize, clip_value=clip_value,
        )
        return loss.item(), applied

    def _fused_args(self, batch: TaskBatch, first_order: bool, params: list[Tensor]) -> tuple[list[Tensor], dict]:
        """The op's learned-rate tensors (empty for a float lr) and keyword arguments."""
        call = self._fused_call
        lrs = [] if self.learn_lr == "none" else call.lrs(self.learned_lrs())
        kwargs = dict(
            lr=lrs or self.lr, steps=self.steps, per_step_lr=self.learn_lr == "per_step",
            activation=self.fused_spec.activation, loss=self.loss, first_order=first_order,
            loss_weight=call.mean_weight(batch.x_support.shape[0], params[0]),
        )
        return lrs, kwargs

    def _fused_meta_loss(self, batch: TaskBatch, first_order: bool) -> Tensor:
        params = self._fused_call.params()
        _, kwargs = self._fused_args(batch, first_order, params)
        # The mean query loss, with the meta-gradient computed in the same kernel call.
        return ops.mlp_maml_loss(params, batch.x_support, batch.y_support, batch.x_query, batch.y_query, **kwargs)


def _has_grad_hooks(tensors: Sequence[Tensor]) -> bool:
    """Whether a tensor hook would see the gradient (only ``.backward()`` runs them)."""
    return any(t._backward_hooks or getattr(t, "_post_accumulate_grad_hooks", None) for t in tensors)
