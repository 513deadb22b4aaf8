"""Constants, the five domains, names and captions, the OOP/IP split, and the shipped assets."""
from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from dassl.utils import atomic_write

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
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

def domain_names(names: Sequence[str], option: str = "--domains") -> List[str]:
    """The builder's domain names (``Animals``) for ``names`` given either way: as the builder's name or
    as the registered dataset (``MiniAnimals``, what ``demo`` / ``compare`` and ``train.py`` take); an
    unknown one is a ``ValueError`` listing both spellings. ``build`` took only the first and ``demo``
    only the second, and ``build --domains MiniPlants`` was refused without naming the choices."""
    by_any = {d.name: d.name for d in DOMAINS}
    by_any.update({d.prefix: d.name for d in DOMAINS})
    if not names:  # built nothing and said "already built"
        raise ValueError(f"{option} names no domain; give at least one, or leave {option} out for all five")
    unknown = [n for n in names if n not in by_any]
    if unknown:
        raise ValueError(f"{option} {' '.join(unknown)}: not a Mini-Beyond domain; choose from "
                         f"{', '.join(d.name for d in DOMAINS)} (or {', '.join(d.prefix for d in DOMAINS)})")
    return list(dict.fromkeys(by_any[n] for n in names))


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



def write_json_file(path: Path, obj: object) -> None:
    """Indented JSON through the project's one atomic writer (fsync, umask)."""
    atomic_write(str(path), lambda f: f.write(json.dumps(obj, indent=1, ensure_ascii=False) + "\n"))


