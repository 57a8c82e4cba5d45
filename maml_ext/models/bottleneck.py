"""An encoder to a Gaussian latent and an MLP head on it: the models MR-MAML(A) runs on (an MLP
encoder for vectors, ``bottleneck_mlp``; conv4 for images, ``bottleneck_conv4``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .conv4 import Conv4
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


class BottleneckConv4(nn.Module):
    """``encoder``: conv4 (4 × [3×3 conv, BatchNorm on batch statistics, ReLU], its linear layer
    to ``2 * latent`` features: the means, then the scale parameters); ``head``: MLP from the
    ``latent`` to the classes (``hidden=()``: one linear layer, as conv4's own head). The image
    version of :class:`BottleneckMLP`, for MR-MAML(A) on few-shot classification; its
    ``forward`` is the deterministic path, the head on the means."""

    def __init__(
        self,
        in_channels: int,
        out_features: int,
        hidden: Sequence[int] = (),
        latent: int = 32,
        filters: int = 64,
        pool: str = "stride",
        image_size: int = 28,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if isinstance(latent, bool) or not isinstance(latent, int) or latent < 1:
            raise ValueError(f"latent must be an integer >= 1, got {latent!r}")
        self.latent = latent
        self.encoder = Conv4(in_channels, 2 * latent, filters, pool, image_size)
        self.head = MLP(latent, out_features, hidden, activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.narrow(self.encoder(x), -1, 0, self.latent))


def build_conv4(
    in_features: int,
    out_features: int,
    hidden: Sequence[int] = (),
    latent: int = 32,
    filters: int = 64,
    pool: str = "stride",
    image_size: int = 28,
    activation: str = "relu",
) -> BottleneckConv4:
    """Entry point ``maml_ext.models: bottleneck_conv4``; ``in_features`` is the number of input channels."""
    return BottleneckConv4(in_features, out_features, hidden, latent, int(filters), pool, int(image_size), activation)
