"""Omniglot (Lake et al. 2015) from its original layout, with the MAML paper's split.

Layout (the two folders of the official release, unzipped)::

    ROOT/images_background/<alphabet>/<character>/*.png
    ROOT/images_evaluation/<alphabet>/<character>/*.png

Every character of both folders is one class (1623 in the real set, 20 drawings each). As in the
official MAML code, the characters are shuffled with a fixed seed, the first 1200 are for
meta-training (the last 100 of them held out for validation) and the rest for testing; each split
then gains the rotations by 90, 180 and 270 degrees as new classes. Images are resized to 28×28
(Lanczos, as the paper's ``resize_images.py``) and stored as ink intensity (stroke = 255).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from . import DatasetError, ImageSplit
from .cache import cached_array, key

SUBSETS = ("images_background", "images_evaluation")
SPLITS = ("train", "val", "test")
LAYOUT = (
    "expected the Omniglot layout: ROOT/images_background/<alphabet>/<character>/*.png and/or "
    "ROOT/images_evaluation/<alphabet>/<character>/*.png (the two folders of the official release, unzipped)"
)


def characters(root: str | Path) -> list[tuple[str, list[Path]]]:
    """``("<alphabet>/<character>", [png paths])`` for every character, sorted; checks the layout."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"Omniglot root {root} does not exist; {LAYOUT}")
    subsets = [root / s for s in SUBSETS if (root / s).is_dir()]
    if not subsets:
        found = sorted(p.name for p in root.iterdir())[:10]
        raise DatasetError(f"{root} has neither {SUBSETS[0]}/ nor {SUBSETS[1]}/ (found {found}); {LAYOUT}")
    chars: dict[str, list[Path]] = {}
    for subset in subsets:
        for alphabet in sorted(p for p in subset.iterdir() if p.is_dir()):
            for char in sorted(p for p in alphabet.iterdir() if p.is_dir()):
                name = f"{alphabet.name}/{char.name}"
                if name in chars:
                    raise DatasetError(f"character {name} appears in both {SUBSETS[0]} and {SUBSETS[1]}; {LAYOUT}")
                pngs = sorted(char.glob("*.png"))
                if not pngs:
                    raise DatasetError(f"character folder {char} holds no .png images; {LAYOUT}")
                chars[name] = pngs
    if not chars:
        raise DatasetError(f"no <alphabet>/<character>/ folders under {', '.join(map(str, subsets))}; {LAYOUT}")
    return sorted(chars.items())


def _decode(paths: list[Path], size: int) -> np.ndarray:
    out = np.empty((len(paths), size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                grey = im.convert("L").resize((size, size), Image.LANCZOS)
        except OSError as exc:
            raise DatasetError(f"cannot decode {path}: {exc}") from exc
        out[i] = 255 - np.asarray(grey)  # ink intensity: strokes are dark on white in the PNGs
    return out


def _count(value: int | float, total: int, what: str) -> int:
    """A class count given as a number, or as a fraction (0 < value < 1) of ``total``."""
    n = round(value * total) if isinstance(value, float) and 0 < value < 1 else int(value)
    if n < 1:
        raise DatasetError(f"{what} must be >= 1 (or a fraction in (0, 1)), got {value}")
    return n


def load(
    root: str | Path,
    *,
    image_size: int = 28,
    train_classes: int | float = 1200,
    val_classes: int | float = 100,
    rotations: tuple[int, ...] = (0, 90, 180, 270),
    seed: int = 1,
) -> dict[str, ImageSplit]:
    """The ``train`` / ``val`` / ``test`` splits.

    ``train_classes`` characters (including the ``val_classes`` validation ones) go to
    meta-training, the rest to test, after a shuffle with ``seed``; counts may be fractions of
    the characters found. Each rotation in ``rotations`` (degrees, multiples of 90) makes a new
    class, named ``<alphabet>/<character>/rot<deg>``.
    """
    if not rotations or any(r % 90 for r in rotations) or len(set(rotations)) != len(rotations):
        raise DatasetError(f"rotations must be distinct multiples of 90 degrees, got {rotations}")
    chars = characters(root)
    n_train = _count(train_classes, len(chars), "train_classes")
    n_val = _count(val_classes, len(chars), "val_classes")
    if not n_val < n_train < len(chars):
        raise DatasetError(
            f"need val_classes < train_classes < characters found; got {n_val}, {n_train}, {len(chars)} in {root}"
        )
    paths = [p for _, ps in chars for p in ps]
    owner = np.repeat(np.arange(len(chars)), [len(ps) for _, ps in chars])
    options = {"size": image_size}
    images = cached_array(key("omniglot", options, paths), lambda: _decode(paths, image_size))

    order = np.random.RandomState(seed).permutation(len(chars))
    members = {
        "train": order[: n_train - n_val],
        "val": order[n_train - n_val : n_train],
        "test": order[n_train:],
    }
    splits = {}
    for split, char_ids in members.items():
        char_ids = np.sort(char_ids)
        rows = np.flatnonzero(np.isin(owner, char_ids))
        base = np.searchsorted(char_ids, owner[rows])  # 0..len(char_ids)-1
        imgs, labels = [], []
        for r, degrees in enumerate(rotations):
            imgs.append(np.rot90(images[rows], k=degrees // 90, axes=(1, 2)))
            labels.append(base * len(rotations) + r)
        names = tuple(f"{chars[c][0]}/rot{d}" for c in char_ids for d in rotations)
        splits[split] = ImageSplit(np.ascontiguousarray(np.concatenate(imgs)), np.concatenate(labels), names)
    return splits
