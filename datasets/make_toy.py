"""Write a tiny benchmark in the exact LAION-Beyond layout, for tests and smoke runs.

    python -m datasets.make_toy --root DIR [--domains Animals92_42 Food53_27] [--image-size 32]
                                [--train 6 --val 3 --test 4] [--seed 0]

The class names are chosen to exercise the corner cases of name matching: multi-word names
("giant anteater"), names inside other names or words ("ant" / "giant anteater" / "elephant
shrew" / "plant"), a class "art" in the "folk art" domain, and names with ``_`` and ``.``
("St._Louis_ribs", "Mr._Mime"). Captions mostly mention their class (some mention two, a few
none, one is empty, one record has no INFO). Each class has its own colour and stripe pattern, so
even a linear probe on raw pixels separates the classes. The second class (label 1) of every
subset has a third of the train images of the others, to exercise "fewer than K shots".
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by path (python dir/script.py): the repo root goes first on sys.path, as under -m
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if __name__ == "__main__":  # a Ctrl-C during the imports below: one line, not a traceback
    from dassl.ctrl_c import quiet_ctrl_c_while_loading

    quiet_ctrl_c_while_loading()

import colorsys
import json
import logging
import os
import re
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

from dassl.cli import ArgumentParser, rng_seed
from dassl.ctrl_c import exit_with
from dassl.utils import atomic_write_text
from datasets.laion_beyond import laion_beyond_domains

__all__ = ["make_toy", "TOY_CLASSES", "DEFAULT_DOMAINS", "main"]

logger = logging.getLogger(__name__)

# (classname, superclass) per subset; the OOP and IP names of a domain are disjoint.
TOY_CLASSES: Dict[str, Dict[str, List[Tuple[str, str]]]] = {
    "Animals92_42": {
        "OOP": [("giant anteater", "mammal"), ("ant", "insect"), ("elephant shrew", "mammal"),
                ("sun_bear", "mammal"), ("aye-aye", "primate")],
        "IP": [("zebra", "mammal"), ("red panda", "mammal"), ("antlion", "insect")],
    },
    "Food53_27": {
        "OOP": [("St._Louis_ribs", "meat dish"), ("pad thai", "noodle dish"), ("tart", "dessert"),
                ("tarte tatin", "dessert")],
        "IP": [("pizza", "baked dish"), ("sushi", "rice dish"), ("apple pie", "dessert")],
    },
    "FolkArt59_27": {
        "OOP": [("art", "visual art"), ("string art", "visual art"), ("Madhubani painting", "painting"),
                ("batik", "textile art")],
        "IP": [("origami", "paper craft"), ("pottery", "ceramics"), ("quilt", "textile art")],
    },
    "Pokemon89_39": {
        "OOP": [("Mr._Mime", "psychic"), ("Mime_Jr.", "psychic"), ("Porygon2", "normal"), ("Ho-Oh", "fire")],
        "IP": [("Pikachu", "electric"), ("Charmander", "fire"), ("Bulbasaur", "grass")],
    },
}
DEFAULT_DOMAINS = ("Animals92_42", "Food53_27", "FolkArt59_27")

_ONE_NAME = (
    "A photo of the {a} in its usual surroundings.",
    "Close-up of the {a}, seen from the side.",
    "The {a} next to a potted plant.",
    "{A} photographed on a bright day.",
)
_TWO_NAMES = "The {a} and the {b} side by side."
_NO_NAME = "A blurry picture of something hard to make out."


def _display(name: str) -> str:
    """How a caption writer would spell a class name (folder names use ``_`` for spaces)."""
    return name.replace("_", " ")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()


def _caption(k: int, name: str, other: str) -> str:
    """Deterministic caption for the k-th record of a subset."""
    a, b = _display(name), _display(other)
    if k % 7 == 6:
        return _NO_NAME
    if k % 3 == 2:
        return _TWO_NAMES.format(a=a, b=b)
    template = _ONE_NAME[k % len(_ONE_NAME)]
    return template.format(a=a, A=a[:1].upper() + a[1:])


def _render(size: int, class_index: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Class colour and stripe direction/frequency, with per-image phase, brightness and noise."""
    hue = class_index / max(num_classes, 1)
    base = np.array(colorsys.hsv_to_rgb(hue, 0.75, 0.9))
    angle = np.pi / 4 * (class_index % 4)
    freq = 2 + class_index % 3
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    phase = rng.uniform(0, 2 * np.pi)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
    brightness = rng.uniform(0.85, 1.0)
    img = base[None, None, :] * (0.55 + 0.45 * wave[..., None]) * brightness
    img = img + rng.normal(0.0, 0.04, size=img.shape)
    return (np.clip(img, 0.0, 1.0) * 255).round().astype(np.uint8)


