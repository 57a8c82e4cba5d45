"""An MLP encoder to a Gaussian latent and an MLP head on it: the model MR-MAML(A) runs on."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .mlp import MLP


class BottleneckMLP(nn.Module):
    """``encoder``: MLP from the input to ``2 * latent`` features (the means of the latent, then
    its scale parameters); ``head``: MLP from the ``latent`` to the output. The paper's sinusoid
    model (Yin et al. 2020, MR-MAML(A)) is ``encoder_hidden=(80,)``, ``latent=5``,
    ``hidden=(40, 40)``.

    Its own ``forward`` is the deterministic path, the head on the means; ``mr-maml-a`` runs the
    two submodules itself (a draw of the latent per input in training)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (40, 40),
        encoder_hidden: Sequence[int] = (80,),
        latent: int = 5,
        activation: str = "relu",
        init: str = "torch",
    ) -> None:
        super().__init__()
        if isinstance(latent, bool) or not isinstance(latent, int) or latent < 1:
            raise ValueError(f"latent must be an integer >= 1, got {latent!r}")
        self.latent = latent
        self.encoder = MLP(in_features, 2 * latent, encoder_hidden, activation, init)
        self.head = MLP(latent, out_features, hidden, activation, init)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.narrow(self.encoder(x), -1, 0, self.latent))


def build(
    in_features: int,
    out_features: int,
    hidden: Sequence[int] = (40, 40),
    encoder_hidden: Sequence[int] = (80,),
    latent: int = 5,
    activation: str = "relu",
    init: str = "torch",
) -> BottleneckMLP:
    """Entry point ``maml_ext.models: bottleneck_mlp``."""
    return BottleneckMLP(in_features, out_features, hidden, encoder_hidden, latent, activation, init)
