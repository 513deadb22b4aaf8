"""``build``: write Mini-Beyond under a root in the exact LAION-Beyond layout."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .common import (
    BUILD_VERSION,
    DOMAINS,
    SPLITS,
    STAMP_FILE,
    Assets,
    domain_names,
    load_assets,
    write_json_file,
)
from .views import SUBSETS, benchmark_caption, jpeg_bytes, render_views, subset_dirname

log = logging.getLogger(__name__)


def _domain_dirs(root: Path, prefix: str) -> List[Path]:
    """Entries of one domain under ``root``: ``<prefix><n>_OOP|IP`` and the leftovers :func:`_write_subset`
    writes (``.tmp``, ``.old.tmp``); files and links of those names too (:func:`foreign_files` refuses
    them). A bare ``<name>.old`` is no build's (a user's backup copy): it is not the domain's."""
    pattern = re.compile(re.escape(prefix) + r"[0-9]+_(OOP|IP)(\.old\.tmp|\.tmp)?")
    return sorted(p for p in root.iterdir() if pattern.fullmatch(p.name)) if root.is_dir() else []


#: The dataset code's few-shot cache folder inside a subset folder (``datasets.laion_beyond.FEWSHOT_DIRNAME``;
#: not imported: that package loads torch and every dataset, which a build does not need)
_FEWSHOT_DIR = "split_fewshot"
#: The dataset code's few-shot cache files (and their atomic-write temporaries) in ``split_fewshot/``.
_FEWSHOT_FILE = re.compile(_FEWSHOT_DIR + r"/(shot_-?[0-9]+-seed_-?[0-9]+(-[0-9a-f]+)?\.(json|pkl)|\..+\.[0-9]+-[0-9a-f]{8}\.tmp)")
#: The name of every image a build writes (``<split>_NNN.jpg``); ASCII digits only
_IMAGE_NAME = re.compile(r"(train|val|test)_([0-9]{3,})\.jpg")
#: The build's record of what it wrote into a subset folder (relative path -> size and SHA-256), written
#: last. Not ``split_Xin*.json``: the dataset code wants exactly one file of that pattern per folder.
MANIFEST_FILE = "mini_beyond_manifest.json"
MANIFEST_VERSION = 1


