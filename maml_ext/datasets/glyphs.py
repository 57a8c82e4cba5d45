"""An offline Omniglot-like benchmark: letters of many writing systems rendered from installed fonts.

    python -m maml_ext.datasets.glyphs build --out data/glyphs [--jobs 2] [--force] [--scripts Grek Hebr ...]

Script = alphabet, character = class, each distinct font design = one "drawer". The output has
the Omniglot layout (``images_background/`` and ``images_evaluation/`` of
``<Script>/characterNN/NNNN_DD.png``, 105×105 black on white), so :mod:`.omniglot` reads it
unchanged, plus ``manifest.json`` (fonts used per script, code point and designs of every
character). A second ``build`` with the same fonts and options returns at once (cached).

Pipeline (machine-notes §2a):
1. Faces come from ``fc-list`` (TrueType/OpenType only); one face per *design family* (weight,
   width, slant and "UI"/"Display" words stripped), its regular style preferred.
2. Each face's cmap (fontTools) gives its letters (Unicode Lu/Ll/Lo without compatibility
   decompositions) and their script; Common/Inherited/Unknown are dropped.
3. Candidates per script: fixed core alphabets where one exists (:data:`CORE`), otherwise the
   :data:`MAX_CHARS` letters that most fonts cover. A face draws a script only if it covers at
   least half of its candidates and passes the curated exclusions (:data:`EXCLUDED_WORDS`,
   :data:`ONLY_FOR_SCRIPTS`: fonts that draw wrong glyphs at real code points).
4. Render at 64 px, crop to the ink box, fit 84 px inside 105×105, binarise; blank and .notdef
   renders are dropped.
5. Per script, a face whose drawings disagree with every other design (median best IoU below
   :data:`MIN_AGREEMENT`) is dropped: that catches fonts mapping other shapes to the code points.
6. Near-duplicates are removed greedily (designs closer than 10% of the 32×32 pixels to a kept
   one); characters keep up to 20 designs and need at least 5; scripts need 6 such characters.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import subprocess
import sys
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from maml_ext.train.progress import track

VERSION = 2
CANVAS, RENDER_PX, FIT_PX, SMALL = 105, 64, 84, 32
MAX_CHARS = 60
MIN_COVERAGE = 0.5
MIN_AGREEMENT = 0.3
DUPLICATE = 0.10
MIN_DESIGNS, MAX_DESIGNS, MIN_CHARS_PER_SCRIPT = 5, 20, 6
FONT_SUFFIXES = (".ttf", ".otf", ".ttc")


def _span(lo: int, hi: int, step: int = 1) -> tuple[int, ...]:
    return tuple(range(lo, hi + 1, step))


# Core alphabets (code points): the letters a reader of the script would list.
CORE: dict[str, tuple[int, ...]] = {
    "Latn": _span(0x41, 0x5A) + _span(0x61, 0x7A),
    "Grek": tuple(c for c in _span(0x391, 0x3A9) if c != 0x3A2) + _span(0x3B1, 0x3C9),
    "Cyrl": _span(0x410, 0x44F),
    "Arab": tuple(c for c in _span(0x621, 0x64A) if c != 0x640),  # 0x640 is the tatweel
    "Hebr": _span(0x5D0, 0x5EA),
    "Hang": _span(0x3131, 0x3163),  # compatibility jamo
    "Hira": _span(0x3041, 0x3096),
    "Kana": _span(0x30A1, 0x30FA),
    "Ethi": _span(0x1200, 0x1357, 8),  # first-order syllables
    "Geor": _span(0x10D0, 0x10F0),
    "Armn": _span(0x531, 0x556),
}
# Families never used: not a text design of the letters (boxed keys, small caps, caps-only or
# ornamented initials, math/symbol sets), or a fallback that draws placeholders.
EXCLUDED_WORDS = (
    "keyboard", "smallcaps", "small caps", " sc", "math", "symbol", "music", "emoji", "icon",
    "dingbat", "braille", "barcode", "ocr", "awesome", "lastresort", "last resort", "fallback",
    "color", "signwriting", "kanjistroke", "sign", "caps", "initials",
)
# Families that put wrong shapes at real code points outside their own script.
ONLY_FOR_SCRIPTS: dict[str, set[str]] = {"monlam": {"Tibt"}}
_STYLE_WORDS = re.compile(
    r"\b(thin|hairline|extra ?light|ultra ?light|light|semi ?light|demi ?light|regular|book|roman|"
    r"normal|medium|semi ?bold|demi ?bold|bold|extra ?bold|ultra ?bold|black|heavy|italic|oblique|"
    r"slanted|condensed|semi ?condensed|extra ?condensed|ultra ?condensed|expanded|narrow|wide|ui|"
    r"display|text|caption|subhead|compact|looped|unjoined|[0-9]+)\b"
)


@dataclass(frozen=True)
class Face:
    path: str
    index: int
    family: str  # normalised design family
    style: str


def design_family(name: str) -> str:
    return " ".join(_STYLE_WORDS.sub(" ", name.lower().replace("-", " ")).split())


def installed_faces() -> list[Face]:
    """One face per design family among the TrueType/OpenType fonts fontconfig knows."""
    try:
        out = subprocess.run(
            ["fc-list", "--format", "%{file}\t%{index}\t%{family[0]}\t%{style[0]}\n"],
            capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    best: dict[str, tuple[int, Face]] = {}
    for line in sorted(set(out.splitlines())):
        parts = line.split("\t")
        if len(parts) != 4 or not parts[0].lower().endswith(FONT_SUFFIXES):
            continue
        path, index, family, style = parts
        fam = design_family(family)
        if not fam or any(w in f" {family.lower()}" for w in EXCLUDED_WORDS):
            continue
        st = style.lower()
        rank = 0 if st in ("regular", "book", "roman", "normal", "medium") else 1 if "italic" not in st and "oblique" not in st else 2
        face = Face(path, int(index or 0), fam, style)
        if fam not in best or (rank, path) < (best[fam][0], best[fam][1].path):
            best[fam] = (rank, face)
    return sorted((f for _, f in best.values()), key=lambda f: (f.family, f.path))


def _script(cp: int) -> str:
    from fontTools import unicodedata as fu

    return fu.script(chr(cp))


def is_letter(cp: int) -> bool:
    ch = chr(cp)
    return unicodedata.category(ch) in ("Lu", "Ll", "Lo") and not unicodedata.decomposition(ch)


def face_letters(face: Face) -> dict[str, set[int]]:
    """Script -> letters in the face's cmap."""
    from fontTools.ttLib import TTFont

    logging.getLogger("fontTools").setLevel(logging.ERROR)  # odd-but-usable tables are common
    try:
        with TTFont(face.path, fontNumber=face.index, lazy=True) as font:
            cmap = font.getBestCmap() or {}
    except Exception:  # fontTools raises many types on odd fonts: skip the face
        return {}
    by_script: dict[str, set[int]] = defaultdict(set)
    for cp in cmap:
        if cp in _CORE_ALL or is_letter(cp):
            script = _script(cp)
            if script not in ("Zyyy", "Zinh", "Zzzz"):
                by_script[script].add(cp)
    return dict(by_script)


