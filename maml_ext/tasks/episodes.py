"""Generic N-way K-shot episodes over any labelled dataset held in memory."""

from __future__ import annotations

import torch
from torch import Tensor

from . import TaskBatch


class Episodes:
    """Task family of N-way classification episodes drawn from ``(inputs, labels)``.

    The label-to-indices table is built once. An episode picks ``n_way`` classes, then
    ``k_support + k_query`` distinct examples of each (k counts are *per class*); class c of the
    episode gets label c, in random class order. Everything is drawn from the given generator.
    """

    loss = "cross_entropy"

    def __init__(self, inputs: Tensor, labels: Tensor, n_way: int) -> None:
        if labels.dim() != 1 or labels.shape[0] != inputs.shape[0]:
            raise ValueError("labels must be 1-D with one label per input")
        classes, counts = torch.unique(labels, return_counts=True)
        if n_way < 1 or n_way > len(classes):
            raise ValueError(f"n_way must be in [1, {len(classes)}] (classes in the data), got {n_way}")
        self.inputs = inputs
        self.n_way = n_way
        self.in_features = int(inputs.shape[1]) if inputs.dim() > 1 else 1
        self.out_features = n_way
        self._classes = classes
        self._counts = counts
        # [C, max_count] table of example indices per class; rows padded with -1.
        order = torch.argsort(labels, stable=True)
        self._table = torch.full((len(classes), int(counts.max())), -1, dtype=torch.long)
        starts = torch.cumsum(counts, 0) - counts
        for c, (start, count) in enumerate(zip(starts.tolist(), counts.tolist())):
            self._table[c, :count] = order[start : start + count]

    def pick_classes(self, num_tasks: int, eligible: Tensor, generator: torch.Generator) -> Tensor:
        """``n_way`` distinct classes per task ``[T, N]`` (indices into the class table), in random order."""
        pick = torch.rand(num_tasks, len(eligible), generator=generator).argsort(dim=1)[:, : self.n_way]
        return eligible[pick]

    def sample(
        self, num_tasks: int, k_support: int, k_query: int, generator: torch.Generator
    ) -> TaskBatch:
        per_class = k_support + k_query
        eligible = torch.nonzero(self._counts >= per_class).flatten()
        if len(eligible) < self.n_way:
            raise ValueError(
                f"only {len(eligible)} classes have k_support + k_query = {per_class} examples; "
                f"n_way={self.n_way} needs that many"
            )
        classes = self.pick_classes(num_tasks, eligible, generator)  # [T, N]: class c gets label c
        # Distinct examples per class: sort random keys, padding slots pushed to the end.
        keys = torch.rand(num_tasks, self.n_way, self._table.shape[1], generator=generator)
        keys = keys.masked_fill(self._table[classes] < 0, 2.0)
        slots = keys.argsort(dim=2)[..., :per_class]
        idx = torch.gather(self._table[classes], 2, slots)  # [T, N, k_support + k_query]
        labels = torch.arange(self.n_way).view(1, self.n_way, 1).expand(num_tasks, -1, per_class)

        def take(part: slice) -> tuple[Tensor, Tensor]:
            i = idx[..., part].reshape(num_tasks, -1)
            return self.inputs[i], labels[..., part].reshape(num_tasks, -1)

        xs, ys = take(slice(0, k_support))
        xq, yq = take(slice(k_support, per_class))
        return TaskBatch(xs, ys, xq, yq, {"classes": self._classes[classes]})
