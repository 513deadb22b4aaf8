"""Rendering of the Unicode emoji set into the small RGBA array that Mini-Beyond is built from.

Only this step needs the system packages `fonts-noto-color-emoji` (the font) and `unicode-data`
(`emoji-test.txt`, the list of emoji with CLDR names, groups and subgroups). Everything downstream
(split, pre-training, benchmark builder) reads the shipped arrays, so a checkout works without them.

Pixel convention: the shipped RGBA is **premultiplied** (RGB already multiplied by alpha, so
``rgb <= alpha`` everywhere). Compositing on a background colour ``bg`` is then
``out = rgb + (1 - alpha) * bg``, and resampling premultiplied pixels never bleeds the colour of
fully transparent pixels into the glyph edge.

Also writes the licence note and the split (``render`` and ``split`` sub-commands).
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dassl.utils import atomic_write, atomic_write_text

from .common import (
    ASSETS_DIR,
    META_FILE,
    RGBA_FILE,
    SPLIT_FILE,
    Assets,
    load_assets,
    make_split,
    oop_violations,
    write_json_file,
)

log = logging.getLogger(__name__)

EMOJI_TEST_TXT = Path("/usr/share/unicode/emoji/emoji-test.txt")
NOTO_EMOJI_TTF = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
NOTO_BITMAP_SIZE = 109  # the only strike of the CBDT bitmap font
SKIN_TONES = range(0x1F3FB, 0x1F400)
SKIPPED_GROUPS = ("Component", "Flags")


@dataclass(frozen=True)
class EmojiEntry:
    """One fully-qualified emoji as listed in emoji-test.txt."""

    codepoints: Tuple[str, ...]  # upper-case hex, e.g. ("1F408", "200D", "2B1B")
    name: str  # CLDR short name, as written in the file (may contain non-ASCII quotes)
    group: str
    subgroup: str

    @property
    def text(self) -> str:
        return "".join(chr(int(cp, 16)) for cp in self.codepoints)


def parse_emoji_test(path: Path = EMOJI_TEST_TXT) -> List[EmojiEntry]:
    """Fully-qualified emoji without skin-tone variants, flags and components, in file (CLDR) order.

    Skin tones and flags are skipped because they would add near-duplicate images (tones) or
    concepts that are mostly text-like rectangles (flags) to the pre-training corpus.
    """
    entries: List[EmojiEntry] = []
    group = subgroup = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
            continue
        if line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
            continue
        if not line or line.startswith("#"):
            continue
        data, _, comment = line.partition("#")
        cps_text, _, status = data.partition(";")
        if status.strip() != "fully-qualified" or group in SKIPPED_GROUPS:
            continue
        cps = tuple(cps_text.split())
        if any(int(cp, 16) in SKIN_TONES for cp in cps):
            continue
        # comment = "<emoji> E<version> <name>"
        parts = comment.strip().split(" ", 2)
        if len(parts) < 3 or not parts[1].startswith("E"):
            raise ValueError(f"unexpected emoji-test.txt comment: {raw!r}")
        entries.append(EmojiEntry(cps, parts[2].strip(), group, subgroup))
    return entries


def _render_one(font, text: str, canvas: Tuple[int, int]):
    img = Image.new("RGBA", canvas, (0, 0, 0, 0))
    ImageDraw.Draw(img).text((8, 8), text, font=font, embedded_color=True)
    return img


def render_emoji(
    entries: Sequence[EmojiEntry],
    size: int = 64,
    font_path: Path = NOTO_EMOJI_TTF,
    max_glyphs: float = 1.2,
) -> Tuple[np.ndarray, List[int]]:
    """Render each emoji to a premultiplied RGBA square; returns (array [N,size,size,4], kept indices).

    An emoji whose shaped advance is wider than one glyph was not shaped into a single glyph (a
    ZWJ sequence the font lacks, or Pillow without raqm, lays out several side-by-side glyphs);
    it is dropped rather than shipped as a misleading image.
    """
    font = ImageFont.truetype(str(font_path), NOTO_BITMAP_SIZE)
    one_glyph = font.getlength("\U0001F600")
    out: List[np.ndarray] = []
    kept: List[int] = []
    for i, entry in enumerate(entries):
        advance = font.getlength(entry.text)
        if advance > max_glyphs * one_glyph:
            log.warning("emoji %s (%s) is not a single glyph (advance %.0f); dropped", entry.name,
                        " ".join(entry.codepoints), advance)
            continue
        img = _render_one(font, entry.text, (4 * NOTO_BITMAP_SIZE, 2 * NOTO_BITMAP_SIZE))
        bbox = img.getchannel("A").getbbox()
        if bbox is None:
            log.warning("emoji %s (%s) rendered empty; dropped", entry.name, " ".join(entry.codepoints))
            continue
        w, h = bbox[2] - bbox[0], bbox[3] - bbox[1]
        glyph = img.crop(bbox)
        side = max(w, h)
        square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        square.paste(glyph, ((side - w) // 2, (side - h) // 2))
        # "RGBa" is Pillow's premultiplied mode: resampling happens on premultiplied values.
        small = square.convert("RGBa").resize((size, size), Image.LANCZOS)
        arr = np.array(small, dtype=np.uint8)
        # Lanczos ringing can push a colour channel above alpha by a little; restore rgb <= alpha.
        arr[..., :3] = np.minimum(arr[..., :3], arr[..., 3:4])
        out.append(arr)
        kept.append(i)
    return np.stack(out, axis=0), kept


def entries_to_meta(entries: Sequence[EmojiEntry]) -> List[Dict[str, object]]:
    """JSON-ready metadata, one record per rendered image, in array order."""
    meta = []
    for e in entries:
        rec = asdict(e)
        rec["codepoints"] = list(e.codepoints)
        meta.append(rec)
    return meta


LICENSE_TEXT = """# Mini-Beyond assets: licences

