"""Mini-Beyond: LAION-Beyond in miniature, with a CLIP we pre-train ourselves on rendered emoji.

The point of the miniature is a *provable* out-of-pre-training (OOP) property: the OOP concept
names never occur, as a phrase, in any caption the mini CLIP was pre-trained on (and their images
are not in the pre-training set either), so FSNL's claim can be demonstrated end to end on a CPU.

Steps (each a sub-command of ``python -m tools.mini_beyond``):

``render``    emoji-test.txt + Noto Color Emoji -> ``emoji_rgba64.npz`` / ``emoji_meta.json`` and
              the split (needs the Debian packages named in :mod:`tools.mini_beyond_render`).
``split``     recompute ``split.json`` from the metadata (deterministic, seeded greedy pass).
``pretrain``  pre-train the ``mini-clip`` OpenCLIP model on the pre-training corpus and write
              fp16 safetensors plus ``pretrain_log.json`` (loss curve and zero-shot numbers).
``eval``      zero-shot IP/OOP accuracy (and k-means clustering accuracy) of a weights file.
``build``     write the benchmark in the exact LAION-Beyond directory / split-JSON layout.
``demo``      the README's main job: build, zero-shot + FSNL at 4 shots on five domains, table + plot.
``golden``    re-measure the numbers recorded for tests/test_golden_mini_beyond.py.

Pixel convention: the shipped RGBA is premultiplied (see :mod:`tools.mini_beyond_render`).
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by path (python dir/script.py): the repo root goes first on sys.path, as under -m
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import hashlib
import io
import json
import logging
import math
import os
import random
import re
import shutil
import time
import unicodedata
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS_DIR = REPO_ROOT / "assets" / "mini_beyond"
MODEL_CONFIG_DIR = REPO_ROOT / "clip" / "model_configs"
MODEL_NAME = "mini-clip"
RGBA_FILE = "emoji_rgba64.npz"
META_FILE = "emoji_meta.json"
SPLIT_FILE = "split.json"
WEIGHTS_FILE = "mini_clip.safetensors"
LOG_FILE = "pretrain_log.json"
STAMP_FILE = "mini_beyond_build.json"
SPLIT_VERSION = 1
BUILD_VERSION = 1

# CLIP's normalisation constants (open_clip's OPENAI_DATASET_MEAN/STD), which the repo's Dassl
# transforms also use, so pre-training and downstream evaluation see identically scaled pixels.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Domain:
    """A Mini-Beyond domain: which emoji subgroups it takes and how it is named on disk."""

    name: str
    prefix: str
    hint: str
    subgroup_pattern: str  # full-match regex over the emoji subgroup


DOMAINS: Tuple[Domain, ...] = (
    Domain("Animals", "MiniAnimals", "animal", r"animal-.+"),
    Domain("Food", "MiniFood", "food", r"food-.+"),
    Domain("Plants", "MiniPlants", "plant", r"plant-.+"),
    Domain("Attire", "MiniAttire", "clothing", r"clothing"),
    Domain("Transport", "MiniTransport", "vehicle", r"transport-(?!sign$).+"),
)

# Readable "kind" words used in captions for the domain subgroups; other subgroups use their
# own name with dashes as spaces. Words that are emoji names themselves (e.g. "bug") are avoided
# because they would make those emoji ineligible for OOP.
SUBGROUP_WORDS: Dict[str, str] = {
    "animal-mammal": "mammal",
    "animal-bird": "bird",
    "animal-amphibian": "amphibian",
    "animal-reptile": "reptile",
    "animal-marine": "sea animal",
    "animal-bug": "insect",
    "plant-flower": "flower",
    "plant-other": "plant",
    "food-fruit": "fruit",
    "food-vegetable": "vegetable",
    "food-prepared": "dish",
    "food-asian": "asian food",
    "food-marine": "seafood",
    "food-sweet": "dessert",
    "clothing": "clothing",
    "transport-ground": "land vehicle",
    "transport-water": "watercraft",
    "transport-air": "aircraft",
}

# Pre-training caption templates. The OOP guarantee is checked over exactly this set, filled
# with every pre-training emoji's name / subgroup word / hint (see `pretraining_captions`).
PRETRAIN_TEMPLATES: Tuple[str, ...] = (
    "{name}",
    "a photo of a {name}.",
    "a photo of {name}, a type of {hint}.",
    "an emoji of {name}, a kind of {word}.",
    "a {name} icon",
    "a picture of the {name}.",
    "a cartoon {name}, which is a {word}.",
    "an image of a {hint}: {name}.",
)
ZERO_SHOT_TEMPLATE = "a photo of {name}, a type of {hint}."

# Named background colours of the benchmark images (the caption names the colour).
BACKGROUND_COLOURS: Tuple[Tuple[str, Tuple[int, int, int]], ...] = (
    ("white", (245, 245, 245)),
    ("black", (25, 25, 25)),
    ("gray", (128, 128, 128)),
    ("red", (215, 45, 45)),
    ("orange", (240, 145, 40)),
    ("yellow", (240, 220, 70)),
    ("green", (60, 165, 75)),
    ("blue", (50, 95, 215)),
    ("purple", (135, 75, 185)),
    ("pink", (240, 165, 200)),
    ("brown", (125, 85, 50)),
    ("teal", (40, 155, 155)),
)
SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------------------------
# Names, captions and the OOP/IP split
# --------------------------------------------------------------------------------------------

def ascii_name(name: str) -> str:
    """CLDR name -> lower-case ASCII class name (curly quotes straightened, accents stripped).

    The result doubles as the image directory name, so it must survive any filesystem; spaces,
    apostrophes and dashes are kept because they are part of the name the text encoder reads.
    """
    s = name.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    s = unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode("ascii")
    s = re.sub(r"[^a-z0-9 '&.\-]", " ", s.lower())
    return re.sub(r"\s+", " ", s).strip()


def subgroup_word(subgroup: str) -> str:
    return SUBGROUP_WORDS.get(subgroup, subgroup.replace("-", " "))


def domain_of(subgroup: str) -> Optional[Domain]:
    for d in DOMAINS:
        if re.fullmatch(d.subgroup_pattern, subgroup):
            return d
    return None


def emoji_hint(subgroup: str) -> str:
    """Coarse kind word: the domain hint for domain emoji, the subgroup word otherwise."""
    d = domain_of(subgroup)
    return d.hint if d is not None else subgroup_word(subgroup)


def emoji_captions(name: str, subgroup: str) -> List[str]:
    """All pre-training captions of one emoji, in template order."""
    fields = {"name": ascii_name(name), "word": subgroup_word(subgroup), "hint": emoji_hint(subgroup)}
    return [t.format(**fields) for t in PRETRAIN_TEMPLATES]


def name_pattern(name: str, plurals: bool = True) -> re.Pattern[str]:
    """Word-boundary phrase regex for a class name (lower-cased).

    With ``plurals`` the phrase also matches "<name>s"/"<name>es": the split uses this stricter
    form so that not even a plural of an OOP name reaches pre-training.
    """
    suffix = "(?:s|es)?" if plurals else ""
    return re.compile(r"\b" + re.escape(name.lower()) + suffix + r"\b")


def _letters(s: str) -> int:
    return sum(ch.isalpha() for ch in s)


def make_split(meta: Sequence[Dict[str, object]], seed: int = 0, oop_fraction: float = 1 / 3) -> Dict[str, object]:
    """Seeded greedy OOP/IP split with the guarantee that no OOP name is in a pre-training caption.

    A domain concept is eligible for OOP when every emoji whose captions contain its name (as a
    phrase, plurals included) is itself already OOP (or is the concept). Moving a concept to OOP
    only removes captions from the corpus, so earlier choices stay valid; the pass visits the
    concepts of each domain in a seeded random order until about ``oop_fraction`` are OOP.
    """
    names = [ascii_name(str(m["name"])) for m in meta]
    texts = ["\n".join(emoji_captions(str(m["name"]), str(m["subgroup"]))) for m in meta]

    def emoji_matching(name: str) -> Set[int]:
        # substring pre-filter on the longest word of the name, then the exact phrase regex
        key = max(re.findall(r"\w+", name), key=len)
        pat = name_pattern(name)
        return {j for j, t in enumerate(texts) if key in t and pat.search(t)}

    name_count: Dict[str, int] = {}
    for n in names:
        name_count[n] = name_count.get(n, 0) + 1

    concepts: Dict[str, List[int]] = {d.name: [] for d in DOMAINS}
    dropped: List[Dict[str, object]] = []
    for i, m in enumerate(meta):
        d = domain_of(str(m["subgroup"]))
        if d is None:
            continue
        reason = None
        if name_count[names[i]] > 1:
            reason = "duplicate name"
        elif _letters(names[i]) < 2:
            reason = "fewer than 2 letters"
        if reason:
            dropped.append({"index": i, "name": names[i], "reason": reason})
        else:
            concepts[d.name].append(i)

    rng = random.Random(seed)
    oop: Set[int] = set()
    per_domain: Dict[str, Dict[str, object]] = {}
    for d in DOMAINS:
        idx = concepts[d.name]
        target = int(round(len(idx) * oop_fraction))
        order = list(idx)
        rng.shuffle(order)
        matches = {c: emoji_matching(names[c]) for c in idx}
        chosen: List[int] = []
        for c in order:
            if len(chosen) >= target:
                break
            if matches[c] <= (oop | {c}):
                chosen.append(c)
                oop.add(c)
        if len(chosen) < target:
            log.warning("domain %s: only %d of %d OOP concepts satisfy the guarantee", d.name, len(chosen), target)

        def record(i: int) -> Dict[str, object]:
            return {"index": i, "classname": names[i], "subgroup": meta[i]["subgroup"]}

        oop_idx = sorted(chosen, key=lambda i: names[i])
        ip_idx = sorted((i for i in idx if i not in set(chosen)), key=lambda i: names[i])
        per_domain[d.name] = {
            "prefix": d.prefix,
            "hint": d.hint,
            "oop": [record(i) for i in oop_idx],
            "ip": [record(i) for i in ip_idx],
        }
    pretrain = [i for i in range(len(meta)) if i not in oop]
    return {
        "version": SPLIT_VERSION,
        "seed": seed,
        "oop_fraction": oop_fraction,
        "templates": list(PRETRAIN_TEMPLATES),
        "zero_shot_template": ZERO_SHOT_TEMPLATE,
        "domains": per_domain,
        "dropped": dropped,
        "pretrain_indices": pretrain,
    }


def pretraining_captions(meta: Sequence[Dict[str, object]], split: Dict[str, object]) -> List[str]:
    """Every caption the mini CLIP can see during pre-training (the set the guarantee is about)."""
    out: List[str] = []
    for i in split["pretrain_indices"]:
        out.extend(emoji_captions(str(meta[i]["name"]), str(meta[i]["subgroup"])))
    return out


def oop_violations(meta: Sequence[Dict[str, object]], split: Dict[str, object], plurals: bool = False) -> List[Tuple[str, str]]:
    """(OOP name, caption) pairs where the name occurs in a pre-training caption; must be empty."""
    captions = sorted(set(pretraining_captions(meta, split)))
    blob = "\n".join(captions).lower()
    bad = []
    for dom in split["domains"].values():
        for rec in dom["oop"]:
            pat = name_pattern(rec["classname"], plurals=plurals)
            if pat.search(blob):
                bad.extend((rec["classname"], c) for c in captions if pat.search(c.lower()))
    return bad


# --------------------------------------------------------------------------------------------
# Assets
# --------------------------------------------------------------------------------------------

@dataclass
class Assets:
    rgba: np.ndarray  # uint8 [N,64,64,4], premultiplied
    meta: List[Dict[str, object]]
    split: Dict[str, object]
    directory: Path

    def digest(self) -> str:
        """Content hash of the files a benchmark build depends on (for the build stamp)."""
        h = hashlib.sha256()
        for fname in (RGBA_FILE, META_FILE, SPLIT_FILE):
            h.update((self.directory / fname).read_bytes())
        return h.hexdigest()[:16]


def load_assets(directory: Path = ASSETS_DIR) -> Assets:
    directory = Path(directory)
    with np.load(directory / RGBA_FILE) as z:
        rgba = z["rgba"]
    meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
    split = json.loads((directory / SPLIT_FILE).read_text(encoding="utf-8"))
    if rgba.shape[0] != len(meta):
        raise ValueError(f"{directory}: {rgba.shape[0]} images but {len(meta)} metadata records")
    return Assets(rgba, meta, split, directory)


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


def write_assets(directory: Path = ASSETS_DIR, seed: int = 0) -> Assets:
    """Render the emoji, write the arrays, the metadata, the licence note and the split."""
    from tools.mini_beyond_render import entries_to_meta, parse_emoji_test, render_emoji

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    entries = parse_emoji_test()
    rgba, kept = render_emoji(entries)
    meta = entries_to_meta([entries[i] for i in kept])
    np.savez_compressed(directory / RGBA_FILE, rgba=rgba)
    _write_json(directory / META_FILE, meta)
    (directory / "LICENSE.md").write_text(LICENSE_TEXT, encoding="utf-8")
    write_split(directory, seed)
    log.info("rendered %d emoji into %s", len(meta), directory)
    return load_assets(directory)


def write_split(directory: Path = ASSETS_DIR, seed: int = 0) -> Dict[str, object]:
    meta = json.loads((Path(directory) / META_FILE).read_text(encoding="utf-8"))
    split = make_split(meta, seed=seed)
    bad = oop_violations(meta, split, plurals=True)
    if bad:
        raise RuntimeError(f"OOP guarantee violated: {bad[:5]}")
    _write_json(Path(directory) / SPLIT_FILE, split)
    for name, dom in split["domains"].items():
        log.info("%s: %d OOP / %d IP", name, len(dom["oop"]), len(dom["ip"]))
    return split


def _write_json(path: Path, obj: object) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


# --------------------------------------------------------------------------------------------
# Batched augmentation (premultiplied RGBA tensors -> RGB views on backgrounds)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AugStrength:
    """Ranges of the random view parameters (all sampled per image, applied to the whole batch)."""

    zoom: Tuple[float, float] = (0.65, 1.35)  # >1 enlarges the emoji (crops its border)
    aspect: float = 0.15  # relative x/y zoom difference
    translate: float = 0.18  # fraction of the half-width
    rotate_deg: float = 20.0
    flip_p: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    blur_p: float = 0.3
    noise_max: float = 0.03
    gradient_p: float = 0.3  # otherwise a solid background


PRETRAIN_AUG = AugStrength()
BENCHMARK_AUG = AugStrength(zoom=(0.7, 1.1), aspect=0.08, translate=0.1, rotate_deg=12.0, flip_p=0.5,
                            brightness=0.15, contrast=0.15, saturation=0.15, blur_p=0.15, noise_max=0.015,
                            gradient_p=0.0)


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _gaussian_blur(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    radius = 2
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def augment(
    rgba: torch.Tensor,
    gen: torch.Generator,
    strength: AugStrength = PRETRAIN_AUG,
    background: Optional[torch.Tensor] = None,
    out_size: Optional[int] = None,
) -> torch.Tensor:
    """Random views of a batch of premultiplied RGBA images [B,4,H,W] in [0,1] -> RGB [B,3,S,S].

    Crop/zoom, aspect, translation, rotation and flip are one affine resampling (premultiplied, so
    bilinear filtering at the glyph edge is exact and the outside is transparent); the view is then
    composited on a background (``background`` [B,3] colours, else random ones, sometimes a
    gradient), colour-jittered, sometimes blurred and lightly noised. All randomness comes from
    ``gen`` so a seeded generator reproduces the views exactly.
    """
    b = rgba.shape[0]
    s = out_size or rgba.shape[-1]
    zoom = _uniform(b, *strength.zoom, gen)
    ar = _uniform(b, -strength.aspect, strength.aspect, gen)
    zx, zy = zoom * (1 + ar), zoom * (1 - ar)
    ang = _uniform(b, -strength.rotate_deg, strength.rotate_deg, gen) * math.pi / 180
    flip = torch.where(torch.rand(b, generator=gen) < strength.flip_p, -1.0, 1.0)
    tx = _uniform(b, -strength.translate, strength.translate, gen)
    ty = _uniform(b, -strength.translate, strength.translate, gen)
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.stack([
        torch.stack([cos * flip / zx, -sin / zy, tx], dim=1),
        torch.stack([sin * flip / zx, cos / zy, ty], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, [b, 4, s, s], align_corners=False)
    view = F.grid_sample(rgba, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    rgb, alpha = view[:, :3], view[:, 3:4]

    if background is None:
        background = torch.rand(b, 3, generator=gen)
    bg = background.view(b, 3, 1, 1).expand(b, 3, s, s)
    if strength.gradient_p > 0:
        other = torch.rand(b, 3, generator=gen).view(b, 3, 1, 1)
        direction = torch.rand(b, generator=gen) * 2 * math.pi
        lin = torch.linspace(-0.5, 0.5, s)
        yy, xx = torch.meshgrid(lin, lin, indexing="ij")
        ramp = (xx[None] * torch.cos(direction).view(b, 1, 1) + yy[None] * torch.sin(direction).view(b, 1, 1)) + 0.5
        use = (torch.rand(b, generator=gen) < strength.gradient_p).float().view(b, 1, 1, 1)
        bg = bg + use * ramp[:, None] * (other - bg)
    x = rgb + (1 - alpha) * bg

    bright = _uniform(b, 1 - strength.brightness, 1 + strength.brightness, gen).view(b, 1, 1, 1)
    contrast = _uniform(b, 1 - strength.contrast, 1 + strength.contrast, gen).view(b, 1, 1, 1)
    sat = _uniform(b, 1 - strength.saturation, 1 + strength.saturation, gen).view(b, 1, 1, 1)
    x = x * bright
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = gray.mean(dim=(2, 3), keepdim=True) + (x - gray.mean(dim=(2, 3), keepdim=True)) * contrast
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = gray + (x - gray) * sat
    blur_w = (torch.rand(b, generator=gen) < strength.blur_p).float() * torch.rand(b, generator=gen)
    sel = blur_w > 0  # blur only the images that use it (an unblurred row would be unchanged)
    if sel.any():
        xs = x[sel]
        x[sel] = xs + blur_w[sel].view(-1, 1, 1, 1) * (_gaussian_blur(xs) - xs)
    noise_sd = _uniform(b, 0.0, strength.noise_max, gen).view(b, 1, 1, 1)
    x = x + noise_sd * torch.randn(x.shape, generator=gen)
    return x.clamp_(0, 1)


def rgba_tensor(rgba: np.ndarray) -> torch.Tensor:
    """uint8 [N,H,W,4] -> float [N,4,H,W] in [0,1]."""
    return torch.from_numpy(np.ascontiguousarray(rgba)).permute(0, 3, 1, 2).float().div_(255)


def normalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _stream(seed: int, *keys: int) -> torch.Generator:
    """Independent, reproducible generator per (seed, keys): e.g. (domain, subset, split)."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


