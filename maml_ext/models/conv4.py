"""The MAML paper's classifiers: conv4 and the non-convolutional MLP, both with BatchNorm.

- ``conv4``: 4 × [3×3 conv, BatchNorm, ReLU]. ``pool="stride"`` (Omniglot, 64 filters): stride-2
  convolutions, then the spatial mean into the linear head. ``pool="max"`` (MiniImagenet, 32
  filters): stride-1 convolutions each followed by 2×2 max-pooling, then flatten into the head.
- ``mlp_bn``: flattened image → 256-128-64-64, each Linear followed by BatchNorm and ReLU → linear.

BatchNorm keeps no running statistics: batch statistics at training and test time, as in the
original MAML (per task, since each task is its own batch), which is also what ``vmap`` needs.

Both modules also run a whole meta-batch at once with per-task parameters
(:meth:`forward_tasks`): convolutions become one grouped convolution with one group per task,
BatchNorm one call over task×channel features, the head one batched matmul. The algorithms use it
instead of ``vmap`` when a model declares it (the ``task_batched`` option of :class:`maml_ext.algorithms.base.MetaLearner`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maml_ext.algorithms._checks import FirstLayer

BN_EPS = 1e-5


def _bn(h: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """Per-channel batch-statistics BatchNorm; ``h`` is ``[B, C, ...]``, weight/bias ``[C]`` (None:
    no scale and shift)."""
    return F.batch_norm(h, None, None, weight, bias, training=True, eps=BN_EPS)


def _head_tasks(feat: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``feat [T, B, F]`` through per-task Linear ``weight [T, out, F]`` → ``[T, B, out]``."""
    return torch.baddbmm(bias.unsqueeze(1), feat, weight.transpose(1, 2))


class Conv4(nn.Module):
    def __init__(
        self,
        in_channels: int = 1,
        out_features: int = 5,
        filters: int = 64,
        pool: str = "stride",
        image_size: int = 28,
        layers: int = 4,
        plain_norms: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if pool not in ("stride", "max"):
            raise ValueError(f"pool must be 'stride' or 'max', got {pool!r}")
        if filters < 1 or layers < 1 or image_size < 2**layers:
            raise ValueError(f"need filters >= 1, layers >= 1 and image_size >= 2**layers, got {filters}, {layers}, {image_size}")
        if isinstance(plain_norms, (str, int)) or not all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < layers for i in plain_norms):
            raise ValueError(f"plain_norms must be a list of layer indices in [0, {layers}), got {plain_norms!r}")
        self.pool = pool
        self.stride = 2 if pool == "stride" else 1
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels if i == 0 else filters, filters, 3, stride=self.stride, padding=1)
            for i in range(layers)
        )
        self.norms = nn.ModuleList(nn.BatchNorm2d(filters, track_running_stats=False, affine=i not in plain_norms)
                                   for i in range(layers))
        side = image_size
        for _ in range(layers):
            side = (side + 1) // 2 if pool == "stride" else side // 2
        self.head = nn.Linear(filters if pool == "stride" else filters * side * side, out_features)
        for conv in self.convs:  # the official code: Xavier convolutions, zero biases
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def input_rule(self) -> FirstLayer:
        """What :meth:`forward_tasks` reads, ``[T, K, C, H, W]``: the learners refuse other batches
        (``[T, C, H, W]``, ``[N, C, H, W]``) before any work."""
        c = self.convs[0].in_channels
        return FirstLayer(f"Conv4(in_channels={c})", 3, True, c)

    def _features(self, h: Tensor) -> Tensor:
        return h.mean((2, 3)) if self.pool == "stride" else h.flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for conv, norm in zip(self.convs, self.norms):
            h = F.relu(norm(conv(h)))
            if self.pool == "max":
                h = F.max_pool2d(h, 2)
        return self.head(self._features(h))

    def forward_tasks(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """Outputs ``[T, B, out]`` of T tasks' parameters (each ``[T, ...]``) on ``x [T, B, C, H, W]``."""
        T, B = x.shape[:2]
        h = x.transpose(0, 1).reshape(B, T * x.shape[2], *x.shape[3:])  # task t = channel group t
        for i in range(len(self.convs)):
            w = params[f"convs.{i}.weight"]
            h = F.conv2d(h, w.flatten(0, 1), params[f"convs.{i}.bias"].flatten(), self.stride, 1, groups=T)
            scale, shift = (params[f"norms.{i}.{n}"].flatten() if self.norms[i].affine else None for n in ("weight", "bias"))
            h = F.relu(_bn(h, scale, shift))
            if self.pool == "max":
                h = F.max_pool2d(h, 2)
        feat = self._features(h.view(B * T, -1, *h.shape[2:])).view(B, T, -1).transpose(0, 1)
        return _head_tasks(feat, params["head.weight"], params["head.bias"])


class MLPBN(nn.Module):
    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int] = (256, 128, 64, 64)) -> None:
        super().__init__()
        widths = [in_features, *hidden]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm1d(w, track_running_stats=False) for w in hidden)
        self.head = nn.Linear(widths[-1], out_features)

    def forward(self, x: Tensor) -> Tensor:
        h = x.flatten(1)
        for linear, norm in zip(self.linears, self.norms):
            h = F.relu(norm(linear(h)))
        return self.head(h)

    def forward_tasks(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        T, B = x.shape[:2]
        h = x.flatten(2)
        for i in range(len(self.linears)):
            h = _head_tasks(h, params[f"linears.{i}.weight"], params[f"linears.{i}.bias"])  # [T, B, F]
            # BatchNorm per task and feature: features of all tasks side by side, stats over B.
            flat = h.transpose(0, 1).reshape(B, -1)
            flat = _bn(flat, params[f"norms.{i}.weight"].flatten(), params[f"norms.{i}.bias"].flatten())
            h = F.relu(flat.view(B, T, -1).transpose(0, 1))
        return _head_tasks(h, params["head.weight"], params["head.bias"])


def build(
    in_features: int,
    out_features: int,
    filters: int = 64,
    pool: str = "stride",
    image_size: int = 28,
    layers: int = 4,
    plain_norms: Sequence[int] = (),
) -> Conv4:
    """Entry point ``maml_ext.models: conv4``; ``in_features`` is the number of input channels.
    ``plain_norms``: indices of the BatchNorm layers without a learned scale and shift."""
    return Conv4(in_features, out_features, int(filters), pool, int(image_size), int(layers), plain_norms)


def build_mlp_bn(
    in_features: int,
    out_features: int,
    image_size: int = 28,
    hidden: Sequence[int] = (256, 128, 64, 64),
) -> MLPBN:
    """Entry point ``maml_ext.models: mlp_bn``; the input is a ``in_features``-channel square
    image of side ``image_size``, flattened."""
    return MLPBN(in_features * int(image_size) ** 2, out_features, tuple(int(h) for h in hidden))
