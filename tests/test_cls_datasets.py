"""Omniglot and MiniImagenet loaders on tiny data written in each real layout; episode sampling."""

from __future__ import annotations

import csv
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from maml_ext import plugins
from maml_ext.datasets import DatasetError, fewshot, miniimagenet, omniglot

from _fewshot_data import drawing, write_omniglot


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAML_EXT_CACHE", str(tmp_path / "cache"))



def test_omniglot_split_sizes_disjoint_and_rotations(tmp_path):
    chars = write_omniglot(tmp_path)  # 12 characters
    splits = omniglot.load(tmp_path, train_classes=8, val_classes=2)
    base = {s: {n.rsplit("/", 1)[0] for n in split.classes} for s, split in splits.items()}
    assert [len(base[s]) for s in ("train", "val", "test")] == [6, 2, 4]
    assert set().union(*base.values()) == set(chars)
    assert not (base["train"] & base["val"]) and not (base["train"] & base["test"]) and not (base["val"] & base["test"])
    train = splits["train"]
    assert train.images.shape == (6 * 4 * 4, 28, 28) and train.images.dtype == np.uint8
    assert train.num_classes == 24 and np.bincount(train.labels).tolist() == [4] * 24
    # Rotations are new classes holding the rotated drawings of the same character.
    name = train.classes[0].rsplit("/", 1)[0]
    by_rot = {d: train.images[train.labels == train.classes.index(f"{name}/rot{d}")] for d in (0, 90, 180, 270)}
    for d in (90, 180, 270):
        np.testing.assert_array_equal(by_rot[d], np.rot90(by_rot[0], k=d // 90, axes=(1, 2)))
        assert not np.array_equal(by_rot[d], by_rot[0])
    # Stored as ink intensity: the paper's PNGs are black strokes on white.
    png = np.asarray(Image.open(next((tmp_path / "images_background").rglob("*.png"))).convert("L"))
    assert (png < 128).mean() < 0.5 and train.images.mean() < 128


def test_omniglot_split_is_seeded_and_fractions_work(tmp_path):
    write_omniglot(tmp_path)
    a = omniglot.load(tmp_path, train_classes=8, val_classes=2)
    b = omniglot.load(tmp_path, train_classes=8 / 12, val_classes=2 / 12)
    c = omniglot.load(tmp_path, train_classes=8, val_classes=2, seed=2)
    assert a["test"].classes == b["test"].classes
    assert a["test"].classes != c["test"].classes
    assert omniglot.load(tmp_path, train_classes=8, val_classes=2, rotations=(0,))["train"].num_classes == 6


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: None, "does not exist"),
        (lambda root: (root / "stuff").mkdir(parents=True), "neither images_background/ nor images_evaluation/"),
        (lambda root: (root / "images_background" / "A" / "character01").mkdir(parents=True), "holds no .png"),
        (lambda root: (root / "images_background" / "A").mkdir(parents=True), "no <alphabet>/<character>/ folders"),
    ],
)
def test_omniglot_layout_errors_state_the_layout(tmp_path, make, message):
    root = tmp_path / "omniglot"
    make(root)
    with pytest.raises(DatasetError, match=message) as info:
        omniglot.load(root)
    assert "ROOT/images_background/<alphabet>/<character>/*.png" in str(info.value)


def test_omniglot_bad_split_counts_and_corrupt_png(tmp_path):
    write_omniglot(tmp_path)
    with pytest.raises(DatasetError, match="val_classes < train_classes < characters"):
        omniglot.load(tmp_path, train_classes=1200, val_classes=100)
    next(tmp_path.rglob("*.png")).write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="cannot decode"):
        omniglot.load(tmp_path, train_classes=8, val_classes=2)


