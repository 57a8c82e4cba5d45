"""MiniImagenet with the Ravi & Larochelle split (64 train / 16 val / 20 test classes), 84×84 RGB.

Three common layouts are read; the first one found under ROOT is used:

- image folders (``proc_images.py`` of the MAML code)::

      ROOT/train/<class>/*.jpg   ROOT/val/<class>/*.jpg   ROOT/test/<class>/*.jpg

- Ravi & Larochelle's CSV files, images in one folder::

      ROOT/images/<file>.jpg   ROOT/train.csv   ROOT/val.csv   ROOT/test.csv   (header: filename,label)

- the pickled cache (``mini-imagenet-cache-<split>.pkl``: a dict with ``image_data`` uint8
  ``[N, 84, 84, 3]`` and ``class_dict`` ``{class: [row indices]}``)::

      ROOT/mini-imagenet-cache-train.pkl   ...-val.pkl   ...-test.pkl

Images of other sizes are resized to 84×84 (Lanczos). The pickles are read with an unpickler that
only admits numpy arrays, so a hostile file cannot run code.
"""

from __future__ import annotations

import csv
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from . import DatasetError, ImageSplit
from .cache import cached_array, key

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
LAYOUT = (
    "expected one MiniImagenet layout under ROOT: (a) ROOT/{train,val,test}/<class>/*.jpg; "
    "(b) ROOT/images/*.jpg with ROOT/{train,val,test}.csv (header filename,label); or "
    "(c) ROOT/mini-imagenet-cache-{train,val,test}.pkl (dict with image_data [N,84,84,3] uint8 and class_dict)"
)


def _decode(paths: list[Path], size: int) -> np.ndarray:
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                rgb = im.convert("RGB")
                if rgb.size != (size, size):
                    rgb = rgb.resize((size, size), Image.LANCZOS)
        except OSError as exc:
            raise DatasetError(f"cannot decode {path}: {exc}") from exc
        out[i] = np.asarray(rgb)
    return out


def _from_files(split: str, files: list[tuple[str, Path]], size: int) -> ImageSplit:
    """``files``: (class, path) pairs of one split."""
    if not files:
        raise DatasetError(f"split {split!r} has no images; {LAYOUT}")
    missing = [str(p) for _, p in files if not p.is_file()]
    if missing:
        raise DatasetError(f"split {split!r} lists {len(missing)} missing image(s), e.g. {missing[0]}; {LAYOUT}")
    files = sorted(files)
    paths = [p for _, p in files]
    classes = tuple(sorted({c for c, _ in files}))
    index = {c: i for i, c in enumerate(classes)}
    images = cached_array(key("miniimagenet", {"size": size}, paths), lambda: _decode(paths, size))
    return ImageSplit(images, np.array([index[c] for c, _ in files], dtype=np.int64), classes)


def _folders(root: Path, split: str) -> list[tuple[str, Path]]:
    base = root / split
    if not base.is_dir():
        raise DatasetError(f"missing folder {base}; {LAYOUT}")
    return [
        (cls.name, p)
        for cls in sorted(c for c in base.iterdir() if c.is_dir())
        for p in sorted(cls.iterdir())
        if p.suffix.lower() in IMAGE_EXTENSIONS
    ]


def _csv(root: Path, split: str) -> list[tuple[str, Path]]:
    path = root / f"{split}.csv"
    if not path.is_file():
        raise DatasetError(f"missing {path}; {LAYOUT}")
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["filename", "label"]:
        raise DatasetError(f"{path} must start with the header 'filename,label'; {LAYOUT}")
    bad = [i + 2 for i, r in enumerate(rows[1:]) if len(r) < 2 or not r[0].strip() or not r[1].strip()]
    if bad:
        raise DatasetError(f"{path}: malformed line(s) {bad[:5]} (need filename,label); {LAYOUT}")
    return [(r[1].strip(), root / "images" / r[0].strip()) for r in rows[1:]]


class _ArraysOnly(pickle.Unpickler):
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a MiniImagenet pickle")


def _pickle(root: Path, split: str, size: int) -> ImageSplit:
    path = root / f"mini-imagenet-cache-{split}.pkl"
    if not path.is_file():
        raise DatasetError(f"missing {path}; {LAYOUT}")
    try:
        with path.open("rb") as f:
            data = _ArraysOnly(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}; {LAYOUT}") from exc
    if not isinstance(data, dict) or "image_data" not in data or "class_dict" not in data:
        raise DatasetError(f"{path} must hold a dict with keys image_data and class_dict; {LAYOUT}")
    images = np.asarray(data["image_data"])
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise DatasetError(f"{path}: image_data must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    if images.shape[1:3] != (size, size):
        images = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.LANCZOS)) for im in images])
    classes = tuple(sorted(data["class_dict"]))
    labels = np.full(len(images), -1, dtype=np.int64)
    for i, c in enumerate(classes):
        rows = np.asarray(data["class_dict"][c], dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(images)):
            raise DatasetError(f"{path}: class_dict[{c!r}] indexes rows outside image_data")
        labels[rows] = i
    keep = labels >= 0  # rows no class claims are not part of the split
    return ImageSplit(images[keep], labels[keep], tuple(str(c) for c in classes))


def layout(root: Path) -> str:
    """Which layout ROOT holds: "folders", "csv" or "pickle"."""
    if not root.is_dir():
        raise DatasetError(f"MiniImagenet root {root} does not exist; {LAYOUT}")
    if (root / "train").is_dir():
        return "folders"
    if (root / "train.csv").is_file():
        return "csv"
    if (root / "mini-imagenet-cache-train.pkl").is_file():
        return "pickle"
    found = sorted(p.name for p in root.iterdir())[:10]
    raise DatasetError(f"{root} holds no known MiniImagenet layout (found {found}); {LAYOUT}")


def load(root: str | Path, *, image_size: int = 84) -> dict[str, ImageSplit]:
    """The ``train`` / ``val`` / ``test`` splits; class sets must be disjoint."""
    root = Path(root)
    kind = layout(root)
    readers: dict[str, Callable[[str], ImageSplit]] = {
        "folders": lambda s: _from_files(s, _folders(root, s), image_size),
        "csv": lambda s: _from_files(s, _csv(root, s), image_size),
        "pickle": lambda s: _pickle(root, s, image_size),
    }
    splits = {s: readers[kind](s) for s in SPLITS}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            shared = set(splits[a].classes) & set(splits[b].classes)
            if shared:
                raise DatasetError(f"classes {sorted(shared)[:3]} appear in both {a} and {b} under {root}")
    return splits
