"""The paper's baseline: pretrain one model on all tasks jointly, fine-tune at test time."""

from __future__ import annotations

import torch
from torch import Tensor

from maml_ext.tasks import TaskBatch

from .base import MetaLearner


class Pretrain(MetaLearner):
    """Meta-training minimises the unadapted loss on every task's support and query data; at
    evaluation the model is fine-tuned with ``lr`` for the requested steps like any learner."""

    def meta_loss(self, batch: TaskBatch, iteration: int = 0) -> Tensor:
        x = torch.cat([batch.x_support, batch.x_query], dim=1)
        y = torch.cat([batch.y_support, batch.y_query], dim=1)
        return self.losses(self.init_params(), x, y).mean()
