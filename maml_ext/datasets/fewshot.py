"""Task plugins ``omniglot``, ``glyphs`` and ``miniimagenet``: N-way K-shot episodes over image splits.

Meta-training samples from the ``train`` split; ``held_out`` is the family of the split used for
evaluation (``eval_split``: "test" by default, "val" for model selection), so no class seen in
training is ever evaluated on. Images are kept as uint8 and scaled to [0, 1] floats per episode.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from maml_ext.tasks import TaskBatch
from maml_ext.tasks.episodes import Episodes

from . import DatasetError, ImageSplit, miniimagenet, omniglot

EVAL_SPLITS = ("val", "test")


def _images(split: ImageSplit) -> Tensor:
    """uint8 ``[N, C, H, W]`` (a copy: cached arrays are read-only memory maps)."""
    images = torch.from_numpy(np.array(split.images))
    return images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2).contiguous()


class FewShot:
    """N-way episodes of one split; inputs ``[T, N·K, C, H, W]`` floats in [0, 1]."""

    loss = "cross_entropy"

    def __init__(self, split: ImageSplit, n_way: int, held_out: ImageSplit | None = None) -> None:
        images = _images(split)
        self.split = split
        self.episodes = Episodes(images, torch.from_numpy(np.asarray(split.labels)), n_way)
        self.in_features = int(images.shape[1])  # channels: what the conv models take
        self.out_features = n_way
        self.image_shape = tuple(images.shape[1:])
        self.held_out = FewShot(held_out, n_way) if held_out is not None else None

    def sample(self, num_tasks: int, k_support: int, k_query: int, generator: torch.Generator) -> TaskBatch:
        b = self.episodes.sample(num_tasks, k_support, k_query, generator)
        return TaskBatch(b.x_support.float().div_(255), b.y_support, b.x_query.float().div_(255), b.y_query, b.info)


def _family(splits: dict[str, ImageSplit], n_way: int, eval_split: str) -> FewShot:
    if eval_split not in EVAL_SPLITS:
        raise DatasetError(f"task.eval_split must be one of {EVAL_SPLITS}, got {eval_split!r}")
    return FewShot(splits["train"], int(n_way), splits[eval_split])


def build_omniglot(
    root: str,
    n_way: int = 5,
    image_size: int = 28,
    train_classes: int | float = 1200,
    val_classes: int | float = 100,
    rotations: Sequence[int] = (0, 90, 180, 270),
    eval_split: str = "test",
    seed: int = 1,
) -> FewShot:
    """Entry point ``maml_ext.tasks: omniglot`` (the paper's split and rotations by default)."""
    splits = omniglot.load(
        Path(root), image_size=int(image_size), train_classes=train_classes, val_classes=val_classes,
        rotations=tuple(int(r) for r in rotations), seed=int(seed),
    )
    return _family(splits, n_way, eval_split)


def build_glyphs(
    root: str = "data/glyphs",
    n_way: int = 5,
    image_size: int = 28,
    train_classes: float = 1200 / 1623,
    val_classes: float = 100 / 1623,
    rotations: Sequence[int] = (0, 90, 180, 270),
    eval_split: str = "test",
    seed: int = 1,
) -> FewShot:
    """Entry point ``maml_ext.tasks: glyphs``: Omniglot's loader and protocol on the rendered glyph
    set (``python -m maml_ext.datasets.glyphs build``), with Omniglot's split proportions."""
    if not (Path(root) / "manifest.json").is_file():
        raise DatasetError(f"no glyph set at {root}: build it with `python -m maml_ext.datasets.glyphs build --out {root}`")
    return build_omniglot(root, n_way, image_size, train_classes, val_classes, rotations, eval_split, seed)


def build_miniimagenet(root: str, n_way: int = 5, image_size: int = 84, eval_split: str = "test") -> FewShot:
    """Entry point ``maml_ext.tasks: miniimagenet`` (Ravi & Larochelle split)."""
    return _family(miniimagenet.load(Path(root), image_size=int(image_size)), n_way, eval_split)
