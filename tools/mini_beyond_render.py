"""Rendering of the Unicode emoji set into the small RGBA array that Mini-Beyond is built from.

Only this step needs the system packages `fonts-noto-color-emoji` (the font) and `unicode-data`
(`emoji-test.txt`, the list of emoji with CLDR names, groups and subgroups). Everything downstream
(split, pre-training, benchmark builder) reads the shipped arrays, so a checkout works without them.

Pixel convention: the shipped RGBA is **premultiplied** (RGB already multiplied by alpha, so
``rgb <= alpha`` everywhere). Compositing on a background colour ``bg`` is then
``out = rgb + (1 - alpha) * bg``, and resampling premultiplied pixels never bleeds the colour of
fully transparent pixels into the glyph edge.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

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
    from PIL import Image, ImageDraw

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
    from PIL import Image, ImageFont

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
