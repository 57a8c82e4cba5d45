"""Per-call plumbing of the fused MLP path, prepared once per learner.

On the paper's sinusoid config the fused kernel takes ~0.3 ms, so the Python around it counts:
walking ``named_parameters()`` and allocating the 1/T loss weights on every meta-iteration cost as
much as a tenth of the kernel. Here the parameters are read through their (module, attribute)
slots, which is cheap and still sees a parameter the user replaces, and the loss weights are
reused per (tasks, dtype, device).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn


class FusedMLPCall:
    """The op-ordered parameters and learning rates of a model on the fused path."""

    def __init__(self, model: nn.Module, param_names: Sequence[str], lr_names: Sequence[str] = ()) -> None:
        """``param_names``: the op's order; ``lr_names``: the names that the learner's learned
        learning rates follow, in their order (empty for a float lr)."""
        self._slots = []
        for name in param_names:
            owner, _, attr = name.rpartition(".")
            try:
                module = model.get_submodule(owner)
            except AttributeError:
                module = None
            if module is None or attr not in module._parameters:
                raise ValueError(f"param_names: {name!r} is not a parameter of the model")
            self._slots.append((module._parameters, attr))
        position = {n: i for i, n in enumerate(lr_names)}
        self._lr_order = [position[n] for n in param_names] if lr_names else []
        self._weights: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}

    def params(self) -> list[Tensor]:
        """The model's current parameters in the op's order."""
        return [slots[attr] for slots, attr in self._slots]

    def lrs(self, learned: Sequence[Tensor]) -> list[Tensor]:
        """The learned learning rates (in the learner's order) reordered as the parameters."""
        return [learned[i] for i in self._lr_order]

    def mean_weight(self, tasks: int, like: Tensor) -> Tensor:
        """The 1/T loss weights ``[tasks]`` (the mean over tasks), reused across calls."""
        key = (tasks, like.dtype, like.device)
        weight = self._weights.get(key)
        if weight is None:
            weight = self._weights[key] = like.new_full((tasks,), 1.0 / max(tasks, 1))
        return weight


class AdamState(NamedTuple):
    """An Adam optimizer's state and settings for an update applied inside the fused op
    (``ops.mlp_maml_adam_``), in the op's parameter order; updated in place there."""

    exp_avgs: list[Tensor]
    exp_avg_sqs: list[Tensor]
    step_counts: Tensor  # float32 [number of parameters], torch's fused-Adam step counts
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    eps: float
    maximize: bool
