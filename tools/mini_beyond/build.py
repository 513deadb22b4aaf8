"""``build``: write Mini-Beyond under a root in the exact LAION-Beyond layout."""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .common import BUILD_VERSION, DOMAINS, SPLITS, STAMP_FILE, Assets, load_assets, write_json_file
from .views import SUBSETS, benchmark_caption, jpeg_bytes, render_views, subset_dirname

log = logging.getLogger(__name__)


def _domain_dirs(root: Path, prefix: str) -> List[Path]:
    """Folders of one domain under ``root``: ``<prefix><n>_OOP|IP`` and their ``.tmp`` leftovers."""
    pattern = re.compile(re.escape(prefix) + r"\d+_(OOP|IP)(\.old)?(\.tmp)?")
    return sorted(p for p in root.iterdir() if p.is_dir() and pattern.fullmatch(p.name)) if root.is_dir() else []


#: What a build (and the dataset code's few-shot cache) writes inside a subset folder; anything else
#: there is someone else's and survives a rebuild only by refusing it.
_BUILD_FILE = re.compile(r"images/[^/]+/(train|val|test)_\d{3,}\.jpg|split_fewshot/.*")


def foreign_files(folder: Path) -> List[Path]:
    """Files under a subset ``folder`` that no build wrote (``images/<class>/<split>_NNN.jpg``, the
    folder's ``split_Xin_<folder>.json``) and that are not the few-shot cache (``split_fewshot/``)."""
    own_split = f"split_Xin_{folder.name.removesuffix('.tmp').removesuffix('.old')}.json"
    out = []
    for path in sorted(folder.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        rel = path.relative_to(folder).as_posix()
        if rel != own_split and not _BUILD_FILE.fullmatch(rel):
            out.append(path)
    return out


def read_stamp(root: Path) -> Dict[str, Dict[str, object]]:
    """``{domain: {"params", "asset_hash", "dirs"}}`` of what earlier builds wrote under ``root``.

    Stamps of the first format (one entry for the whole build) are read as one entry per domain.
    """
    path = Path(root) / STAMP_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    if isinstance(data.get("domains"), dict):
        return data["domains"]
    if "params" in data and isinstance(data.get("dirs"), list):  # version-1 stamp: one build of several domains
        return {d: {"params": None, "asset_hash": None, "dirs": data["dirs"]} for d in data["params"].get("domains", [])}
    return {}


#: Bounds of ``build``'s arguments: at least one training and test image per class (an empty train
#: split only failed later, in train.py, with a traceback), and a total that fits in memory (100,000
#: per class asked for ~59 GB at once); image sizes the renderer and the mini CLIP handle.
MAX_IMAGES_PER_CLASS = 1000
SIZE_RANGE = (16, 512)


def check_build_args(counts: Dict[str, int], size: int) -> None:
    """Raise a one-line ``ValueError`` for counts or an image size ``build`` cannot sensibly make."""
    for split, low in (("train", 1), ("val", 0), ("test", 1)):
        if counts[split] < low:
            raise ValueError(f"--{split} {counts[split]}: images per class must be >= {low}")
    if sum(counts.values()) > MAX_IMAGES_PER_CLASS:
        raise ValueError(f"--train + --val + --test = {sum(counts.values())} images per class; at most "
                         f"{MAX_IMAGES_PER_CLASS} (they are rendered in memory)")
    if not SIZE_RANGE[0] <= size <= SIZE_RANGE[1]:
        raise ValueError(f"--size {size}: the image side must be in {SIZE_RANGE[0]}..{SIZE_RANGE[1]} pixels")


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

    Replaces only what it writes: each requested domain is rebuilt only when its stamp entry
    (parameters + asset hash) differs, and then only that domain's folders are replaced (which
    also discards stale few-shot caches inside them). Other domains, and anything else under the
    shared root, are never touched. A folder of a requested domain that no earlier build recorded,
    or a file inside a recorded folder that no build wrote (:func:`foreign_files`), is refused
    unless ``force``: it may be the user's own data.
    """
    root = Path(root)
    assets = assets or load_assets()
    domains = list(domains) if domains is not None else [d.name for d in DOMAINS]
    unknown = set(domains) - {d.name for d in DOMAINS}
    if unknown:
        raise ValueError(f"unknown Mini-Beyond domains {sorted(unknown)}")
    counts = {"train": train, "val": val, "test": test}
    check_build_args(counts, size)
    params = {"version": BUILD_VERSION, "counts": counts, "seed": seed, "size": size}
    asset_hash = assets.digest()
    prefixes = {d.name: d.prefix for d in DOMAINS}
    root.mkdir(parents=True, exist_ok=True)
    stamp = read_stamp(root)
    all_targets: List[Path] = []
    built = []
    for dom_name in domains:
        targets = [root / subset_dirname(dom_name, s, assets) for s in SUBSETS]
        all_targets.extend(targets)
        entry = {"params": params, "asset_hash": asset_hash, "dirs": [t.name for t in targets]}
        if not force and stamp.get(dom_name) == entry and all(t.is_dir() for t in targets):
            continue
        recorded = set(stamp.get(dom_name, {}).get("dirs", []))
        existing = _domain_dirs(root, prefixes[dom_name])
        foreign = [p for p in existing if p.name not in recorded and not p.name.endswith(".tmp")]
        if foreign and not force:
            raise FileExistsError(
                f"{', '.join(map(str, foreign))}: not written by an earlier Mini-Beyond build (no entry in "
                f"{root / STAMP_FILE}); move it away or pass --force to replace it"
            )
        # a recorded folder is replaced whole: files someone put into it would go with it
        added = [f for p in existing if not p.name.endswith(".tmp") for f in foreign_files(p)]
        if added and not force:
            more = f" and {len(added) - 1} more" if len(added) > 1 else ""
            raise FileExistsError(
                f"{added[0]}{more}: not written by a Mini-Beyond build, inside {dom_name}'s folders that this "
                "build replaces; move them away or pass --force to delete them with the folders"
            )
        # The stamp entry goes first, so an interrupted build is rebuilt next time.
        stamp.pop(dom_name, None)
        write_json_file(root / STAMP_FILE, {"version": BUILD_VERSION, "domains": stamp})
        for tmp in (p for p in existing if p.name.endswith(".tmp")):
            shutil.rmtree(tmp)
        for target in targets:
            _write_subset(root, dom_name, target, assets, counts, seed, size)
        for old in existing:
            if old.exists() and old not in targets:
                shutil.rmtree(old)  # the domain's folders of an earlier split (other class counts)
        stamp[dom_name] = entry
        write_json_file(root / STAMP_FILE, {"version": BUILD_VERSION, "domains": stamp})
        built.append(dom_name)
    if built:
        log.info("built Mini-Beyond (%s) in %s", ", ".join(built), root)
    else:
        log.info("Mini-Beyond already built in %s", root)
    return all_targets


def _write_subset(root: Path, dom_name: str, target: Path, assets: Assets, counts: Dict[str, int],
                  seed: int, size: int) -> None:
    """Write one subset folder into ``<target>.tmp``, then swap it in for ``target``."""
    dom = assets.split["domains"][dom_name]
    superclasses = sorted({r["subgroup"] for s in SUBSETS for r in dom[s.lower()]})
    subset = target.name.rsplit("_", 1)[1]
    recs = dom[subset.lower()]
    tmp = root / (target.name + ".tmp")
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
            (tmp / "images" / rec["classname"] / image_name).write_bytes(jpeg_bytes(img))
            items[str(k)] = {
                "classname": rec["classname"],
                "image_name": image_name,
                "label": lab,
                "s_label": superclasses.index(rec["subgroup"]),
                "superclass": rec["subgroup"],
                "INFO": {"Refined_caption3": benchmark_caption(rec["classname"], colour)},
            }
        payload[split] = items
    write_json_file(tmp / f"split_Xin_{target.name}.json", payload)
    if target.exists():
        old = root / (target.name + ".old.tmp")
        target.replace(old)
        tmp.replace(target)
        shutil.rmtree(old)
    else:
        tmp.replace(target)