# --------------------------------------------------------------------------------------------
# Benchmark views and builder
# --------------------------------------------------------------------------------------------

SUBSETS = ("OOP", "IP")


def subset_records(assets: Assets, domain: str, subset: str) -> List[Dict[str, object]]:
    return list(assets.split["domains"][domain][subset.lower()])


def render_views(
    assets: Assets, domain: str, subset: str, split: str, per_class: int, seed: int = 0, size: int = 64,
) -> Tuple[np.ndarray, List[int], List[str]]:
    """Benchmark views of one (domain, subset, split): uint8 [C*per_class,S,S,3], labels, colour names.

    Each (domain, subset, split) has its own random stream, so train, val and test views are
    different draws and rebuilding one domain does not change another.
    """
    recs = subset_records(assets, domain, subset)
    if per_class <= 0 or not recs:
        return np.zeros((0, size, size, 3), np.uint8), [], []
    gen = _stream(seed, [d.name for d in DOMAINS].index(domain), SUBSETS.index(subset), SPLITS.index(split))
    labels = [lab for lab in range(len(recs)) for _ in range(per_class)]
    src = rgba_tensor(assets.rgba[[int(recs[lab]["index"]) for lab in labels]])
    colour_idx = torch.randint(len(BACKGROUND_COLOURS), (len(labels),), generator=gen)
    base = torch.tensor([BACKGROUND_COLOURS[i][1] for i in colour_idx.tolist()], dtype=torch.float32) / 255
    jitter = (torch.rand(len(labels), 3, generator=gen) - 0.5) * (24 / 255)
    views = augment(src, gen, BENCHMARK_AUG, background=(base + jitter).clamp(0, 1), out_size=size)
    arr = (views.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    return arr, labels, [BACKGROUND_COLOURS[i][0] for i in colour_idx.tolist()]


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def benchmark_caption(name: str, colour: str) -> str:
    return f"an emoji of {_article(name)} {name} on {_article(colour)} {colour} background"


def _jpeg_bytes(img: np.ndarray, quality: int = 95) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def subset_dirname(domain: str, subset: str, assets: Assets) -> str:
    dom = assets.split["domains"][domain]
    return f"{dom['prefix']}{len(dom[subset.lower()])}_{subset}"


def build(
    root: Path,
    train: int = 16,
    val: int = 4,
    test: int = 10,
    seed: int = 0,
    size: int = 64,
    domains: Optional[Sequence[str]] = None,
    assets: Optional[Assets] = None,
    force: bool = False,
) -> List[Path]:
    """Write Mini-Beyond under ``root`` in the LAION-Beyond layout; returns the subset directories.

    Idempotent: a stamp (parameters + asset hash) in ``root`` makes a repeated call a no-op, and
    a changed parameter or asset rebuilds the Mini-Beyond directories (only those) from scratch,
    which also discards stale few-shot caches inside them.
    """
    root = Path(root)
    assets = assets or load_assets()
    domains = list(domains) if domains is not None else [d.name for d in DOMAINS]
    unknown = set(domains) - {d.name for d in DOMAINS}
    if unknown:
        raise ValueError(f"unknown Mini-Beyond domains {sorted(unknown)}")
    counts = {"train": train, "val": val, "test": test}
    params = {"version": BUILD_VERSION, "counts": counts, "seed": seed, "size": size, "domains": domains}
    stamp_path = root / STAMP_FILE
    targets = [root / subset_dirname(d, s, assets) for d in domains for s in SUBSETS]
    stamp = {"params": params, "asset_hash": assets.digest(), "dirs": [t.name for t in targets]}
    if not force and stamp_path.is_file() and all(t.is_dir() for t in targets):
        try:
            if json.loads(stamp_path.read_text(encoding="utf-8")) == stamp:
                log.info("Mini-Beyond already built in %s", root)
                return targets
        except json.JSONDecodeError:
            pass
    root.mkdir(parents=True, exist_ok=True)
    stamp_path.unlink(missing_ok=True)
    ours = re.compile("(" + "|".join(d.prefix for d in DOMAINS) + r")\d+_(OOP|IP)(\.tmp)?")
    for old in root.iterdir():
        if old.is_dir() and ours.fullmatch(old.name):
            shutil.rmtree(old)

    for dom_name in domains:
        dom = assets.split["domains"][dom_name]
        superclasses = sorted({r["subgroup"] for s in SUBSETS for r in dom[s.lower()]})
        for subset in SUBSETS:
            recs = dom[subset.lower()]
            target = root / subset_dirname(dom_name, subset, assets)
            tmp = root / (target.name + ".tmp")
            if tmp.exists():
                shutil.rmtree(tmp)
            for r in recs:
                (tmp / "images" / r["classname"]).mkdir(parents=True, exist_ok=True)
            payload: Dict[str, Dict[str, object]] = {}
            for split in SPLITS:
                views, labels, colours = render_views(assets, dom_name, subset, split, counts[split], seed, size)
                items: Dict[str, object] = {}
                seen: Dict[int, int] = {}
                for k, (img, lab, colour) in enumerate(zip(views, labels, colours)):
                    rec = recs[lab]
                    j = seen[lab] = seen.get(lab, -1) + 1
                    image_name = f"{split}_{j:03d}.jpg"
                    (tmp / "images" / rec["classname"] / image_name).write_bytes(_jpeg_bytes(img))
                    items[str(k)] = {
                        "classname": rec["classname"],
                        "image_name": image_name,
                        "label": lab,
                        "s_label": superclasses.index(rec["subgroup"]),
                        "superclass": rec["subgroup"],
                        "INFO": {"Refined_caption3": benchmark_caption(rec["classname"], colour)},
                    }
                payload[split] = items
            _write_json(tmp / f"split_Xin_{target.name}.json", payload)
            tmp.replace(target)
    _write_json(stamp_path, stamp)
    log.info("built Mini-Beyond (%s) in %s", ", ".join(domains), root)
    return targets


# --------------------------------------------------------------------------------------------
# The mini CLIP: creation, zero-shot evaluation, pre-training
# --------------------------------------------------------------------------------------------

def create_mini_clip(weights: Optional[Path] = None):
    """``open_clip`` model + tokenizer for ``mini-clip`` (random init when ``weights`` is None)."""
    import open_clip

    open_clip.add_model_config(MODEL_CONFIG_DIR)
    model = open_clip.create_model(MODEL_NAME, pretrained=str(weights) if weights else None)
    return model, open_clip.get_tokenizer(MODEL_NAME)


@torch.no_grad()
def encode_images(model, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    feats = [model.encode_image(normalize(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    return F.normalize(torch.cat(feats), dim=-1)


@torch.no_grad()
def encode_texts(model, tokenizer, texts: Sequence[str]) -> torch.Tensor:
    return F.normalize(model.encode_text(tokenizer(list(texts))), dim=-1)


def _jpeg_roundtrip(views: np.ndarray) -> torch.Tensor:
    from PIL import Image

    dec = [np.asarray(Image.open(io.BytesIO(_jpeg_bytes(v))).convert("RGB")) for v in views]
    return torch.from_numpy(np.stack(dec)).permute(0, 3, 1, 2).float().div_(255)


@torch.no_grad()
def evaluate(
    model, tokenizer, assets: Assets, per_class: int = 10, seed: int = 0, kmeans: bool = True,
    domains: Optional[Sequence[str]] = None,
) -> Dict[str, object]:
    """Zero-shot (and k-means) accuracy on the benchmark's test views, per domain and subset.

    The views are exactly the ``test`` split ``build`` writes (same stream, JPEG round trip), and
    zero-shot uses ``ZERO_SHOT_TEMPLATE`` with the domain hint, i.e. what the ZS trainer sees.
    """
    model.eval()
    out: Dict[str, object] = {"per_domain": {}}
    for d in DOMAINS:
        if domains is not None and d.name not in domains:
            continue
        res: Dict[str, float] = {}
        for subset in SUBSETS:
            recs = subset_records(assets, d.name, subset)
            views, labels, _ = render_views(assets, d.name, subset, "test", per_class, seed)
            img = encode_images(model, _jpeg_roundtrip(views))
            txt = encode_texts(model, tokenizer, [ZERO_SHOT_TEMPLATE.format(name=r["classname"], hint=d.hint) for r in recs])
            y = np.asarray(labels)
            res[f"zs_{subset.lower()}"] = 100 * float(((img @ txt.T).argmax(1).numpy() == y).mean())
            res[f"chance_{subset.lower()}"] = 100 / len(recs)
            if kmeans:
                from sklearn.cluster import KMeans

                from dassl.evaluation.clustering import clustering_accuracy

                pred = KMeans(n_clusters=len(recs), n_init=3, random_state=seed).fit_predict(img.numpy())
                res[f"kmeans_{subset.lower()}"] = clustering_accuracy(y, pred)
        out["per_domain"][d.name] = res
    keys = sorted({k for r in out["per_domain"].values() for k in r})
    out["mean"] = {k: float(np.mean([r[k] for r in out["per_domain"].values()])) for k in keys}
    return out


def _param_groups(model, weight_decay: float) -> List[Dict[str, object]]:
    """open_clip's rule: no weight decay on gains, biases, embeddings' 1-d params and logit scale."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterable[np.ndarray]:
    """Endless batches, each without repeats (a repeat would be a false negative for ClipLoss)."""
    buf = np.zeros(0, dtype=np.int64)
    while True:
        while len(buf) < batch_size:
            buf = np.concatenate([buf, rng.permutation(n)])
        batch, buf = buf[:batch_size], buf[batch_size:]
        if len(np.unique(batch)) < len(batch):
            # the tail of one permutation met the head of the next: take a fresh permutation
            batch = rng.permutation(n)[:batch_size]
        yield batch


def _lr_at(step: int, total: int, warmup: int, lr: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * lr * (1 + math.cos(math.pi * progress))


def fp16_state_dict(model) -> Dict[str, torch.Tensor]:
    return {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}


class _Pretrainer:
    """Model, optimiser and every random stream of one pre-training run, seeded at construction."""

    def __init__(self, assets: Assets, seed: int, batch_size: int, lr: float, weight_decay: float,
                 warmup_frac: float) -> None:
        from open_clip.loss import ClipLoss

        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.model, self.tokenizer = create_mini_clip()
        self.model.train()
        corpus = np.asarray(assets.split["pretrain_indices"], dtype=np.int64)
        meta = assets.meta
        self.corpus_size = len(corpus)
        self.tokens = torch.stack([self.tokenizer(emoji_captions(str(meta[i]["name"]), str(meta[i]["subgroup"])))
                                   for i in corpus])
        self.images = rgba_tensor(assets.rgba[corpus])
        self.loss_fn = ClipLoss()
        self.opt = torch.optim.AdamW(_param_groups(self.model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
        self.gen = torch.Generator().manual_seed(seed)
        self.batches = _batches(len(corpus), batch_size, np.random.default_rng(seed))
        self.lr, self.warmup_frac = lr, warmup_frac

    def warmup_steps(self, total: int) -> int:
        return max(1, int(self.warmup_frac * total))

    def step(self, step: int, total: int) -> float:
        idx = torch.from_numpy(next(self.batches))
        for g in self.opt.param_groups:
            g["lr"] = _lr_at(step, total, self.warmup_steps(total), self.lr)
        x = normalize(augment(self.images[idx], self.gen, PRETRAIN_AUG))
        txt = self.tokens[idx, torch.randint(self.tokens.shape[1], (len(idx),), generator=self.gen)]
        img_f = self.model.encode_image(x, normalize=True)
        txt_f = self.model.encode_text(txt, normalize=True)
        loss = self.loss_fn(img_f, txt_f, self.model.logit_scale.exp())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))  # as open_clip's training loop does
        return loss.item()


def pretrain(
    out: Path = ASSETS_DIR / WEIGHTS_FILE,
    steps: int = 600,
    minutes: Optional[float] = None,
    seed: int = 0,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    warmup_frac: float = 0.05,
    threads: int = 2,
    log_every: int = 10,
    assets: Optional[Assets] = None,
    log_path: Optional[Path] = None,
) -> Dict[str, object]:
    """Pre-train ``mini-clip`` from scratch on the corpus; write fp16 safetensors and the log.

    Reproducible: same seed, step count and thread count on the same machine give the same
    weights. ``minutes`` derives the step count from a few timed steps of a throw-away run (so
    it depends on the machine load); the run itself is then exactly the ``steps=N`` run, and the
    log records N.
    """
    from safetensors.torch import save_file
    from tqdm import tqdm

    torch.set_num_threads(threads)
    assets = assets or load_assets()
    out = Path(out)
    log_path = Path(log_path) if log_path else out.with_name(LOG_FILE)
    if minutes is not None:
        probe = _Pretrainer(assets, seed, batch_size, lr, weight_decay, warmup_frac)
        probe.step(0, 100)  # first step pays one-off allocation costs
        t = time.time()
        for s in range(3):
            probe.step(s + 1, 100)
        per_step = (time.time() - t) / 3
        steps = max(1, int(minutes * 60 / per_step))
        log.info("%.2f s/step -> %d steps for %.1f minutes", per_step, steps, minutes)
        del probe
    run = _Pretrainer(assets, seed, batch_size, lr, weight_decay, warmup_frac)
    model = run.model
    log.info("corpus: %d emoji x %d templates", run.corpus_size, run.tokens.shape[1])

    t0 = time.time()
    history: List[Dict[str, float]] = []
    bar = tqdm(range(steps), desc="pretrain mini-clip")
    running = None
    for s in bar:
        loss = run.step(s, steps)
        running = loss if running is None else 0.9 * running + 0.1 * loss
        if s % log_every == 0 or s == steps - 1:
            history.append({"step": s, "loss": round(loss, 5), "lr": _lr_at(s, steps, run.warmup_steps(steps), lr),
                            "logit_scale": round(float(model.logit_scale.exp()), 4),
                            "elapsed_s": round(time.time() - t0, 1)})
            bar.set_postfix(loss=f"{running:.3f}")
    train_s = time.time() - t0

    state = fp16_state_dict(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata={"model": MODEL_NAME, "seed": str(seed), "steps": str(steps)})
    # evaluate what is shipped: the fp16-rounded weights, loaded the way users load them
    model_eval, tokenizer = create_mini_clip(out)
    results = evaluate(model_eval, tokenizer, assets, seed=0)
    record = {
        "model": MODEL_NAME,
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "warmup_steps": run.warmup_steps(steps),
        "threads": threads,
        "corpus_emoji": run.corpus_size,
        "templates": list(PRETRAIN_TEMPLATES),
        "train_wall_s": round(train_s, 1),
        "s_per_step": round(train_s / max(1, steps), 3),
        "versions": {"torch": torch.__version__, "open_clip": __import__("open_clip").__version__},
        "eval": results,
        "history": history,
    }
    _write_json(log_path, record)
    log.info("pre-training done: %d steps in %.1f min; zero-shot mean %s", steps, train_s / 60, results["mean"])
    return record


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def _format_eval(res: Dict[str, object]) -> str:
    lines = [f"{'domain':<10} {'ZS IP':>7} {'ZS OOP':>7} {'chance':>7} {'KM IP':>7} {'KM OOP':>7}"]
    rows = list(res["per_domain"].items()) + [("mean", res["mean"])]
    for name, r in rows:
        lines.append(f"{name:<10} {r['zs_ip']:7.1f} {r['zs_oop']:7.1f} {r['chance_oop']:7.1f} "
                     f"{r.get('kmeans_ip', float('nan')):7.1f} {r.get('kmeans_oop', float('nan')):7.1f}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tools.mini_beyond", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="render emoji and write arrays, metadata, licence and split")
    r.add_argument("--assets", type=Path, default=ASSETS_DIR)
    r.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("split", help="recompute split.json from emoji_meta.json")
    s.add_argument("--assets", type=Path, default=ASSETS_DIR)
    s.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("pretrain", help="pre-train mini-clip on the pre-training corpus")
    t.add_argument("--out", type=Path, default=ASSETS_DIR / WEIGHTS_FILE)
    t.add_argument("--steps", type=int, default=600)
    t.add_argument("--minutes", type=float, default=None, help="derive the step count from a time budget")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--threads", type=int, default=2)
    e = sub.add_parser("eval", help="zero-shot / k-means accuracy of a mini-clip weights file")
    e.add_argument("--weights", type=Path, default=ASSETS_DIR / WEIGHTS_FILE)
    d = sub.add_parser("demo", help="the README's main job: build, zero-shot + FSNL at 4 shots, table, plot")
    from tools.mini_beyond_demo import add_arguments as add_demo_arguments

    add_demo_arguments(d)
    g = sub.add_parser("golden", help="re-measure the golden numbers of tests/test_golden_mini_beyond.py")
    g.add_argument("--domain", default="MiniAttire")
    b = sub.add_parser("build", help="write the Mini-Beyond benchmark in the LAION-Beyond layout")
    b.add_argument("--root", type=Path, required=True)
    b.add_argument("--train", type=int, default=16)
    b.add_argument("--val", type=int, default=4)
    b.add_argument("--test", type=int, default=10)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--size", type=int, default=64)
    b.add_argument("--domains", nargs="*", default=None)
    b.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    if args.cmd not in ("demo", "golden"):  # those runs log through dassl's own handlers
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    if args.cmd == "render":
        write_assets(args.assets, args.seed)
    elif args.cmd == "split":
        write_split(args.assets, args.seed)
    elif args.cmd == "pretrain":
        rec = pretrain(args.out, steps=args.steps, minutes=args.minutes, seed=args.seed,
                       batch_size=args.batch_size, lr=args.lr, threads=args.threads)
        print(_format_eval(rec["eval"]))
        print(f"{rec['steps']} steps, {rec['train_wall_s'] / 60:.1f} min")
    elif args.cmd == "eval":
        torch.set_num_threads(2)
        model, tok = create_mini_clip(args.weights)
        print(_format_eval(evaluate(model, tok, load_assets())))
    elif args.cmd == "demo":
        from tools.mini_beyond_demo import main_from_args

        raise SystemExit(main_from_args(args))
    elif args.cmd == "golden":
        from tools.mini_beyond_demo import write_golden

        torch.set_num_threads(os.cpu_count() or 1)
        write_golden(args.domain)
    elif args.cmd == "build":
        dirs = build(args.root, args.train, args.val, args.test, args.seed, args.size, args.domains, force=args.force)
        for d in dirs:
            print(d)


if __name__ == "__main__":
    main()
