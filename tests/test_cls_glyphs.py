"""The glyph set generator: de-duplication and the wrong-glyph filter on synthetic drawings (always
run), and a tiny slice rendered from whatever DejaVu fonts fc-list finds (skipped without them)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from maml_ext.datasets import glyphs, omniglot


def _face(name: str) -> glyphs.Face:
    return glyphs.Face(f"/fonts/{name}.ttf", 0, name, "Regular")


def _mask(cp: int, shift: int = 0) -> np.ndarray:
    """A character-specific drawing; ``shift`` moves it a little (another design of it)."""
    rng = np.random.default_rng(cp)
    cells = np.kron(rng.random((5, 5)) < 0.5, np.ones((17, 17), bool))
    out = np.zeros((glyphs.CANVAS, glyphs.CANVAS), bool)
    out[10 + shift : 95 + shift, 10 : 95] = cells
    return out


def _renders(designs: dict[glyphs.Face, callable], cps=range(0x41, 0x41 + 6)):
    return {("Latn", cp): {f: np.packbits(draw(cp)) for f, draw in designs.items()} for cp in cps}


def test_near_duplicates_are_removed_and_thresholds_apply():
    a, b, c = _face("a"), _face("b"), _face("c")
    renders = _renders({a: _mask, b: _mask, c: lambda cp: _mask(cp, shift=6)})  # b duplicates a
    chosen = glyphs.select(renders, [], min_designs=2, min_chars=3)
    assert {len(d) for d in chosen["Latn"].values()} == {2}
    assert [f.family for f, _ in chosen["Latn"][0x41]] == ["a", "c"]
    log: list[str] = []
    assert glyphs.select(renders, log, min_designs=3, min_chars=3) == {}
    assert "only 0 characters with >= 3 designs" in log[0]


def test_fonts_drawing_other_shapes_are_dropped():
    designs = {_face(n): (lambda cp, s=s: _mask(cp, shift=s)) for n, s in (("a", 0), ("b", 5), ("c", 10))}
    wrong = _face("wrong")
    designs[wrong] = lambda cp: _mask(cp + 1000)  # another shape at every code point
    log: list[str] = []
    chosen = glyphs.select(_renders(designs), log, min_designs=3, min_chars=3)
    assert any("dropped wrong" in line for line in log)
    assert all(wrong not in {f for f, _ in d} for d in chosen["Latn"].values())


def test_design_families_strip_weights_and_widths():
    assert glyphs.design_family("Noto Sans Devanagari UI") == "noto sans devanagari"
    assert glyphs.design_family("DejaVu Sans Condensed Bold") == "dejavu sans"
    assert glyphs.design_family("DejaVu Serif") != glyphs.design_family("DejaVu Sans")


@pytest.fixture(scope="module")
def dejavu() -> list[glyphs.Face]:
    faces = [f for f in glyphs.installed_faces() if f.family.startswith("dejavu")]
    if len(faces) < 2:
        pytest.skip("needs two DejaVu font families (fonts-dejavu-core) visible to fc-list")
    return faces


def test_tiny_slice_in_omniglot_layout_and_cached(tmp_path, dejavu, monkeypatch):
    out = tmp_path / "glyphs"
    manifest = glyphs.build(out, faces=dejavu, scripts=["Latn", "Grek"], min_designs=2, min_chars=5, verbose=False)
    counts = manifest["counts"]
    assert counts["scripts"] == 2 and counts["characters"] >= 30
    pngs = sorted(out.glob("images_*/*/character*/*.png"))
    assert len(pngs) == counts["images"]
    with Image.open(pngs[0]) as im:
        assert im.size == (105, 105) and im.mode == "1"
        ink = np.asarray(im.convert("L")) < 128
    assert 0.02 < ink.mean() < 0.6  # a glyph, black on white, neither blank nor filled
    splits = omniglot.load(out, train_classes=0.7, val_classes=0.1)
    assert sum(s.num_classes for s in splits.values()) == 4 * counts["characters"]

    # Cached: a second build with the same fonts renders nothing.
    monkeypatch.setattr(glyphs, "_render_face", lambda job: pytest.fail("rendered again"))
    again = glyphs.build(out, faces=dejavu, scripts=["Latn", "Grek"], min_designs=2, min_chars=5, verbose=False)
    assert again["fingerprint"] == manifest["fingerprint"]


def test_no_fonts_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="setup-fonts.sh"):
        glyphs.build(tmp_path, faces=[], verbose=False)


def test_too_few_font_designs_is_a_clear_error(tmp_path, dejavu):
    with pytest.raises(RuntimeError, match=r"no script has 5\+ characters drawn by 40\+ agreeing font designs"):
        glyphs.build(tmp_path, faces=dejavu, scripts=["Latn"], min_designs=40, min_chars=5, verbose=False)


def test_cli_scripts_option_restricts_the_build(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(glyphs, "build", lambda out, **kw: seen.update(out=out, **kw))
    assert glyphs.main(["build", "--out", str(tmp_path), "--scripts", "Grek", "Hebr"]) == 0
    assert seen["scripts"] == ["Grek", "Hebr"] and seen["out"] == tmp_path
    assert glyphs.main(["build", "--out", str(tmp_path)]) == 0 and seen["scripts"] is None
