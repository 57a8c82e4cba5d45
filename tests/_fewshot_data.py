"""Tiny few-shot image data written in the real Omniglot layout, shared by the dataset and CLI tests."""

import numpy as np
from PIL import Image


def drawing(seed: int, size: int = 105) -> np.ndarray:
    """A random blocky black-on-white drawing, asymmetric so that rotations differ."""
    rng = np.random.default_rng(seed)
    cells = rng.random((7, 7)) < 0.4
    cells[0, 0], cells[0, 6] = True, False
    return np.where(np.kron(cells, np.ones((15, 15), bool)), 0, 255).astype(np.uint8)[:size, :size]


def write_omniglot(root, alphabets=(("Alpha", 5), ("Beta", 4)), evaluation=(("Gamma", 3),), drawings=4):
    chars = []
    for subset, alphas in (("images_background", alphabets), ("images_evaluation", evaluation)):
        for alphabet, n_chars in alphas:
            for c in range(1, n_chars + 1):
                folder = root / subset / alphabet / f"character{c:02d}"
                folder.mkdir(parents=True)
                for d in range(1, drawings + 1):
                    Image.fromarray(drawing(len(chars) * 100 + d)).convert("1").save(folder / f"{len(chars):04d}_{d:02d}.png")
                chars.append(f"{alphabet}/character{c:02d}")
    return chars