def _file_record(data: bytes) -> Dict[str, object]:
    """A manifest entry: what the build wrote, and what a file must still hold to count as the build's."""
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _read_manifest(path: Path) -> Dict[str, Dict[str, object]]:
    """The ``files`` of a manifest; ``ValueError`` (or the ``OSError``) when ``path`` is not one a build
    wrote (a build writes it whole, through :func:`write_json_file`, or not at all)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not (isinstance(data, dict) and data.get("version") == MANIFEST_VERSION and isinstance(data.get("files"), dict)):
        raise ValueError(f"{path}: not a Mini-Beyond manifest")
    return data["files"]


def _build_files(folder: Path, classnames: Sequence[str] = (),
                 counts: Optional[Dict[str, int]] = None) -> Callable[[str], bool]:
    """Whether a relative POSIX path in subset ``folder`` is a file a build wrote and nobody changed since.

    With a manifest (:data:`MANIFEST_FILE`, every build since it exists): the manifest itself and each
    file it lists whose size and SHA-256 still match. A file that is not listed, or whose content
    changed (a user's photo saved over ``train_003.jpg``), is the user's. The manifest is the build's
    own record: one a user forged to list their file cannot be told apart, and is not guarded against.
    A manifest that is not one (garbage, another structure, a directory) is no build's and does not
    count; the rest of the folder is then judged as below.

    Without one (a folder of a build older than the manifest, or one interrupted before writing it,
    the last file): see :func:`_named_build_files`.
    """
    manifest = folder / MANIFEST_FILE
    if os.path.lexists(manifest):
        try:
            files = _read_manifest(manifest)
        except (OSError, ValueError):
            return _named_build_files(folder, classnames, counts)

        def unchanged(rel: str) -> bool:
            rec = files.get(rel)
            path = folder / rel
            try:  # the size first: a large file of the user's is not read
                return (isinstance(rec, dict) and path.stat().st_size == rec.get("size")
                        and _file_record(path.read_bytes()) == rec)
            except OSError:
                return False

        return lambda rel: rel == MANIFEST_FILE or unchanged(rel)
    return _named_build_files(folder, classnames, counts)


def _named_build_files(folder: Path, classnames: Sequence[str] = (),
                       counts: Optional[Dict[str, int]] = None) -> Callable[[str], bool]:
    """The fallback of :func:`_build_files` for a folder without a manifest, by names only (so a
    built image whose content a user replaced still counts as the build's: only the manifest records
    content). A build writes ``images/<class>/<split>_NNN.jpg`` for the domain's ``classnames`` with
    NNN = 000 .. ``counts[split]`` - 1, then its split file listing exactly those. Counted as the
    build's: the split file, and each image that has such a name and (when the split file is readable)
    is listed in it. The split file alone would let a hand-edited entry (``train_999.jpg``) claim a
    user's photo; the ``counts`` of the stamp entry of the finished build that wrote the folder rule
    that out. Without them (a version-1 stamp, a rebuild under way: the stamp holds no parameters then)
    any NNN counts. In a ``<name>.tmp`` folder (the one a build writes into) the atomic-write
    temporaries of the split file and of the manifest count too: they are what a build killed in
    the middle of writing one leaves behind."""
    name = folder.name.removesuffix(".tmp").removesuffix(".old")
    split_file = f"split_Xin_{name}.json"
    image = re.compile(rf"images/({'|'.join(map(re.escape, classnames))})/{_IMAGE_NAME.pattern}")
    temp = re.compile(rf"\.({re.escape(split_file)}|{re.escape(MANIFEST_FILE)})\.[0-9]+-[0-9a-f]{{8}}\.tmp")
    in_progress = folder.name == f"{name}.tmp"
    try:
        data = json.loads((folder / split_file).read_text(encoding="utf-8"))
        listed = {f"images/{it['classname']}/{it['image_name']}" for split in SPLITS for it in data[split].values()}
        listed.add(split_file)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        listed = None

    def ours(rel: str) -> bool:
        if in_progress and temp.fullmatch(rel):
            return True
        if listed is not None and rel not in listed:
            return False
        if rel == split_file:
            return True
        m = image.fullmatch(rel) if classnames else None
        if m is None:
            return False
        split, number = m.group(2), m.group(3)
        return counts is None or (number == f"{int(number):03d}" and int(number) < counts[split])

    return ours


def foreign_files(folder: Path, classnames: Sequence[str] = (),
                  counts: Optional[Dict[str, int]] = None) -> List[Path]:
    """Everything under a subset ``folder`` that no build wrote, or that changed since
    (:func:`_build_files`; ``counts``: the image counts of the build that wrote it, when known), and
    that is not the few-shot cache (``split_fewshot/shot_K-seed_S-<digest>.json``); a symbolic link
    anywhere counts, and a ``folder`` that is itself a link is foreign as a whole. Directories count
    too, also empty ones: a build makes ``images/`` and ``images/<class>/`` for the domain's
    ``classnames``, the dataset code ``split_fewshot/``; any other directory is the user's."""
    if folder.is_symlink() or not folder.is_dir():
        return [folder]
    ours = _build_files(folder, classnames, counts)
    class_dirs = {f"images/{c}" for c in classnames}
    out: List[Path] = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if out and out[-1] in path.parents:
            continue  # inside a foreign directory, which is named already
        if path.is_symlink():
            out.append(path)
        elif path.is_dir():
            if rel not in ("images", _FEWSHOT_DIR) and rel not in class_dirs:
                out.append(path)
        elif not ours(rel) and not _FEWSHOT_FILE.fullmatch(rel):
            out.append(path)
    return out


def _recorded_counts(entry: object) -> Optional[Dict[str, int]]:
    """The per-class image counts of a domain's stamp entry, when it records a finished build (a
    rebuild under way, a version-1 stamp and a hand-edited one record none)."""
    params = entry.get("params") if isinstance(entry, dict) else None
    counts = params.get("counts") if isinstance(params, dict) else None
    if isinstance(counts, dict) and all(type(counts.get(s)) is int for s in SPLITS):
        return {s: counts[s] for s in SPLITS}
    return None


def read_stamp(root: Path) -> Dict[str, Dict[str, object]]:
    """``{domain: {"params", "asset_hash", "dirs"}}`` of what earlier builds wrote under ``root`` ({} when
    there is no stamp). Stamps of the first format (one entry for the whole build) are read as one entry
    per domain. A stamp that is not one (a directory, unreadable, not JSON, another structure) is a
    ``FileExistsError`` naming it: it was read as "nothing built" and then replaced."""
    path = Path(root) / STAMP_FILE
    if not os.path.lexists(path):
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise FileExistsError(f"{path} is not a Mini-Beyond build stamp ({type(err).__name__}); move it away") from None
    if isinstance(data, dict) and isinstance(data.get("domains"), dict):
        return data["domains"]
    if isinstance(data, dict) and "params" in data and isinstance(data.get("dirs"), list):
        # version-1 stamp: one build of several domains
        return {d: {"params": None, "asset_hash": None, "dirs": data["dirs"]} for d in data["params"].get("domains", [])}
    raise FileExistsError(f"{path} is not a Mini-Beyond build stamp (unexpected content); move it away")


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
    or a file inside a recorded folder that no build wrote or whose content changed since
    (:func:`foreign_files`, by the folder's manifest), is refused unless ``force``: it may be the
    user's own data.
    """
    root = Path(root)
    # the names first: an unknown one was refused only after the assets had loaded (~20 s)
    domains = domain_names(domains) if domains is not None else [d.name for d in DOMAINS]
    assets = assets or load_assets()
    counts = {"train": train, "val": val, "test": test}
    check_build_args(counts, size)
    params = {"version": BUILD_VERSION, "counts": counts, "seed": seed, "size": size}
    asset_hash = assets.digest()
    prefixes = {d.name: d.prefix for d in DOMAINS}
    root.mkdir(parents=True, exist_ok=True)
    stamp = read_stamp(root)
    # First every check, for every requested domain: a refusal must come before any domain changes.
    plan: List[Tuple[str, List[Path], Dict[str, object], List[Path]]] = []
    all_targets: List[Path] = []
    for dom_name in domains:
        targets = [root / subset_dirname(dom_name, s, assets) for s in SUBSETS]
        all_targets.extend(targets)
        entry = {"params": params, "asset_hash": asset_hash, "dirs": [t.name for t in targets]}
        if not force and stamp.get(dom_name) == entry and all(t.is_dir() for t in targets):
            continue
        recorded = set(stamp.get(dom_name, {}).get("dirs", []))
        existing = _domain_dirs(root, prefixes[dom_name])
        base = [p.name.removesuffix(".tmp").removesuffix(".old") for p in existing]
        unrecorded = [p for p, name in zip(existing, base) if name not in recorded]
        if unrecorded and not force:
            raise FileExistsError(
                f"{', '.join(map(str, unrecorded))}: not written by an earlier Mini-Beyond build (no entry in "
                f"{root / STAMP_FILE}); move it away or pass --force to replace it"
            )
        # recorded folders (and the build's own .tmp leftovers) are replaced whole: files someone put
        # into them would go with them
        classnames = [r["classname"] for s in SUBSETS for r in assets.split["domains"][dom_name][s.lower()]]
        added = [f for p in existing for f in foreign_files(p, classnames, _recorded_counts(stamp.get(dom_name)))]
        if added and not force:
            more = f" and {len(added) - 1} more" if len(added) > 1 else ""
            raise FileExistsError(
                f"{added[0]}{more}: not written by a Mini-Beyond build (or changed since), inside {dom_name}'s "
                "folders that this build replaces; move them away or pass --force to delete them with the folders"
            )
        plan.append((dom_name, targets, entry, existing))
    built = []
    for dom_name, targets, entry, existing in plan:
        # The stamp says first that the domain is being rebuilt (no parameters: it matches no build) and
        # which folders it may leave behind, so an interrupted build is recognised, and redone, next time.
        dirs = set(stamp.get(dom_name, {}).get("dirs", [])) | {t.name for t in targets}
        stamp[dom_name] = {"params": None, "asset_hash": None, "dirs": sorted(dirs)}
        write_json_file(root / STAMP_FILE, {"version": BUILD_VERSION, "domains": stamp})
        for leftover in (p for p in existing if p.name.endswith(".tmp")):
            _remove(leftover)
        for target in targets:
            _write_subset(root, dom_name, target, assets, counts, seed, size)
        for old in existing:
            if os.path.lexists(old) and old not in targets:
                _remove(old)  # the domain's folders of an earlier split (other class counts)
        stamp[dom_name] = entry
        write_json_file(root / STAMP_FILE, {"version": BUILD_VERSION, "domains": stamp})
        built.append(dom_name)
    if built:
        log.info("built Mini-Beyond (%s) in %s", ", ".join(built), root)
    else:
        log.info("Mini-Beyond already built in %s", root)
    return all_targets


def _remove(path: Path) -> None:
    """Remove a folder the checks above cleared (a link, which only ``--force`` lets through, is
    unlinked: its target is not ours)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)


def _write_subset(root: Path, dom_name: str, target: Path, assets: Assets, counts: Dict[str, int],
                  seed: int, size: int) -> None:
    """Write one subset folder into ``<target>.tmp``, then swap it in for ``target``. The manifest of
    what was written (:data:`MANIFEST_FILE`) goes last, atomically, so that it never lists a file
    missing from the folder, and it is swapped in with the folder: a folder and its record never
    disagree, which a record kept in the root's stamp (written apart from the swap) could."""
    dom = assets.split["domains"][dom_name]
    superclasses = sorted({r["subgroup"] for s in SUBSETS for r in dom[s.lower()]})
    subset = target.name.rsplit("_", 1)[1]
    recs = dom[subset.lower()]
    tmp = root / (target.name + ".tmp")
    for r in recs:
        (tmp / "images" / r["classname"]).mkdir(parents=True, exist_ok=True)
    payload: Dict[str, Dict[str, object]] = {}
    written: Dict[str, Dict[str, object]] = {}
    for split in SPLITS:
        views, labels, colours = render_views(assets, dom_name, subset, split, counts[split], seed, size)
        items: Dict[str, object] = {}
        seen: Dict[int, int] = {}
        for k, (img, lab, colour) in enumerate(zip(views, labels, colours)):
            rec = recs[lab]
            j = seen[lab] = seen.get(lab, -1) + 1
            image_name = f"{split}_{j:03d}.jpg"
            rel = f"images/{rec['classname']}/{image_name}"
            data = jpeg_bytes(img)
            (tmp / rel).write_bytes(data)
            written[rel] = _file_record(data)
            items[str(k)] = {
                "classname": rec["classname"],
                "image_name": image_name,
                "label": lab,
                "s_label": superclasses.index(rec["subgroup"]),
                "superclass": rec["subgroup"],
                "INFO": {"Refined_caption3": benchmark_caption(rec["classname"], colour)},
            }
        payload[split] = items
    split_file = f"split_Xin_{target.name}.json"
    write_json_file(tmp / split_file, payload)
    written[split_file] = _file_record((tmp / split_file).read_bytes())
    write_json_file(tmp / MANIFEST_FILE, {"version": MANIFEST_VERSION, "files": dict(sorted(written.items()))})
    if target.exists():
        old = root / (target.name + ".old.tmp")
        target.replace(old)
        tmp.replace(target)
        _remove(old)
    else:
        tmp.replace(target)
