"""learn2learn-style per-task adaptation: ``clone()`` a learner, ``adapt(loss)`` on any loss.

The batched ``meta_loss`` is the fast path; a clone is for tasks that do not fit a
``TaskBatch`` (variable support sizes, losses built from several model calls, RL surrogates
written by hand). A clone is the learner's functional core with one task (``T = 1``), so it
uses the same inner update, learned rates and grouped-convolution forward as ``meta_loss``, and
backpropagating a clone's query loss gives the same exact meta-gradient.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .inner import inner_step

if TYPE_CHECKING:
    from .base import MetaLearner, Params


class TaskClone:
    """One task's copy of a learner's initialisation, differentiably connected to it.

    Usage::

        task = learner.clone()                      # MAML(model, lr=0.4) or any MetaLearner
        for _ in range(steps):
            task.adapt(loss_fn(task(x_support), y_support))
        loss_fn(task(x_query), y_query).backward()  # exact second-order meta-gradient

    Like a learn2learn clone it is ``nn.Module``-like: callable, ``parameters()``,
    ``named_parameters()``, ``clone()`` and ``detach()``. It holds differentiable copies of the
    initialisation, so stepping the model in place (``meta_opt.step()``) does not change it.

    Args:
        learner: the meta-learner whose initialisation (and learned rates, adapt names) it uses.
        first_order: drop the second-order term in ``adapt`` (FOMAML).
    """

    def __init__(self, learner: MetaLearner, first_order: bool, params: Params | None = None) -> None:
        if learner.bn_names:
            raise ValueError("clone() cannot keep per-step BatchNorm statistics (per_step_bn=True): use meta_loss")
        self.learner = learner
        self.first_order = bool(first_order)
        if params is None:
            init = learner.init_params()
            params = init._replace(adapted={n: p.clone() for n, p in init.adapted.items()},
                                   frozen={n: p.clone() for n, p in init.frozen.items()})
        self.params: Params = params
        self._shaped = self._model_shaped()

    def _model_shaped(self) -> dict[str, Tensor]:
        """The adapted parameters in the model's shapes; forward passes use these very tensors,
        so ``torch.autograd.grad(loss, clone.parameters())`` works as on a module."""
        return {n: p[0] if self.params.per_task else p for n, p in self.params.adapted.items()}

    @property
    def steps_taken(self) -> int:
        return self.params.step

    def __call__(self, x: Tensor) -> Tensor:
        """The model's output on ``x [N, ...]`` with this task's current parameters (for a model
        returning a tuple or dict, the part the learner's ``output`` selects)."""
        adapted = {n: p.unsqueeze(0) for n, p in self._shaped.items()} if self.params.per_task else self._shaped
        return self.learner.predict(self.params._replace(adapted=adapted), x.unsqueeze(0))[0]

    def named_parameters(self) -> Iterator[tuple[str, Tensor]]:
        """This task's current parameters, in the model's order and shapes."""
        for name, _ in self.learner.model.named_parameters():
            if name in self._shaped:
                yield name, self._shaped[name]
            else:
                yield name, self.params.frozen[name]

    def parameters(self) -> Iterator[Tensor]:
        return (p for _, p in self.named_parameters())

    def clone(self) -> TaskClone:
        """A copy that adapts independently from here on, still connected to the initialisation."""
        return TaskClone(self.learner, self.first_order, self.params)

    def detach(self) -> TaskClone:
        """A copy with this task's current values and no graph to the initialisation (adapting it
        still works; its losses give no meta-gradient)."""
        adapted = {n: p.detach().requires_grad_() for n, p in self.params.adapted.items()}
        frozen = {n: p.detach() for n, p in self.params.frozen.items()}
        return TaskClone(self.learner, self.first_order, self.params._replace(adapted=adapted, frozen=frozen))

    def adapt(self, loss: Tensor, lr: float | None = None) -> TaskClone:
        """One SGD step on ``loss`` (a scalar, or a one-element tensor such as ``(1, 1)``,
        computed from this clone's outputs); returns self. (``learner.adapt(x, y)`` is the
        batched form: every task's support set, the learner's loss, per-task parameters back.)

        ``lr`` overrides the learner's step size (and its learned rates, if any)."""
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(f"loss: expected a scalar (one-element) tensor, got {shape}")
        if lr is not None and not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        names = list(self.params.adapted)
        with torch.enable_grad():
            grads = torch.autograd.grad(loss.reshape(()), [self.params.adapted[n] for n in names],
                                        create_graph=not self.first_order, allow_unused=True)
        if not self.params.per_task:  # shared θ takes task-batched [1, ...] gradients
            grads = [None if g is None else g.unsqueeze(0) for g in grads]
        step_lr, row = (lr, None) if lr is not None else self.learner.step_lr(self.params.step)
        new, state = inner_step(self.params.adapted, dict(zip(names, grads)), step_lr, row, 1, self.params.per_task,
                                self.learner.inner_optimizer, self.params.opt_state or {}, self.params.step + 1)
        self.params = self.params._replace(adapted=new, step=self.params.step + 1, opt_state=state)
        self._shaped = self._model_shaped()
        return self
