"""Multi-step evaluation of learners on the fused MLP path, with the fused kernels.

The generic evaluation runs the model under ``vmap`` and one autograd backward per inner step.
For a learner that trains with the fused MLP op (``learner.fused_spec``) the same inner loop is
one ``ops.mlp_hvp`` call per step (every task's support loss gradient in one kernel, no autograd
graph) and one ``ops.inner_update``; the query outputs after each step are one batched matmul
chain. Same arithmetic as ``MetaLearner.inner_loop`` (equal to it in float64 to rounding).
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
    call, activation = learner._fused_call, learner.fused_spec.activation
    params = [p.detach() for p in call.params()]
    outs = [reference.mlp_forward(params, batch.x_query, activation)]
    tasks = batch.x_support.shape[0]
    for s in range(steps):
        per_task = params if s else [p.expand(tasks, *p.shape) for p in params]
        _, grads, _ = ops.mlp_hvp(per_task, batch.x_support, batch.y_support, activation=activation,
                                  loss=learner.loss)
        step_lr, row = (lr, None) if lr is not None else learner.step_lr(s)
        if isinstance(step_lr, (list, tuple)):  # learned rates, in the learner's parameter order
            step_lr = call.lrs(step_lr)
        params = ops.inner_update(params, grads, step_lr, row)
        outs.append(reference.mlp_forward(params, batch.x_query, activation))
    return torch.stack(outs)