def _write_subset(
    root: str,
    dirname: str,
    classes: List[Tuple[str, str]],
    class_offset: int,
    num_domain_classes: int,
    counts: Dict[str, int],
    image_size: int,
    seed_key: Sequence[int],
    empty_caption: bool,
) -> Dict[str, Any]:
    subset_dir = os.path.join(root, dirname)
    superclasses = sorted({sc for _, sc in classes})
    s_label = {sc: i for i, sc in enumerate(superclasses)}
    splits: Dict[str, Dict[str, Any]] = {"train": {}, "val": {}, "test": {}}
    num_images = {"train": 0, "val": 0, "test": 0}
    k = 0
    for label, (name, superclass) in enumerate(classes):
        class_dir = os.path.join(subset_dir, "images", name)
        os.makedirs(class_dir, exist_ok=True)
        other = classes[(label + 1) % len(classes)][0]
        rng = np.random.default_rng([*seed_key, label])
        j = 0
        for split in ("train", "val", "test"):
            n = counts[split]
            if split == "train" and label == 1:
                n = max(1, n // 3)  # a class with fewer train images than the usual shot counts
            for _ in range(n):
                image_name = f"{_slug(name)}_{j:03d}.jpg"
                Image.fromarray(_render(image_size, class_offset + label, num_domain_classes, rng)).save(
                    os.path.join(class_dir, image_name), quality=90
                )
                item: Dict[str, Any] = {
                    "classname": name,
                    "image_name": image_name,
                    "label": label,
                    "s_label": s_label[superclass],
                    "superclass": superclass,
                    "INFO": {"Refined_caption3": _caption(k, name, other), "source": "toy"},
                }
                if empty_caption and split == "train" and label == len(classes) - 1 and j == 0:
                    item["INFO"]["Refined_caption3"] = ""
                if split == "val" and label == 0 and j == counts["train"]:
                    del item["INFO"]  # a record without INFO: caption must default to ""
                splits[split][str(len(splits[split]))] = item
                num_images[split] += 1
                j += 1
                k += 1
    split_file = os.path.join(subset_dir, f"split_Xin_{dirname}.json")
    atomic_write_text(split_file, json.dumps(splits, ensure_ascii=False, indent=1))
    return {
        "dir": subset_dir,
        "split_file": split_file,
        "classnames": [name for name, _ in classes],
        "superclasses": superclasses,
        "num_images": num_images,
    }


def _subset_dirname(prefix: str, classes: Sequence[Tuple[str, str]], subset: str) -> str:
    return f"{prefix}{len(classes)}_{subset}"


def check_toy_root(root: str, domains: Sequence[str]) -> None:
    """Refuse (one line: ``NotADirectoryError`` / ``FileExistsError``) a ``root`` the toy cannot be written
    into without harm, before anything is written: a file (a traceback before), or a root that already
    holds a folder of a requested domain under another name (e.g. the real ``Animals92_OOP``): the toy's
    ``Animals5_OOP`` beside it made that domain ambiguous, and the loader refused the real data."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise NotADirectoryError(f'--root "{root}" is a file; give a folder for the toy benchmark')
    if not os.path.isdir(root):
        return
    entries = sorted(os.listdir(root))
    registered = laion_beyond_domains()
    for domain in domains:
        prefix = registered[domain].prefix
        for subset in ("OOP", "IP"):
            own = _subset_dirname(prefix, TOY_CLASSES[domain][subset], subset)
            pattern = re.compile(re.escape(prefix) + r"[0-9]+_" + subset)
            other = next((e for e in entries if pattern.fullmatch(e) and e != own), None)
            if other is not None:
                raise FileExistsError(
                    f"{os.path.join(root, other)}: {domain}'s {subset} folder is already under --root, and the "
                    f"toy's {own} beside it would make {domain} ambiguous (the loader refuses to guess); give "
                    "--root a folder of its own for the toy")


def make_toy(
    root: str,
    domains: Sequence[str] = DEFAULT_DOMAINS,
    image_size: int = 32,
    num_train: int = 6,
    num_val: int = 3,
    num_test: int = 4,
    seed: int = 0,
) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """Write the toy benchmark under ``root``; returns ``{domain: {subset: info}}``.

    ``info`` has ``dir``, ``split_file``, ``classnames`` (label order), ``superclasses`` (s_label
    order) and ``num_images`` per split. Existing files are overwritten, nothing is deleted.
    """
    unknown = [d for d in domains if d not in TOY_CLASSES]
    if unknown:
        raise ValueError(f"No toy classes for {unknown}; available: {sorted(TOY_CLASSES)}")
    if min(num_train, num_val, num_test) < 1 or image_size < 8:
        raise ValueError("need at least one image per split and --image-size >= 8")
    root = os.fspath(root)
    check_toy_root(root, domains)
    registered = laion_beyond_domains()
    counts = {"train": num_train, "val": num_val, "test": num_test}
    out: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for d_index, domain in enumerate(sorted(TOY_CLASSES)):
        if domain not in domains:
            continue
        prefix = registered[domain].prefix
        table = TOY_CLASSES[domain]
        num_domain_classes = len(table["OOP"]) + len(table["IP"])
        out[domain] = {}
        offset = 0
        for s_index, subset in enumerate(("OOP", "IP")):
            classes = table[subset]
            dirname = _subset_dirname(prefix, classes, subset)
            out[domain][subset] = _write_subset(
                root, dirname, classes, offset, num_domain_classes, counts, image_size,
                seed_key=(seed, d_index, s_index), empty_caption=(subset == "OOP"),
            )
            offset += len(classes)
    return out


def main(argv: Sequence[str] = ()) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="output folder (the DATASET.ROOT of the toy)")
    parser.add_argument("--domains", nargs="+", default=list(DEFAULT_DOMAINS), choices=sorted(TOY_CLASSES))
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--train", type=int, default=6, help="train images per class")
    parser.add_argument("--val", type=int, default=3, help="val images per class")
    parser.add_argument("--test", type=int, default=4, help="test images per class")
    parser.add_argument("--seed", type=rng_seed, default=0, help="seed of the images (0..2**32-1)")
    args = parser.parse_args(list(argv) or None)
    try:
        info = make_toy(args.root, args.domains, args.image_size, args.train, args.val, args.test, args.seed)
    except (ValueError, OSError) as err:  # bad counts, a file as --root, another copy of a domain in the way
        print(f"error: {err}", file=sys.stderr)
        return 2
    for domain, subsets in info.items():
        parts = [
            f"{os.path.basename(s['dir'])} ({len(s['classnames'])} classes, {sum(s['num_images'].values())} images)"
            for s in subsets.values()
        ]
        print(f"{domain}: {', '.join(parts)}")
    print(f"Toy LAION-Beyond written to {os.path.abspath(args.root)}")
    return 0


if __name__ == "__main__":
    exit_with(main)
