"""Multi-step evaluation of learners on the fused MLP path, with the fused kernels.

The generic evaluation runs the model under ``vmap`` and one autograd backward per inner step.
For a learner that trains with the fused MLP op (``learner.fused_spec``) the whole evaluation
is one ``ops.mlp_maml_eval`` call: per task, the inner loop with the query outputs before each
step and after the last, no autograd graph. Same arithmetic as ``MetaLearner.inner_loop``
(equal to it in float64 to rounding).
"""

from __future__ import annotations

import torch
from torch import Tensor

from maml_ext import ops, reference
from maml_ext.algorithms import MetaLearner
from maml_ext.tasks import TaskBatch


def _uses_fused_inner_loop(learner: MetaLearner) -> bool:
    # Only MAML-style point learners declare a fused spec; a subclass with its own inner loop or
    # predictions would compute something else.
    return (
        getattr(learner, "fused_spec", None) is not None
        and type(learner).inner_loop is MetaLearner.inner_loop
        and type(learner).predict is MetaLearner.predict
    )


@torch.no_grad()
def fused_query_outputs(learner: MetaLearner, batch: TaskBatch, steps: int, lr: float | None) -> Tensor | None:
    """Query outputs ``[steps + 1, T, N, out]`` after 0..steps SGD steps on the support sets
    (``lr`` overrides the learner's rates, as in ``inner_loop``), or None when the learner is
    not on the fused MLP path (the caller then runs the generic evaluation)."""
    if not _uses_fused_inner_loop(learner):
        return None
    activation = learner.fused_spec.activation
    params = [p.detach() for p in learner._fused_call.params()]
    if steps == 0:  # nothing to adapt: the initialisation's outputs
        return reference.mlp_forward(params, batch.x_query, activation).unsqueeze(0)
    rates, per_step = _rates(learner, steps, lr)
    _, outs = ops.mlp_maml_eval(params, batch.x_support, batch.y_support, batch.x_query, batch.y_query, lr=rates,
                                steps=steps, per_step_lr=per_step, activation=activation, loss=learner.loss,
                                outputs=True)
    return outs


def _rates(learner: MetaLearner, steps: int, lr: float | None) -> tuple[float | list[Tensor], bool]:
    """The op's ``lr`` and ``per_step_lr`` for ``steps`` evaluation steps: the override, the
    learner's fixed rate, or its learned rates in the op's parameter order (per-step rates for
    steps beyond the trained ones repeat the last trained row, as ``learner.step_lr`` does)."""
    if lr is not None:
        return lr, False
    rates, row = learner.step_lr(0)
    if not isinstance(rates, (list, tuple)):
        return rates, False
    rates = learner._fused_call.lrs([r.detach() for r in rates])
    if row is None:
        return rates, False
    rows = torch.arange(steps, device=rates[0].device).clamp(max=learner.steps - 1)
    return [r.index_select(0, rows) for r in rates], True