def test_decoded_images_are_cached_on_disk_and_invalidated(tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_omniglot(data)
    first = omniglot.load(data, train_classes=8, val_classes=2)["train"].images
    cached = list((tmp_path / "cache").glob("omniglot-*.npy"))
    assert len(cached) == 1
    calls = []
    monkeypatch.setattr(omniglot, "_decode", lambda *a: calls.append(a))
    from maml_ext.datasets import cache

    cache._memory.clear()
    np.testing.assert_array_equal(omniglot.load(data, train_classes=8, val_classes=2)["train"].images, first)
    assert not calls  # read back from the .npy, not decoded again
    png = next(data.rglob("*.png"))
    Image.fromarray(drawing(999)).convert("1").save(png)
    monkeypatch.undo()
    monkeypatch.setenv("MAML_EXT_CACHE", str(tmp_path / "cache"))
    omniglot.load(data, train_classes=8, val_classes=2)
    assert len(list((tmp_path / "cache").glob("omniglot-*.npy"))) == 2  # a changed file is a new entry


# ----- MiniImagenet --------------------------------------------------------------------------
CLASSES = {"train": ["n01", "n02", "n03"], "val": ["n04", "n05"], "test": ["n06", "n07"]}


def _photo(seed: int, size: int = 84) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _mini_images(per_class=3):
    return {
        split: {c: [_photo(hash((c, i)) % 2**32) for i in range(per_class)] for c in classes}
        for split, classes in CLASSES.items()
    }


def write_folders(root, images):
    for split, by_class in images.items():
        for c, imgs in by_class.items():
            (root / split / c).mkdir(parents=True)
            for i, im in enumerate(imgs):
                Image.fromarray(im).save(root / split / c / f"{c}{i:08d}.png")


def write_csv(root, images):
    (root / "images").mkdir(parents=True)
    for split, by_class in images.items():
        with open(root / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["filename", "label"])
            for c, imgs in by_class.items():
                for i, im in enumerate(imgs):
                    Image.fromarray(im).save(root / "images" / f"{c}{i:08d}.png")
                    w.writerow([f"{c}{i:08d}.png", c])


def write_pickle(root, images):
    root.mkdir(parents=True, exist_ok=True)
    for split, by_class in images.items():
        data, class_dict = [], {}
        for c, imgs in by_class.items():
            class_dict[c] = list(range(len(data), len(data) + len(imgs)))
            data.extend(imgs)
        with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump({"image_data": np.stack(data), "class_dict": class_dict}, f)


@pytest.mark.parametrize("writer, kind", [(write_folders, "folders"), (write_csv, "csv"), (write_pickle, "pickle")])
def test_miniimagenet_layouts_give_the_same_splits(tmp_path, writer, kind):
    images = _mini_images()
    writer(tmp_path / kind, images)
    assert miniimagenet.layout(tmp_path / kind) == kind
    splits = miniimagenet.load(tmp_path / kind)
    for split, by_class in images.items():
        s = splits[split]
        assert s.classes == tuple(by_class) and s.images.shape == (3 * len(by_class), 84, 84, 3)
        for label, c in enumerate(s.classes):
            got = s.images[s.labels == label]
            # Same pictures in every layout (order within a class aside); lossless PNG and pickle.
            assert sorted(map(bytes, got)) == sorted(map(bytes, by_class[c]))


def test_miniimagenet_resizes_other_sizes(tmp_path):
    images = {s: {c: [_photo(i, size=100)] for i, c in enumerate(cs)} for s, cs in CLASSES.items()}
    write_folders(tmp_path, images)
    assert miniimagenet.load(tmp_path)["train"].images.shape == (3, 84, 84, 3)


def test_miniimagenet_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        miniimagenet.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no known MiniImagenet layout.*ROOT/\{train,val,test\}/<class>/\*\.jpg"):
        miniimagenet.load(tmp_path / "empty")

    images = _mini_images(per_class=1)
    write_csv(tmp_path / "csv", images)
    (tmp_path / "csv" / "val.csv").write_text("file,class\nx.png,n04\n")
    with pytest.raises(DatasetError, match="header 'filename,label'"):
        miniimagenet.load(tmp_path / "csv")
    (tmp_path / "csv" / "val.csv").write_text("filename,label\nmissing.png,n04\n")
    with pytest.raises(DatasetError, match="missing image"):
        miniimagenet.load(tmp_path / "csv")

    leaky = {**images, "test": {"n01": images["train"]["n01"]}}
    write_folders(tmp_path / "leak", leaky)
    with pytest.raises(DatasetError, match="appear in both train and test"):
        miniimagenet.load(tmp_path / "leak")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_miniimagenet_pickle_admits_arrays_only(tmp_path):
    write_pickle(tmp_path, _mini_images(per_class=1))
    with open(tmp_path / "mini-imagenet-cache-val.pkl", "wb") as f:
        pickle.dump({"image_data": np.zeros((1, 84, 84, 3), np.uint8), "class_dict": {"n04": [0]}, "x": _Evil()}, f)
    with pytest.raises(DatasetError, match="not allowed"):
        miniimagenet.load(tmp_path)


# ----- task families --------------------------------------------------------------------------
def test_omniglot_episodes_shapes_and_no_class_leaks(tmp_path):
    write_omniglot(tmp_path)
    family = plugins.build_task("omniglot", root=str(tmp_path), n_way=5, train_classes=8, val_classes=2)
    assert (family.in_features, family.out_features, family.loss) == (1, 5, "cross_entropy")
    gen = torch.Generator().manual_seed(0)
    batch = family.sample(7, 2, 1, gen)
    assert batch.x_support.shape == (7, 10, 1, 28, 28) and batch.x_query.shape == (7, 5, 1, 28, 28)
    assert batch.x_support.dtype == torch.float32 and 0 <= batch.x_support.min() and batch.x_support.max() <= 1
    assert (batch.y_support.sort(1).values == torch.arange(5).repeat_interleave(2)).all()
    assert (batch.y_query.sort(1).values == torch.arange(5)).all()
    # Support and query images of an episode are distinct drawings.
    flat_s, flat_q = batch.x_support.flatten(2), batch.x_query.flatten(2)
    assert not (flat_s[:, :, None] == flat_q[:, None]).all(-1).any()

    train_names = set(family.split.classes)
    test_names = set(family.held_out.split.classes)
    assert not {n.rsplit("/", 1)[0] for n in train_names} & {n.rsplit("/", 1)[0] for n in test_names}
    seen = family.sample(200, 1, 1, gen).info["classes"].unique()
    assert {family.split.classes[i] for i in seen.tolist()} <= train_names
    held = family.held_out.sample(200, 1, 1, gen).info["classes"].unique()
    assert {family.held_out.split.classes[i] for i in held.tolist()} <= test_names
    assert len(held) == len(test_names)  # every test class (4 characters × 4 rotations) is reachable


def test_miniimagenet_family_and_val_split(tmp_path):
    write_pickle(tmp_path, _mini_images())
    family = plugins.build_task("miniimagenet", root=str(tmp_path), n_way=2, eval_split="val")
    batch = family.sample(3, 1, 2, torch.Generator().manual_seed(0))
    assert batch.x_support.shape == (3, 2, 3, 84, 84) and batch.x_query.shape == (3, 4, 3, 84, 84)
    assert family.held_out.split.classes == ("n04", "n05")
    with pytest.raises(DatasetError, match="eval_split"):
        fewshot.build_miniimagenet(str(tmp_path), eval_split="train")


def test_glyphs_plugin_needs_a_built_set(tmp_path):
    with pytest.raises(DatasetError, match="python -m maml_ext.datasets.glyphs build"):
        plugins.build_task("glyphs", root=str(tmp_path))