_CORE_ALL = {cp for cps in CORE.values() for cp in cps}


def allowed(face: Face, script: str) -> bool:
    return all(script in scripts for word, scripts in ONLY_FOR_SCRIPTS.items() if word in face.family)


def render(font: ImageFont.FreeTypeFont, text: str) -> np.ndarray | None:
    """The glyph fitted into a 105×105 boolean ink mask, or None when nothing is drawn."""
    size = RENDER_PX * 4
    canvas = Image.new("L", (size, size), 255)
    try:
        ImageDraw.Draw(canvas).text((RENDER_PX, RENDER_PX), text, font=font, fill=0)
    except OSError:  # broken hinting bytecode in some fonts ("invalid opcode")
        return None
    ink = np.asarray(canvas) < 128
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    if rows.size == 0:
        return None
    crop = canvas.crop((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
    scale = FIT_PX / max(crop.size)
    w, h = max(1, round(crop.size[0] * scale)), max(1, round(crop.size[1] * scale))
    out = Image.new("L", (CANVAS, CANVAS), 255)
    out.paste(crop.resize((w, h), Image.LANCZOS), ((CANVAS - w) // 2, (CANVAS - h) // 2))
    return np.asarray(out) < 128


def small(mask: np.ndarray) -> np.ndarray:
    """32×32 boolean version used to compare designs."""
    img = Image.fromarray(np.where(mask, 0, 255).astype(np.uint8)).resize((SMALL, SMALL), Image.BILINEAR)
    return np.asarray(img) < 128


def _render_face(job: tuple[Face, list[int]]) -> tuple[Face, dict[int, np.ndarray]]:
    face, cps = job
    try:
        font = ImageFont.truetype(face.path, RENDER_PX, index=face.index)
    except OSError:
        return face, {}
    notdef = render(font, chr(0x10FFFD))  # unassigned: whatever the font draws for a missing glyph
    notdef_small = small(notdef) if notdef is not None else None
    out = {}
    for cp in cps:
        mask = render(font, chr(cp))
        if mask is None or (notdef_small is not None and np.array_equal(small(mask), notdef_small)):
            continue
        out[cp] = np.packbits(mask)
    return face, out


def _best_iou(designs: dict[Face, np.ndarray]) -> dict[Face, float]:
    """Each design's highest IoU with another design of the same character (none when alone)."""
    if len(designs) < 2:
        return {}
    faces = list(designs)
    m = np.stack([designs[f].ravel() for f in faces]).astype(np.float32)
    inter = m @ m.T
    size = m.sum(1)
    union = size[:, None] + size[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    np.fill_diagonal(iou, -1.0)
    return dict(zip(faces, iou.max(1).tolist()))


def candidates(letters: dict[Face, dict[str, set[int]]]) -> dict[str, list[int]]:
    """Script -> candidate characters (core alphabet, or the best-covered letters)."""
    counts: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for face, by_script in letters.items():
        for script, cps in by_script.items():
            if allowed(face, script):
                for cp in cps:
                    counts[script][cp] += 1
    out = {}
    for script, per_cp in counts.items():
        if script in CORE:
            out[script] = list(CORE[script])
        else:
            ranked = sorted(per_cp, key=lambda cp: (-per_cp[cp], cp))
            out[script] = sorted(ranked[:MAX_CHARS])
    return out


def select(
    renders: dict[tuple[str, int], dict[Face, np.ndarray]], log: list[str],
    min_designs: int = MIN_DESIGNS, min_chars: int = MIN_CHARS_PER_SCRIPT,
) -> dict[str, dict[int, list[tuple[Face, np.ndarray]]]]:
    """Agreement filter, de-duplication and the design/character thresholds."""
    by_script: dict[str, dict[int, dict[Face, np.ndarray]]] = defaultdict(dict)
    for (script, cp), designs in renders.items():
        by_script[script][cp] = designs
    chosen: dict[str, dict[int, list[tuple[Face, np.ndarray]]]] = {}
    for script in sorted(by_script):
        # Unpacked one script at a time: all 105×105 masks at once would take over a GB.
        chars = {
            cp: {f: np.unpackbits(m)[: CANVAS * CANVAS].reshape(CANVAS, CANVAS) for f, m in d.items()}
            for cp, d in by_script[script].items()
        }
        smalls = {cp: {f: small(m) for f, m in d.items()} for cp, d in chars.items()}
        faces = sorted({f for d in chars.values() for f in d}, key=lambda f: f.family)
        if len(faces) >= max(min_designs, 3):  # agreement needs a few other designs
            best: dict[Face, list[float]] = defaultdict(list)
            for s in smalls.values():
                for face, value in _best_iou(s).items():
                    best[face].append(value)
            for face, values in best.items():
                if float(np.median(values)) < MIN_AGREEMENT:
                    log.append(f"{script}: dropped {face.family} (median agreement {np.median(values):.2f})")
                    for s, d in zip(smalls.values(), chars.values()):
                        s.pop(face, None)
                        d.pop(face, None)
        kept_chars = {}
        for cp in sorted(chars):
            kept: list[tuple[Face, np.ndarray]] = []
            kept_small: list[np.ndarray] = []
            for face in sorted(chars[cp], key=lambda f: f.family):
                s = smalls[cp][face]
                if all(np.count_nonzero(s != k) > DUPLICATE * SMALL * SMALL for k in kept_small):
                    kept.append((face, chars[cp][face]))
                    kept_small.append(s)
                if len(kept) == MAX_DESIGNS:
                    break
            if len(kept) >= min_designs:
                kept_chars[cp] = kept
        if len(kept_chars) >= min_chars:
            chosen[script] = kept_chars
        else:
            log.append(f"{script}: only {len(kept_chars)} characters with >= {min_designs} designs, not used")
    return chosen


def fingerprint(faces: Sequence[Face]) -> str:
    h = hashlib.sha1(json.dumps([VERSION, MAX_CHARS, MIN_COVERAGE, MIN_AGREEMENT, DUPLICATE,
                                 MIN_DESIGNS, MAX_DESIGNS, MIN_CHARS_PER_SCRIPT]).encode())
    for f in faces:
        h.update(f"{f.path}\0{f.index}\0{Path(f.path).stat().st_size}\n".encode())
    return h.hexdigest()


def _script_name(code: str) -> str:
    from fontTools import unicodedata as fu

    return fu.script_name(code, default=code).replace(" ", "_")


def build(out: Path, *, jobs: int = 1, force: bool = False, faces: Sequence[Face] | None = None,
          scripts: Sequence[str] | None = None, min_designs: int = MIN_DESIGNS,
          min_chars: int = MIN_CHARS_PER_SCRIPT, verbose: bool = True) -> dict:
    """Render the glyph set into ``out`` (skipped when ``out`` already holds the same build);
    returns the manifest. ``faces``, ``scripts`` and the thresholds shrink the build (tests
    render a tiny slice from a couple of fonts)."""
    faces = list(installed_faces() if faces is None else faces)
    if not faces:
        raise RuntimeError("no TrueType/OpenType fonts found by fc-list: run .ci/setup-fonts.sh (as root)")
    say = print if verbose else (lambda *a, **k: None)
    stamp = fingerprint(faces) + f";{min_designs};{min_chars};" + ("" if scripts is None else ",".join(sorted(scripts)))
    manifest_path = out / "manifest.json"
    if manifest_path.is_file() and not force:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("fingerprint") == stamp:
            say(f"{out}: up to date ({manifest['counts']['characters']} characters)")
            return manifest
    letters = {f: face_letters(f) for f in track(faces, len(faces), "reading fonts", "font", verbose)}
    if scripts is not None:
        letters = {f: {s: c for s, c in by.items() if s in scripts} for f, by in letters.items()}
    cands = candidates(letters)
    jobs_by_face: dict[Face, list[int]] = {}
    for face, by_script in letters.items():
        cps = [
            cp for script, cs in by_script.items() if script in cands and allowed(face, script)
            and len(cs & set(cands[script])) >= MIN_COVERAGE * len(cands[script])
            for cp in sorted(cs & set(cands[script]))
        ]
        if cps:
            jobs_by_face[face] = cps
    say(f"{len(faces)} design families, {len(cands)} scripts, {sum(map(len, jobs_by_face.values()))} renders")
    renders: dict[tuple[str, int], dict[Face, np.ndarray]] = defaultdict(dict)
    work = list(jobs_by_face.items())
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            results = list(track(pool.map(_render_face, work, chunksize=4), len(work), "rendering", "font", verbose))
    else:
        results = [_render_face(w) for w in track(work, len(work), "rendering", "font", verbose)]
    for face, masks in results:
        for cp, mask in masks.items():
            renders[(_script(cp), cp)][face] = mask
    log: list[str] = []
    chosen = select(renders, log, min_designs, min_chars)
    if not chosen:
        raise RuntimeError(
            f"no script has {min_chars}+ characters drawn by {min_designs}+ agreeing font designs among the "
            f"{len(faces)} installed font families: install more fonts (`sudo bash .ci/setup-fonts.sh`)"
        )
    manifest = _write(out, chosen, stamp)
    manifest["log"] = log
    manifest_path.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    say("\n".join(log))
    say(f"{out}: {manifest['counts']}")
    return manifest


def _write(out: Path, chosen: dict[str, dict[int, list[tuple[Face, np.ndarray]]]], stamp: str) -> dict:
    import shutil

    for subset in ("images_background", "images_evaluation"):
        shutil.rmtree(out / subset, ignore_errors=True)
    characters, fonts = [], {}
    for i, script in enumerate(sorted(chosen, key=_script_name)):
        # About 60/40 background/evaluation, like Omniglot's 30/20 alphabets.
        subset = "images_evaluation" if i % 5 in (1, 3) else "images_background"
        name = _script_name(script)
        fonts[name] = sorted({f.family for ds in chosen[script].values() for f, _ in ds})
        for c, (cp, designs) in enumerate(sorted(chosen[script].items()), start=1):
            folder = out / subset / name / f"character{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for d, (_, mask) in enumerate(designs, start=1):
                grey = Image.fromarray(np.where(mask, 0, 255).astype(np.uint8), "L")
                grey.convert("1", dither=Image.Dither.NONE).save(folder / f"{cp:04x}_{d:02d}.png", optimize=True)
            characters.append({
                "script": name, "folder": f"{subset}/{name}/character{c:02d}", "codepoint": f"U+{cp:04X}",
                "char": chr(cp), "designs": [f.family for f, _ in designs],
            })
    counts = {
        "scripts": len(chosen), "characters": len(characters),
        "images": sum(len(c["designs"]) for c in characters),
    }
    return {"version": VERSION, "fingerprint": stamp, "counts": counts, "fonts": fonts, "characters": characters}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m maml_ext.datasets.glyphs", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="render the glyph set (cached)")
    b.add_argument("--out", default="data/glyphs", help="output folder (default: data/glyphs)")
    b.add_argument("--jobs", type=int, default=1, help="render processes (default 1)")
    b.add_argument("--force", action="store_true", help="render again even when up to date")
    b.add_argument("--scripts", nargs="+", metavar="CODE",
                   help="only these scripts (ISO 15924 codes, e.g. Grek Hebr Kana): a smaller, faster build")
    args = p.parse_args(argv)
    try:
        build(Path(args.out), jobs=args.jobs, force=args.force, scripts=args.scripts)
    except RuntimeError as exc:
        print(f"glyphs: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
