"""Reptile (Nichol et al. 2018): move the initialisation towards the task-adapted weights."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from maml_ext.tasks import TaskBatch

from .base import MetaLearner


class Reptile(MetaLearner):
    """Adapts on each task's support and query data together (no graph through the inner loop);
    the meta-gradient is θ − mean_t φ_t, so an SGD outer step with rate ε is Reptile's
    θ ← θ + ε (φ̄ − θ), and Adam gives the batched Adam variant."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.steps == 1:
            # θ − φ̄ = α · mean_t ∇L_t(θ) on support + query: joint training, which Adam (scale-free)
            # turns into exactly the pretrain baseline.
            warnings.warn("Reptile with steps=1 is joint training on all tasks (with Adam: the 'pretrain' "
                          "baseline); Reptile needs several inner steps, e.g. algorithm.steps=5",
                          UserWarning, stacklevel=2)

    def meta_loss(self, batch: TaskBatch, iteration: int = 0) -> Tensor:
        x = torch.cat([batch.x_support, batch.x_query], dim=1)
        y = torch.cat([batch.y_support, batch.y_query], dim=1)
        params = self.init_params()
        for params in self.inner_loop(x, y, self.steps, first_order=True):
            pass
        start = self.init_params().adapted
        # 0.5·‖θ − stopgrad(φ̄)‖² has gradient θ − φ̄; shifted so its value is the query loss.
        pull = sum(0.5 * (start[n] - p.detach().mean(0)).pow(2).sum() for n, p in params.adapted.items())
        with torch.no_grad():
            query = self.losses(params, batch.x_query, batch.y_query).mean()
        return query + pull - pull.detach()