* `emoji_rgba64.npz` holds 64x64 renders of the emoji images of the **Noto Color Emoji** font
  (Debian package `fonts-noto-color-emoji`, file `NotoColorEmoji.ttf`), produced by
  `python -m tools.mini_beyond render`. The renders are derived from the font: the font is
  licensed under the **SIL Open Font License 1.1** (OFL-1.1) and the emoji images in it under the
  **Apache License 2.0** (https://github.com/googlefonts/noto-emoji). The renders are shipped
  under the Apache License 2.0.
* `emoji_meta.json` and the class names in `split.json` come from `emoji-test.txt` of the Unicode
  Character Database (Debian package `unicode-data`, Emoji 15.0), (c) Unicode, Inc., used under the
  **Unicode License** (https://www.unicode.org/license.txt).
* `mini_clip.safetensors` and `pretrain_log.json` are produced by this repository
  (`python -m tools.mini_beyond pretrain`) from the data above and are under the repository's licence.

Pixel convention: RGB is premultiplied by alpha (composite with `rgb + (1 - alpha) * background`).
"""


#: The system files rendering reads, and the Debian package that ships each.
SYSTEM_INPUTS = ((EMOJI_TEST_TXT, "unicode-data"), (NOTO_EMOJI_TTF, "fonts-noto-color-emoji"))


def check_render_inputs(directory: Path) -> None:
    """Refuse (one-line ``FileNotFoundError`` / ``NotADirectoryError``) a render that cannot finish,
    before anything is created: a missing system file (a traceback after ``--assets`` was created,
    empty) or an ``--assets`` that is a file."""
    for path, package in SYSTEM_INPUTS:
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; install the Debian package {package} "
                                    "(apt-get install fonts-noto-color-emoji unicode-data)")
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"--assets {directory} is a file; give the folder for the assets")


def write_assets(directory: Path = ASSETS_DIR, seed: int = 0) -> Assets:
    """Render the emoji, write the arrays, the metadata, the licence note and the split."""
    directory = Path(directory)
    check_render_inputs(directory)
    directory.mkdir(parents=True, exist_ok=True)
    entries = parse_emoji_test()
    rgba, kept = render_emoji(entries)
    meta = entries_to_meta([entries[i] for i in kept])
    atomic_write(str(directory / RGBA_FILE), lambda f: np.savez_compressed(f, rgba=rgba), mode="wb")
    write_json_file(directory / META_FILE, meta)
    atomic_write_text(str(directory / "LICENSE.md"), LICENSE_TEXT)
    write_split(directory, seed)
    log.info("rendered %d emoji into %s", len(meta), directory)
    return load_assets(directory)


def read_meta(directory: Path) -> List[Dict[str, object]]:
    """``emoji_meta.json`` of ``directory``; a one-line ``ValueError`` when it is missing or not the
    list of ``name`` / ``subgroup`` records ``render`` writes (a traceback from deep in the split before)."""
    path = Path(directory) / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        why = err.strerror if isinstance(err, OSError) and err.strerror else " ".join(str(err).split())
        raise ValueError(f"{path}: cannot read the emoji metadata ({why}); run `python -m tools.mini_beyond "
                         "render` (or give --assets the folder that holds it)") from None
    if not (isinstance(meta, list) and meta and all(isinstance(m, dict) and isinstance(m.get("name"), str)
                                                    and isinstance(m.get("subgroup"), str) for m in meta)):
        raise ValueError(f"{path}: not the emoji metadata render writes (a non-empty list of records with a "
                         "name and a subgroup)")
    return meta


def write_split(directory: Path = ASSETS_DIR, seed: int = 0) -> Dict[str, object]:
    meta = read_meta(directory)
    split = make_split(meta, seed=seed)
    bad = oop_violations(meta, split, plurals=True)
    if bad:
        raise RuntimeError(f"OOP guarantee violated: {bad[:5]}")
    write_json_file(Path(directory) / SPLIT_FILE, split)
    for name, dom in split["domains"].items():
        log.info("%s: %d OOP / %d IP", name, len(dom["oop"]), len(dom["ip"]))
    return split


