"""Few-shot image datasets read from their usual on-disk layouts (no downloads, no torchvision).

- :mod:`.omniglot`: ``images_background/`` + ``images_evaluation/`` of alphabet/character/*.png,
  the MAML paper's character split and rotations as new classes.
- :mod:`.miniimagenet`: the Ravi & Larochelle 64/16/20 split from image folders, CSV files or
  the pickled cache.
- :mod:`.glyphs`: an Omniglot-layout glyph set rendered offline from installed fonts.
- :mod:`.fewshot`: the ``omniglot`` / ``miniimagenet`` task plugins (N-way K-shot episodes).

Images are decoded once with Pillow into a uint8 array, cached on disk as ``.npy`` (loaded
memory-mapped) and in memory for the life of the process; see :mod:`.cache`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DatasetError(ValueError):
    """A dataset path is missing or does not have the expected layout."""


@dataclass(frozen=True)
class ImageSplit:
    """The images of one split: ``images`` uint8 ``[N, H, W]`` (grey) or ``[N, H, W, 3]`` (RGB),
    ``labels`` int64 ``[N]`` in ``0..len(classes)-1``, ``classes`` a name per label."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError("one label per image is required")

    @property
    def num_classes(self) -> int:
        return len(self.classes)


__all__ = ["DatasetError", "ImageSplit"]
