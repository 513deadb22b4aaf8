"""LAION-Beyond loaders: one base class, nine two-line domains (spec §4).

Layout under ``DATASET.ROOT``::

    <Prefix><nOOP>_OOP/images/<classname>/<image_name>
    <Prefix><nOOP>_OOP/split_Xin_<dir name>.json
    <Prefix><nIP>_IP/...                     (same)

Differences from the reference loaders, each fixing a bug of spec §11:

* B21: discovery is sorted and strict (prefix + digits); zero or several candidates is an error
  that names the candidates. Only the subset(s) a run needs must exist.
* B22: JSON problems are reported with the file name; the few-shot cache is JSON keyed by a hash
  of the split file and the superclass flag (a stale cache is never read) and falls back to
  ``OUTPUT_DIR`` when the dataset tree is read-only.
* B23 / P8: images are checked once, by listing each class folder, after few-shot selection.
* B24: ``All`` builds its label space from the full split files and refuses a name present in both
  OOP and IP.
* B25: the label-ordered classnames of the split file are handed to ``DatasetBase``.
* Nothing outside its place is read (issue 12): record paths that leave ``<subset>/images`` (``..``,
  absolute, NUL) are split-file errors, and :func:`scan_images` refuses symlinks (of images or class
  folders) that resolve outside ``realpath(<subset>/images)``, as well as folders, FIFOs and
  dangling links named like images. A split file linked from outside its folder is refused too.
* Duplicate records and images shared by two splits are errors (they would count twice as shots or
  leak test images into training), also when the shared image hides behind a symlink or a hard link
  (:func:`check_linked_duplicates` compares file identities, one ``os.stat`` per image); labels are
  checked in O(records) whatever their values; class names must stay distinct and non-empty under
  ``clip.normalize_name``.
* A repeated key in a split file's JSON (which ``json`` would resolve by dropping a record) is an
  error naming it; a name under two labels is reported as such, not as a name colliding with itself.
* A cached few-shot sample is used only if it is exactly a sample of the split file: min(K, n)
  distinct records per class, each equal to a record of the same part (a test image, an unlisted
  path, another label, an edited caption make it stale: drawn again, with a warning).
* A K-shot run refuses a class without train image, and ``TEST.FINAL_MODEL best_val`` refuses a run
  without val image (the engine would select on the test split): one error each, before training.
* The reference's pickled few-shot caches (``shot_K-seed_S.pkl``) are logged and ignored, never
  unpickled.
* Sampling uses ``random.Random(SEED)`` per subset, never the global RNG. For ``OOP`` or ``IP``
  runs this draws the same sample as the reference (global RNG seeded with ``SEED`` just before);
  for ``All`` the IP sample no longer depends on how much randomness the OOP sample consumed, so
  ``All`` reuses exactly the OOP and IP samples of the single-subset runs.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from clip import normalize_name
from dassl.data.datasets.base_dataset import DatasetBase, Datum
from dassl.data.datasets.build import DATASET_REGISTRY
from dassl.utils import shown_path, write_json
from dassl.utils.identity import content_identity, json_digest

__all__ = [
    "LaionBeyond",
    "DatasetError",
    "DatasetNotFoundError",
    "SubsetSplit",
    "SUBSETS",
    "SUB_CLASSES_CHOICES",
    "DEFAULT_SEED",
    "find_subset_dir",
    "find_split_file",
    "split_digest",
    "parse_split",
    "load_subset",
    "find_missing_images",
    "scan_images",
    "check_images",
    "file_identity",
    "linked_duplicate_problems",
    "check_linked_duplicates",
    "check_every_class_trains",
    "check_selection_split",
    "StaleFewshotCache",
    "legacy_fewshot_caches",
    "check_disjoint_classnames",
    "merge_subsets",
    "laion_beyond_domains",
    "subset_dirs_under",
]

logger = logging.getLogger(__name__)

SUBSETS = ("OOP", "IP")
SUB_CLASSES_CHOICES = ("OOP", "IP", "All")
SPLITS = ("train", "val", "test")
# SEED < 0 means "unseeded" in Dassl; an unseeded few-shot sample cannot be cached or reproduced,
# so such runs sample with this seed instead (and say so).
DEFAULT_SEED = 0
VAL_MAX_SHOTS = 4
FEWSHOT_DIRNAME = "split_fewshot"
FEWSHOT_CACHE_FORMAT = "laion-beyond-fewshot"
FEWSHOT_CACHE_VERSION = 1
MAX_LISTED = 10
IMAGES_DIRNAME = "images"
#: The reference code's few-shot cache name (a pickle); detected, never unpickled.
LEGACY_FEWSHOT_PATTERN = "shot_*-seed_*.pkl"


class DatasetError(ValueError):
    """A LAION-Beyond folder or split file is missing, ambiguous or malformed. ``str()`` is one line;
    ``report`` the complete listing where there is more to say (what ``datasets.check`` prints)."""

    def __init__(self, message: str, report: str = "") -> None:
        super().__init__(message)
        self.report = report or message


class DatasetNotFoundError(DatasetError):
    """No folder or split file matches (as opposed to several, or a malformed one)."""


@dataclass
class SubsetSplit:
    """One subset (OOP or IP) as read from its split file, before few-shot selection."""

    subset: str
    directory: str
    split_file: str
    digest: str
    classnames: List[str]
    train: List[Datum]
    val: List[Datum]
    test: List[Datum]
    warnings: List[str] = field(default_factory=list)

    @property
    def largest_class(self) -> int:
        """The most training images any class has: a shot count above it would train every class on all
        its images, the all-images run filed under K (refused by the few-shot sampling and scripts.grid)."""
        return max(Counter(d.label for d in self.train).values(), default=0)


def _inline(items: Sequence[str], limit: int = 3) -> str:
    """A few items on one line (an error line), with how many more."""
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _listing(items: Sequence[str], limit: int = MAX_LISTED) -> str:
    shown = [f"  {item}" for item in items[:limit]]
    if len(items) > limit:
        shown.append(f"  ... and {len(items) - limit} more")
    return "\n".join(shown)


# ---------------------------------------------------------------------------------------------
# Discovery


def subset_dir_regex(prefix: str, subset: str) -> re.Pattern[str]:
    # The digits requirement keeps "Food" from claiming "FoodExtra12_OOP" and similar neighbours.
    return re.compile(re.escape(prefix) + r"\d+_" + re.escape(subset))


def find_subset_dir(root: str, prefix: str, subset: str) -> str:
    """The unique ``<root>/<prefix><digits>_<subset>`` directory, or a DatasetError saying why not."""
    pattern = os.path.join(glob.escape(root), glob.escape(prefix) + "*_" + subset)
    shown_pattern = os.path.join(root, f"{prefix}<digits>_{subset}")
    if not os.path.isdir(root):
        raise DatasetNotFoundError(
            f"DATASET.ROOT {root!r} is not a directory (looking for {shown_pattern}). "
            "Fix: pass --root / DATASET.ROOT pointing at the folder that holds the LAION-Beyond "
            "subsets (e.g. Animals92_OOP/), or create a toy one with "
            "`python -m datasets.make_toy --root DIR`."
        )
    regex = subset_dir_regex(prefix, subset)
    hits = sorted(glob.glob(pattern))
    matches = [h for h in hits if os.path.isdir(h) and regex.fullmatch(os.path.basename(h))]
    ignored = [os.path.basename(h) for h in hits if h not in matches]
    if not matches:
        note = f" Ignored (prefix not followed by digits, or not a folder): {ignored}." if ignored else ""
        raise DatasetNotFoundError(
            f"No {subset} folder for prefix {prefix!r} under DATASET.ROOT {root!r}: nothing matches "
            f"{shown_pattern}.{note} Fix: download/extract the domain there (expected e.g. "
            f"{prefix}<n>_{subset}/images and split_Xin_*.json), or set --root / DATASET.ROOT to the "
            "folder that contains it."
        )
    if len(matches) > 1:
        raise DatasetError(
            f"Several {subset} folders match {shown_pattern} under {root!r} ({_inline(matches)}); refusing to "
            "guess. Fix: keep one copy per domain under the root (e.g. separate roots for the 400M and 2B "
            "versions) and point DATASET.ROOT at it."
        )
    return matches[0]


def folder_class_count(subset_dir: str) -> Optional[int]:
    """The class count a subset folder's name states (``Animals92_OOP`` -> 92), None without one.

    The split file is the authority on the classes; the name is only compared with it, since a
    folder missing classes (a partial download, a hand-edited split) otherwise trains a smaller
    task without a word. The 2B/5B variants name their own counts, so they agree as well.
    """
    match = re.search(r"(\d+)_(?:OOP|IP)$", os.path.basename(os.path.normpath(subset_dir)))
    return int(match.group(1)) if match else None


def find_split_file(subset_dir: str) -> str:
    """The unique ``split_Xin*.json`` inside a subset folder."""
    pattern = os.path.join(glob.escape(subset_dir), "split_Xin*.json")
    hits = [h for h in sorted(glob.glob(pattern)) if os.path.isfile(h)]
    if not hits:
        raise DatasetNotFoundError(
            f"No split file in {subset_dir!r}: nothing matches "
            f"{os.path.join(subset_dir, 'split_Xin*.json')}. Fix: restore the split JSON shipped "
            f"with the dataset (split_Xin_{os.path.basename(subset_dir)}.json)."
        )
    if len(hits) > 1:
        raise DatasetError(
            f"Several split files in {subset_dir!r} ({_inline(hits)}); refusing to guess. Fix: keep exactly one "
            "split_Xin*.json per subset folder."
        )
    return hits[0]


# ---------------------------------------------------------------------------------------------
# Split file parsing and validation


def split_digest(raw: bytes, superclass: bool) -> str:
    """Cache key of a split file: what the few-shot sample depends on besides K and the seed."""
    h = hashlib.sha1(raw)
    h.update(b"\nsuperclass=" + (b"1" if superclass else b"0"))
    return h.hexdigest()[:12]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _iter_split(split: Any) -> Iterable[Tuple[str, Any]]:
    if isinstance(split, dict):
        return ((str(k), v) for k, v in split.items())
    return ((str(i), v) for i, v in enumerate(split))


class _JsonObject(dict):
    """A parsed JSON object that remembers which keys its text repeated (``json`` keeps the last value
    of a repeated key and drops the others without a word: a split file's record would vanish)."""

    repeated: Tuple[str, ...] = ()

    @classmethod
    def from_pairs(cls, pairs: List[Tuple[str, Any]]) -> _JsonObject:
        obj = cls(pairs)
        if len(obj) != len(pairs):
            counts = Counter(key for key, _ in pairs)
            obj.repeated = tuple(key for key, n in counts.items() if n > 1)
        return obj


def _repeated_keys(data: Any) -> List[str]:
    """``where: 'key' (N times)`` for every repeated key of a document parsed with
    :meth:`_JsonObject.from_pairs`, named like the records (``train['0']``). Iterative: the document
    may be as deep as the parser allowed."""
    out: List[str] = []
    stack: List[Tuple[str, Any]] = [("", data)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, dict):
            for key in getattr(node, "repeated", ()):
                out.append(f"{key!r} in {where or 'the top-level object'}")
            children = [(f"{where}[{k!r}]" if where else str(k), v) for k, v in node.items()]
        elif isinstance(node, list):
            children = [(f"{where}[{i}]", v) for i, v in enumerate(node)]
        else:
            continue
        stack.extend(reversed(children))
    return out


def _unsafe_path(classname: str, image_name: str) -> str:
    """Why ``images/<classname>/<image_name>`` could leave the images folder ("" when it cannot).

    A lexical check, no I/O; symlinks are resolved later by :func:`scan_images`.
    """
    for key, value in (("classname", classname), ("image_name", image_name)):
        if "\x00" in value:
            return f"{key} {value!r} contains a NUL byte"
        if os.path.isabs(value) or value.startswith(("/", "\\")):
            return f"{key} {value!r} is an absolute path"
        if ".." in re.split(r"[/\\]", value):
            return f"{key} {value!r} contains '..'"
    if os.path.normpath(image_name) in (".", ""):
        return f"image_name {image_name!r} names no file"
    return ""


def _examples(items: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _duplicate_problems(duplicates: Sequence[Tuple[str, str, str]]) -> List[str]:
    """Repeated images: within a split they count twice as shots; across splits they leak test
    images into training. Both are errors (README, "What is validated")."""
    within: List[str] = []
    across: Dict[Tuple[str, str], List[str]] = {}
    for first, later, rel in duplicates:
        a, b = first.split("[", 1)[0], later.split("[", 1)[0]
        text = f"{later} = {first} ({shown_path(rel)})"
        if a == b:
            within.append(text)
        else:
            across.setdefault((a, b), []).append(text)
    problems = []
    if within:
        problems.append(f"{len(within)} duplicate record(s) (same image twice in a split): {_examples(within)}")
    for (a, b), items in across.items():
        problems.append(f"{len(items)} image(s) in both {a} and {b}: {_examples(items)}")
    return problems


def _name_problems(label_names: Dict[int, Dict[str, str]], name_key: str) -> List[str]:
    """Class names must survive ``clip.normalize_name`` (B2) as distinct, non-empty strings:
    prompts and FSNL's name slots use the normalised form."""
    # Each distinct name once, at its first record: a name under two labels is reported by the label
    # check ("has 2 labels"), not as a name colliding with itself.
    first: Dict[str, str] = {}
    for names in label_names.values():
        for name, where in names.items():
            first.setdefault(name, where)
    by_norm: Dict[str, List[str]] = {}
    problems = []
    for name, where in first.items():
        norm = normalize_name(name)
        if not norm:
            problems.append(f"{name_key} {name!r} (first in {where}) normalises to an empty name")
        else:
            by_norm.setdefault(norm, []).append(f"{name!r} (first in {where})")
    for norm, names in by_norm.items():
        if len(names) > 1:
            problems.append(f"{name_key}s {', '.join(names)} collide after normalisation (all read {norm!r}); "
                            "rename one of them")
    return problems


def _label_problems(labels: Sequence[int], label_key: str) -> List[str]:
    """Labels must be 0..C-1; checked on the sorted distinct labels, O(records) whatever their values."""
    problems = []
    negative = [la for la in labels if la < 0]
    if negative:
        problems.append(f"negative {label_key}(s): {negative[:MAX_LISTED]}")
    if labels[0] != 0 or labels[-1] != len(labels) - 1:
        gaps: List[str] = []
        expected = 0
        for la in labels:
            if la < 0:
                continue
            if la > expected:
                gaps.append(str(expected) if la == expected + 1 else f"{expected}..{la - 1}")
            expected = la + 1
            if len(gaps) >= MAX_LISTED:
                break
        problems.append(
            f"{label_key}s must be contiguous 0..C-1 ({len(labels)} distinct, max {labels[-1]}); "
            f"missing: {', '.join(gaps)}{' ...' if len(gaps) >= MAX_LISTED else ''}"
        )
    return problems


def parse_split(
    path: str, raw: bytes, subset_dir: str, superclass: bool = False, subset: str = ""
) -> SubsetSplit:
    """Validate a split file and turn it into Datum lists; every problem is collected and reported at once.

    In superclass mode (``USE_SUPERCLASS_F_ZS_TEST``) labels are ``s_label``, names are
    ``superclass`` and captions are empty, as in the reference.
    """
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_JsonObject.from_pairs)
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text ({err})") from err
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        ) from err
    except RecursionError:
        raise DatasetError(f"{path}: JSON nested too deeply to be a split file") from None

    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object with keys {list(SPLITS)}, got {type(data).__name__}")
    repeated = _repeated_keys(data)
    if repeated:
        raise DatasetError(
            f"{path}: {len(repeated)} repeated JSON key(s): {_examples(repeated)}; JSON keeps only the last "
            "record under a key and drops the others silently: give every record its own key"
        )
    missing_keys = [k for k in SPLITS if k not in data]
    if missing_keys:
        raise DatasetError(
            f"{path}: missing split key(s) {missing_keys}; found keys {sorted(map(str, data))}"
        )
    bad_types = [k for k in SPLITS if not isinstance(data[k], (dict, list))]
    if bad_types:
        raise DatasetError(f"{path}: split(s) {bad_types} must be JSON objects (index -> item)")

    label_key, name_key = ("s_label", "superclass") if superclass else ("label", "classname")
    required = ("classname", "image_name") + ((label_key, name_key) if superclass else (label_key,))

    problems: List[str] = []
    # label -> {name: first record}, name -> {label: first record}: conflicts are reported once each.
    label_names: Dict[int, Dict[str, str]] = {}
    name_labels: Dict[str, Dict[int, str]] = {}
    out: Dict[str, List[Datum]] = {s: [] for s in SPLITS}
    images_dir = os.path.join(subset_dir, IMAGES_DIRNAME)
    # image path (relative to images/) -> first record; (first, later, path) of every repeat.
    seen_paths: Dict[str, str] = {}
    duplicates: List[Tuple[str, str, str]] = []

    for split in SPLITS:
        for key, item in _iter_split(data[split]):
            where = f"{split}[{key!r}]"
            if not isinstance(item, dict):
                problems.append(f"{where} is not an object")
                continue
            absent = [f for f in required if f not in item]
            if absent:
                problems.append(f"{where} lacks field(s) {absent}")
                continue
            label, name = item[label_key], item[name_key]
            classname, image_name = item["classname"], item["image_name"]
            if not _is_int(label):
                problems.append(f"{where}: {label_key} must be an integer, got {label!r}")
                continue
            bad_str = [f for f in {name_key: name, "classname": classname, "image_name": image_name}
                       if not isinstance(item[f], str) or not item[f]]
            if bad_str:
                problems.append(f"{where}: field(s) {bad_str} must be non-empty strings")
                continue

            caption = ""
            if not superclass:
                info = item.get("INFO")
                if info is not None and not isinstance(info, dict):
                    problems.append(f"{where}: INFO must be an object, got {type(info).__name__}")
                    continue
                caption = (info or {}).get("Refined_caption3") or ""
                if not isinstance(caption, str):
                    problems.append(f"{where}: INFO.Refined_caption3 must be a string")
                    continue

            unsafe = _unsafe_path(classname, image_name)
            if unsafe:
                problems.append(f"{where}: {unsafe}; image paths must stay inside {images_dir}")
                continue
            rel = os.path.normpath(os.path.join(classname, image_name))
            if rel in seen_paths:
                duplicates.append((seen_paths[rel], where, rel))
            else:
                seen_paths[rel] = where

            label_names.setdefault(label, {}).setdefault(name, where)
            name_labels.setdefault(name, {}).setdefault(label, where)

            impath = os.path.join(images_dir, rel)
            out[split].append(Datum(impath=impath, label=label, classname=name, caption=caption))

    for label, names in label_names.items():
        if len(names) > 1:
            shown = ", ".join(f"{n!r} (first in {w})" for n, w in names.items())
            problems.append(f"{label_key} {label} is mapped to {len(names)} names: {shown}")
    for name, labs in name_labels.items():
        if len(labs) > 1:
            shown = ", ".join(f"{la} (first in {w})" for la, w in labs.items())
            problems.append(f"{name_key} {name!r} has {len(labs)} {label_key}s: {shown}")

    problems.extend(_duplicate_problems(duplicates))
    problems.extend(_name_problems(label_names, name_key))
    labels = sorted(label_names)
    if labels:
        problems.extend(_label_problems(labels, label_key))
    elif not problems:
        problems.append("no records in train/val/test")

    if problems:
        # one line for the run (the first problem; 22 lines before), the listing in the log and the check
        listing = f"{path}: {len(problems)} problem(s) in the split file:\n{_listing(problems, 20)}"
        logger.info("%s", listing)
        more = f" (and {len(problems) - 1} more: `python -m datasets.check --root <root>` lists them all)" \
            if len(problems) > 1 else ""
        raise DatasetError(f"{path}: {len(problems)} problem(s) in the split file: {problems[0]}{more}", listing)

    classnames = [next(iter(label_names[la])) for la in range(len(labels))]
    warnings = []
    for split in ("train", "test"):
        present = {d.label for d in out[split]}
        absent = [classnames[la] for la in range(len(classnames)) if la not in present]
        if absent:
            warnings.append(f"{path}: {len(absent)} class(es) have no {split} image: {absent[:MAX_LISTED]}")
    if not superclass:
        named = folder_class_count(subset_dir)
        if named is not None and named != len(classnames):
            warnings.append(
                f"{path}: {len(classnames)} classes, but the folder name {os.path.basename(subset_dir)!r} "
                f"says {named}; the split file decides (a {len(classnames)}-way task): check that the "
                "folder is complete, or rename it to match"
            )

    return SubsetSplit(
        subset=subset,
        directory=subset_dir,
        split_file=path,
        digest=split_digest(raw, superclass),
        classnames=classnames,
        train=out["train"],
        val=out["val"],
        test=out["test"],
        warnings=warnings,
    )


def check_every_class_trains(part: SubsetSplit, shots: int) -> None:
    """A K-shot run needs K training images of every class (or all it has): a class without any
    would be learnt from nothing while the run is filed as K-shot, so it is an error naming the
    split file and the classes, not the warning a full-split run (zero-shot, feature extraction) gets."""
    present = {d.label for d in part.train}
    absent = [f"{name!r} (label {la})" for la, name in enumerate(part.classnames) if la not in present]
    if absent:
        raise DatasetError(
            f"{part.split_file}: {len(absent)} class(es) have no train image: {_examples(absent)}; a "
            f"{shots}-shot run needs training images of every class: add train records for them to the "
            "split file (or run DATASET.NUM_SHOTS -1, which is not filed as a few-shot result)"
        )


def check_selection_split(cfg: Any, split_files: Sequence[str]) -> None:
    """``TEST.FINAL_MODEL best_val`` picks the model on the val split; with no val image the engine
    would fall back to the *test* split with one warning (model selection on test, recorded as
    best_val). Refused here, when the data is read and before training. An evaluation-only sibling
    (``NUM_SHOTS 0``, the OOP->IP cross-evaluation) and ``TEST.NO_TEST`` select nothing."""
    test = cfg.get("TEST")
    if test is None or str(test.get("FINAL_MODEL", "")) != "best_val" or bool(test.get("NO_TEST", False)):
        return
    if int(cfg.DATASET.get("NUM_SHOTS", -1)) == 0:
        return
    raise DatasetError(
        f"TEST.FINAL_MODEL best_val needs validation images, but {' and '.join(split_files)} list no val "
        "image; use TEST.FINAL_MODEL last_step, or add val records to the split file"
    )


def images_dir_of(part: SubsetSplit) -> str:
    """``<subset>/images``: where every image of the subset must resolve to."""
    return os.path.join(part.directory, IMAGES_DIRNAME)


def load_subset(subset_dir: str, subset: str, superclass: bool = False) -> SubsetSplit:
    """Find, read and validate the split file of one subset folder."""
    path = find_split_file(subset_dir)
    real, real_dir = os.path.realpath(path), os.path.realpath(subset_dir)
    if not real.startswith(real_dir.rstrip(os.sep) + os.sep):
        raise DatasetError(
            f"{path}: the split file is a symlink to {real}, outside its subset folder; copy the file "
            "into the folder instead of linking it"
        )
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise DatasetError(f"{path}: cannot read split file ({err})") from err
    return parse_split(path, raw, subset_dir, superclass=superclass, subset=subset)


# ---------------------------------------------------------------------------------------------
# Images


MISSING = "missing"


def _inside(path: str, root: str) -> bool:
    return path.startswith(root.rstrip(os.sep) + os.sep)


def scan_images(data: Iterable[Datum], images_dir: str) -> Dict[str, str]:
    """``{path: reason}`` for every record whose image is not a regular file inside ``images_dir``.

    Reasons: :data:`MISSING`, a path outside the folder, a symlink (of the file or of its class
    folder) that resolves outside ``realpath(images_dir)``, a dangling symlink, something that is
    not a regular file (a folder, a FIFO), or an empty file. One ``scandir`` per class folder gives
    existence and file type (B23: the reference asserted each file's existence one call at a time);
    the size takes one ``stat`` per image (about a second for LAION-Beyond's 157k images, and the
    evaluation cache's key stats them anyway): a zero-byte image (an interrupted download) was found
    only when the evaluation decoded it, after the whole training. Decoding is not checked here
    (``datasets.check`` decodes every image; at run time ``read_image`` names the bad one).
    """
    root = os.path.normpath(os.path.abspath(images_dir))
    root_real = os.path.realpath(root)
    shown = shown_path(images_dir)
    listings: Dict[str, Optional[Dict[str, os.DirEntry]]] = {}
    folder_problem: Dict[str, str] = {}
    out: Dict[str, str] = {}
    for item in data:
        path = item.impath
        if path in out:
            continue
        norm = os.path.normpath(os.path.abspath(path))
        if not _inside(norm, root):
            out[path] = f"outside {shown}"
            continue
        parent, name = os.path.split(norm)
        if parent not in listings:
            real_parent = os.path.realpath(parent)
            listings[parent] = None
            if real_parent != root_real and not _inside(real_parent, root_real):
                folder_problem[parent] = f"its folder resolves outside {shown} (to {shown_path(real_parent)})"
            else:
                try:
                    listings[parent] = {e.name: e for e in os.scandir(parent)}
                except OSError:
                    pass
        if parent in folder_problem:
            out[path] = folder_problem[parent]
            continue
        entry = (listings[parent] or {}).get(name)
        if entry is None:
            # Not in the listing: confirm with a stat (case-insensitive or normalising file systems).
            if not os.path.isfile(norm):
                out[path] = MISSING
                continue
            is_link = os.path.islink(norm)
        else:
            is_link = entry.is_symlink()
            if not is_link and not entry.is_file(follow_symlinks=False):
                out[path] = "not a regular file (a folder or a special file)"
                continue
        if is_link:
            real = os.path.realpath(norm)
            if not _inside(real, root_real):
                out[path] = f"symlink resolves outside {shown} (to {shown_path(real)})"
                continue
            if not os.path.exists(real):
                out[path] = f"dangling symlink (to {shown_path(real)})"
                continue
            if not os.path.isfile(real):
                out[path] = "symlink to something that is not a regular file"
                continue
        size = entry.stat().st_size if entry is not None and not is_link else os.path.getsize(norm)
        if size == 0:
            out[path] = "an empty file (0 bytes: an interrupted download or copy?)"
    return out


def find_missing_images(data: Iterable[Datum], images_dir: Optional[str] = None) -> List[str]:
    """Paths of ``data`` that are not files (see :func:`scan_images` for the other problems)."""
    items = list(data)
    if images_dir is None:
        images_dir = os.path.commonpath([os.path.dirname(d.impath) for d in items]) if items else "."
    return [p for p, why in scan_images(items, images_dir).items() if why == MISSING]


ImageGroup = Tuple[str, Iterable[Datum], str]


def check_images(groups: Sequence[ImageGroup]) -> None:
    """Raise one DatasetError for all unusable images.

    ``groups`` are (split file, its records, the folder every image must resolve into).
    """
    report = []
    total = unusable = 0
    for split_file, data, images_dir in groups:
        found = scan_images(data, images_dir)
        if not found:
            continue
        total += len(found)
        missing = [shown_path(p) for p, why in found.items() if why == MISSING]
        other = [f"{shown_path(p)}: {why}" for p, why in found.items() if why != MISSING]
        unusable += len(other)
        if other:
            report.append((f"{len(other)} image(s) referenced by {split_file} are unusable", other))
        if missing:
            report.append((f"{len(missing)} image(s) referenced by {split_file} are missing", missing))
    if report:
        # One line (the first example and the counts), as every user mistake is reported; before, the
        # first of several lines named no file. The complete listing goes to the log.
        logger.info("Unusable or missing images:\n%s", "\n".join(f"{head}:\n{_listing(items, 50)}" for head, items in report))
        head, items = report[0]
        others = total - 1
        raise DatasetError(
            f"{total} {'missing or unusable' if unusable else 'missing'} image(s): {head}, e.g. {items[0]}"
            + (f" (and {others} more; all listed in the log)" if others else "")
            + ". Fix: complete the download/extraction of the images/ folders (expected "
            "<subset dir>/images/<classname>/<image_name>, regular files or symlinks inside it)"
        )


#: (split file, {split: records}, the subset's images/ folder): what :func:`linked_duplicate_problems` compares.
SplitGroup = Tuple[str, Mapping[str, Sequence[Datum]], str]


def file_identity(path: str) -> Optional[Tuple[Any, ...]]:
    """What makes two paths the same file: ``(st_dev, st_ino)`` of the target (``os.stat`` follows
    symlinks, so a symlink and its target, and two hard links, share it), or the resolved real path
    where the file system reports no inode number (0). None if the file cannot be stat'ed: missing
    and unusable files are :func:`scan_images`' to report."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    if st.st_ino:
        return (st.st_dev, st.st_ino)
    return ("realpath", os.path.realpath(path))


def linked_duplicate_problems(groups: Sequence[SplitGroup]) -> List[str]:
    """Images of two different splits (train / val / test) that are one file under two names.

    The split-file check compares record paths, so a test image that is a symlink or a hard link to
    a train image passed it: the whole test set could be the training set without a word. Here every
    image is stat'ed once (after :func:`scan_images`, so it is a regular file inside its folder) and
    compared by file identity across splits, and across the subsets of ``groups`` (``All`` trains on
    OOP and IP together). Two records of the *same* split that share a file are left alone here
    (they would count twice as shots, not leak). One problem per pair of splits, naming both records.
    """
    first: Dict[Tuple[Any, ...], Tuple[int, str, str]] = {}  # identity -> (group, split, path)
    pairs: Dict[Tuple[int, str, int, str], List[str]] = {}

    def named(gi: int, split: str, path: str) -> str:
        # repr escapes a newline in a name: it cannot start a forged second "error:" line
        return f"{split} {os.path.relpath(path, groups[gi][2])!r}"

    for gi, (_, splits, _) in enumerate(groups):
        for split in SPLITS:
            for item in splits.get(split, ()):
                identity = file_identity(item.impath)
                if identity is None:
                    continue
                seen = first.setdefault(identity, (gi, split, item.impath))
                if seen[1] != split:
                    pairs.setdefault((seen[0], seen[1], gi, split), []).append(
                        f"{named(gi, split, item.impath)} = {named(*seen)}")
    problems = []
    for (ga, sa, gb, sb), items in pairs.items():
        files = groups[ga][0] if ga == gb else f"{groups[ga][0]} and {groups[gb][0]}"
        problems.append(
            f"{files}: {len(items)} image(s) in both {sa} and {sb} as one file under two names (a symlink or "
            f"hard link): {_examples(items)}"
        )
    return problems


def check_linked_duplicates(groups: Sequence[SplitGroup]) -> None:
    """Raise one DatasetError for the images that :func:`linked_duplicate_problems` finds."""
    problems = linked_duplicate_problems(groups)
    if len(problems) == 1:
        raise DatasetError(f"{problems[0]}; an evaluation image would also be trained or selected on: give each "
                           "record its own image file (copy it, or remove one of the records)")
    if problems:
        listing = f"{len(problems)} problem(s) of images shared between splits as links:\n{_listing(problems)}"
        raise DatasetError(f"{len(problems)} problem(s) of images shared between splits as links: {problems[0]} "
                           f"(and {len(problems) - 1} more, listed by `python -m datasets.check`). Fix: give each "
                           "record its own image file (copy it, or remove one of the records)", listing)


def legacy_fewshot_caches(subset_dir: str) -> List[str]:
    """The reference code's pickled few-shot caches in ``<subset>/split_fewshot/``.

    They are never unpickled (a pickle runs arbitrary code, and the reference's ``Datum`` does not
    map onto ours): the loader logs that it ignores them and samples again into a JSON cache.
    """
    pattern = os.path.join(glob.escape(os.path.join(subset_dir, FEWSHOT_DIRNAME)), LEGACY_FEWSHOT_PATTERN)
    return sorted(glob.glob(pattern))


# ---------------------------------------------------------------------------------------------
# OOP + IP


def check_disjoint_classnames(parts: Sequence[SubsetSplit]) -> None:
    """A name in both OOP and IP would silently merge two concepts into one class (B24), or let the
    OOP->IP cross-evaluation score an IP class with its OOP-trained tensor (issue 11)."""
    if len(parts) < 2:
        return
    shared = sorted(set(parts[0].classnames).intersection(*(p.classnames for p in parts[1:])))
    if shared:
        files = ", ".join(p.split_file for p in parts)
        raise DatasetError(
            f"{len(shared)} class name(s) appear in both OOP and IP ({files}): {shared[:MAX_LISTED]}. "
            "SUB_CLASSES=All and the OOP/IP cross-evaluation need disjoint names; rename one of them in "
            "its split file (or set TEST.CROSS_EVAL '()')."
        )


def merge_subsets(
    parts: Sequence[Tuple[SubsetSplit, List[Datum], List[Datum]]], allow_shared: bool = False
) -> Tuple[List[str], List[Datum], List[Datum], List[Datum]]:
    """Relabel (subset, train, val) parts into one label space: the sorted union of all names.

    The label space comes from the full split files, not the few-shot train sets, so a class
    without train image still has a label (B24). Lists keep the part order (OOP then IP).
    ``allow_shared`` is used in superclass mode, where a superclass present in both subsets is
    genuinely the same category.
    """
    if not allow_shared:
        check_disjoint_classnames([p[0] for p in parts])
    classnames = sorted({name for p in parts for name in p[0].classnames})
    index = {name: i for i, name in enumerate(classnames)}

    def relabel(items: List[Datum]) -> List[Datum]:
        return [Datum(d.impath, index[d.classname], d.domain, d.classname, d.caption) for d in items]

    train = [d for part, tr, _ in parts for d in relabel(tr)]
    val = [d for part, _, va in parts for d in relabel(va)]
    test = [d for part, _, _ in parts for d in relabel(part.test)]
    return classnames, train, val, test


# ---------------------------------------------------------------------------------------------
# Few-shot cache


def _to_record(item: Datum, subset_dir: str) -> Dict[str, Any]:
    rel = os.path.relpath(item.impath, subset_dir).replace(os.sep, "/")
    return {"impath": rel, "label": item.label, "classname": item.classname, "caption": item.caption}


class StaleFewshotCache(ValueError):
    """A few-shot cache that parses but is not a sample of this split file (it is drawn again)."""


def _cached_selection(records: Any, pool: Sequence[Datum], shots: int, subset_dir: str, split: str) -> List[Datum]:
    """The records of the split file's ``split`` part that a cached sample names, in the cache's order.

    A cache is trusted only as a choice among the split file's own records (nothing is reused unless
    it is what this split, K and seed give): every entry must be exactly what :func:`_to_record`
    writes for an image of the *same* part (a test image in the train sample, a path the split does
    not list, another label or class name, an edited caption are all refused), no image may appear
    twice, and every class must have exactly ``min(shots, its images)`` entries, what
    :meth:`DatasetBase.generate_fewshot_dataset` draws. Anything else raises
    :class:`StaleFewshotCache` saying which entry. The Datums returned are the split file's, so
    nothing but the choice comes from the cache.
    """
    if not isinstance(records, list):
        raise StaleFewshotCache(f"its {split} records are not a list")
    expected: Dict[str, Tuple[Dict[str, Any], Datum]] = {}
    for item in pool:
        rec = _to_record(item, subset_dir)
        expected[rec["impath"]] = (rec, item)
    out: List[Datum] = []
    seen = set()
    for i, rec in enumerate(records):
        impath = rec.get("impath") if isinstance(rec, dict) else None
        if not isinstance(impath, str):
            raise StaleFewshotCache(f"{split}[{i}] names no image")
        if impath in seen:
            raise StaleFewshotCache(f"{split}[{i}] repeats {impath!r}")
        hit = expected.get(impath)
        if hit is None:
            raise StaleFewshotCache(f"{split}[{i}] {impath!r} is not a {split} image of the split file")
        if rec != hit[0]:
            fields = sorted(k for k in set(rec) | set(hit[0]) if rec.get(k) != hit[0].get(k))
            raise StaleFewshotCache(f"{split}[{i}] {impath!r}: its {', '.join(fields)} "
                                    f"{'differs' if len(fields) == 1 else 'differ'} from the split file's")
        seen.add(impath)
        out.append(hit[1])
    available = Counter(d.label for d in pool)
    got = Counter(d.label for d in out)
    for label, n in sorted(available.items()):
        if got[label] != min(shots, n):
            raise StaleFewshotCache(
                f"{split}: class {label} has {got[label]} record(s), a {shots}-shot sample of its {n} image(s) "
                f"has {min(shots, n)}"
            )
    return out


def _read_fewshot_cache(
    path: str, part: SubsetSplit, num_shots: int, seed: int, superclass: bool
) -> Optional[Tuple[List[Datum], List[Datum]]]:
    """The cached (train, val) sample, or None (logged why) when the file is unreadable, keyed for
    another run, or not a sample of ``part`` (:func:`_cached_selection`): the caller draws it again."""
    try:
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
        expected = {
            "format": FEWSHOT_CACHE_FORMAT,
            "version": FEWSHOT_CACHE_VERSION,
            "split_digest": part.digest,
            "superclass": superclass,
            "num_shots": num_shots,
            "seed": seed,
        }
        wrong = [k for k, v in expected.items() if payload.get(k) != v]
        if wrong:
            logger.warning("Ignoring few-shot cache %s: %s do not match this run", path, wrong)
            return None
        train = _cached_selection(payload["train"], part.train, num_shots, part.directory, "train")
        val = _cached_selection(payload["val"], part.val, min(num_shots, VAL_MAX_SHOTS), part.directory, "val")
    except StaleFewshotCache as err:
        logger.warning("Ignoring few-shot cache %s: not a %d-shot sample of %s (%s); sampling again",
                       path, num_shots, part.split_file, err)
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        logger.warning("Ignoring unreadable few-shot cache %s (%s); resampling", path, err)
        return None
    return train, val


class LaionBeyond(DatasetBase):
    """Base class of the LAION-Beyond domains; subclasses only set ``prefix`` and ``hint``.

    Reads ``DATASET.ROOT``, ``SUB_CLASSES`` (OOP | IP | All), ``USE_SUPERCLASS_F_ZS_TEST``,
    ``NUM_SHOTS``, ``FEWSHOT_CACHE_DIR``, ``SEED`` and ``OUTPUT_DIR``. Besides the DatasetBase
    properties, instances expose ``hint``, ``sub_classes``, ``superclass_mode``, ``num_shots``,
    ``seed`` (the one used for sampling), ``dataset_dirs`` / ``split_files`` /
    ``subset_classnames`` / ``fewshot_cache_files`` (dicts keyed by subset).
    """

    prefix: str = ""
    hint: str = ""
    supports_subsets = True

    def __init__(self, cfg: Any) -> None:
        if not self.prefix:
            raise TypeError("LaionBeyond is a base class; build a registered domain such as Animals92_42")
        dcfg = cfg.DATASET
        sub_classes = str(dcfg.get("SUB_CLASSES", "OOP"))
        if sub_classes not in SUB_CLASSES_CHOICES:
            raise DatasetError(
                f"DATASET.SUB_CLASSES must be one of {list(SUB_CLASSES_CHOICES)}, got {sub_classes!r}"
            )
        subsets = SUBSETS if sub_classes == "All" else (sub_classes,)

        if not str(dcfg.ROOT).strip():
            raise DatasetNotFoundError(
                f"DATASET.ROOT is empty; pass --root (or DATASET.ROOT) pointing at the folder that holds "
                f"{self.prefix}<n>_OOP/ and {self.prefix}<n>_IP/"
            )
        self.root = os.path.abspath(os.path.expanduser(str(dcfg.ROOT)))
        self.sub_classes = sub_classes
        self.superclass_mode = bool(dcfg.get("USE_SUPERCLASS_F_ZS_TEST", False))
        self.num_shots = int(dcfg.get("NUM_SHOTS", -1))
        self.seed = self._resolve_seed(cfg, warn=self.num_shots >= 1)

        self.dataset_dirs = {s: find_subset_dir(self.root, self.prefix, s) for s in subsets}
        parts = {s: load_subset(d, s, self.superclass_mode) for s, d in self.dataset_dirs.items()}
        self.split_files = {s: p.split_file for s, p in parts.items()}
        self.subset_classnames = {s: list(p.classnames) for s, p in parts.items()}
        self.dataset_dir = self.dataset_dirs[subsets[0]] if len(subsets) == 1 else self.root
        if self.num_shots >= 1:
            for part in parts.values():
                check_every_class_trains(part, self.num_shots)
        for part in parts.values():
            for message in part.warnings:
                logger.warning(message)

        self.fewshot_cache_files: Dict[str, str] = {}
        selected: Dict[str, Tuple[List[Datum], List[Datum]]] = {}
        for s, part in parts.items():
            if self.num_shots >= 1:
                selected[s] = self._fewshot(part, cfg)
            else:
                selected[s] = (part.train, part.val)

        check_images([(parts[s].split_file, [*tr, *va, *parts[s].test], images_dir_of(parts[s]))
                      for s, (tr, va) in selected.items()])
        # what this run trains, selects on and tests, all subsets at once (All trains on both); the few-shot
        # sample, not the whole train split: an unselected image leaks nothing into this run, and one stat per
        # image stays proportional to what the run reads (datasets.check compares the full splits)
        check_linked_duplicates([(parts[s].split_file, {"train": tr, "val": va, "test": parts[s].test},
                                  images_dir_of(parts[s])) for s, (tr, va) in selected.items()])
        self._parts = parts

        if sub_classes == "All":
            classnames, train, val, test = merge_subsets(
                [(parts[s], *selected[s]) for s in subsets], allow_shared=self.superclass_mode
            )
        else:
            part = parts[sub_classes]
            classnames, (train, val), test = part.classnames, selected[sub_classes], part.test

        if not val:
            check_selection_split(cfg, [parts[s].split_file for s in subsets])
        super().__init__(train_x=train, val=val, test=test, classnames=classnames)
        if self.num_shots >= 1:
            self.fewshot_digest = json_digest({
                split: [[os.path.relpath(d.impath, self.root).replace(os.sep, "/"), d.label] for d in items]
                for split, items in (("train", train), ("val", val))
            })
        logger.info(
            "%s [%s%s]: %d classes, %d train / %d val / %d test images (shots=%d)",
            type(self).__name__, sub_classes, ", superclasses" if self.superclass_mode else "",
            self.num_classes, len(train), len(val), len(test), self.num_shots,
        )

    def check_subsets(self, sub_classes: Sequence[str]) -> None:
        """Validate, before training, the subsets a later cross-evaluation will build.

        A missing or broken ``_IP`` folder used to surface only after training (issue 12, "late
        failures"). Each requested ``SUB_CLASSES`` value must be valid, and every subset it needs is
        discovered, its split file parsed and all its images scanned now; and when OOP and IP meet,
        their class names must be disjoint.
        """
        bad = [s for s in sub_classes if s not in SUB_CLASSES_CHOICES]
        if bad:
            raise DatasetError(
                f"TEST.CROSS_EVAL: {bad} not among {list(SUB_CLASSES_CHOICES)} (or 'auto'); "
                "fix the value or set TEST.CROSS_EVAL '()' to skip the cross-evaluation"
            )
        needed = [s for s in SUBSETS if any(s == sub or sub == "All" for sub in sub_classes)]
        for subset in needed:
            if subset in self._parts:
                continue
            directory = find_subset_dir(self.root, self.prefix, subset)
            part = load_subset(directory, subset, self.superclass_mode)
            check_images([(part.split_file, [*part.train, *part.val, *part.test], images_dir_of(part))])
            check_linked_duplicates([(part.split_file, {"train": part.train, "val": part.val, "test": part.test},
                                      images_dir_of(part))])
            self._parts[subset] = part
        # OOP and IP evaluated together (All, or an OOP run cross-evaluated on IP): a class name in
        # both would be one class with two meanings (and the IP run would use the OOP-trained name).
        involved = {s for sub in (self.sub_classes, *sub_classes) for s in (SUBSETS if sub == "All" else (sub,))}
        if set(SUBSETS) <= involved and not self.superclass_mode:
            check_disjoint_classnames([self._parts[s] for s in SUBSETS])

    @classmethod
    def data_identity(cls, cfg: Any) -> Dict[str, Any]:
        """SHA-256 of the split file of every subset of the domain found under ``DATASET.ROOT``
        (the run's own subsets must exist; the other one is included when present, because the
        OOP-to-IP cross-evaluation reads it). Memoised per file version, so a sweep pays once."""
        root = os.path.abspath(os.path.expanduser(str(cfg.DATASET.ROOT)))
        sub = str(cfg.DATASET.get("SUB_CLASSES", "OOP"))
        needed = SUBSETS if sub == "All" else (sub,)
        out: Dict[str, Any] = {}
        for subset in SUBSETS:
            try:
                path = find_split_file(find_subset_dir(root, cls.prefix, subset))
            except DatasetNotFoundError:
                if subset in needed:
                    raise
                continue
            out[subset] = content_identity(path)["sha256"]
        return out

    @classmethod
    def data_dirs(cls, cfg: Any) -> List[str]:
        """The domain's subset folders under ``DATASET.ROOT`` (both when present: the cross-evaluation
        reads the other one); a missing one is the dataset's own error, later."""
        root = os.path.abspath(os.path.expanduser(str(cfg.DATASET.ROOT)))
        out = []
        for subset in SUBSETS:
            with contextlib.suppress(DatasetError):
                out.append(find_subset_dir(root, cls.prefix, subset))
        return out

    @staticmethod
    def _resolve_seed(cfg: Any, warn: bool = True) -> int:
        """``SEED``, or the fixed default for a negative one (warned about only when few-shot samples are
        drawn: a full split, e.g. the linear probe's feature extraction, draws nothing)."""
        seed = int(cfg.get("SEED", -1))
        if seed < 0:
            if not warn:
                return DEFAULT_SEED
            logger.warning(
                "SEED=%d: few-shot samples are drawn with the fixed seed %d so they stay reproducible "
                "and cacheable; pass --seed to choose another", seed, DEFAULT_SEED,
            )
            return DEFAULT_SEED
        return seed

    def _cache_dirs(self, part: SubsetSplit, cfg: Any) -> List[str]:
        """Where the cache is looked for, in order; the first writable one receives a new cache."""
        name = os.path.basename(part.directory)
        override = str(cfg.DATASET.get("FEWSHOT_CACHE_DIR", "") or "").strip()
        if override:
            return [os.path.join(os.path.abspath(os.path.expanduser(override)), name)]
        output_dir = str(cfg.get("OUTPUT_DIR", "") or "./output")
        return [
            os.path.join(part.directory, FEWSHOT_DIRNAME),
            os.path.join(os.path.abspath(output_dir), FEWSHOT_DIRNAME, name),
        ]

    def _fewshot(self, part: SubsetSplit, cfg: Any) -> Tuple[List[Datum], List[Datum]]:
        shots, seed = self.num_shots, self.seed
        largest = part.largest_class
        if shots > largest:
            # every class would contribute all its images: the run is the `largest`-shot run, and its
            # results would be filed (and tabulated) under a shot count it never had
            raise DatasetError(
                f"DATASET.NUM_SHOTS {shots}: no class of {os.path.basename(part.directory)} has that many training "
                f"images (at most {largest}); use a shot count <= {largest}, or -1 for all images"
            )
        counts = Counter(d.classname for d in part.train)
        short = sorted((name for name, n in counts.items() if n < shots), key=lambda name: (counts[name], name))
        if short:
            # Dassl's rule (the reference's): a class with fewer than K images trains on all of them. Kept,
            # but said: the run is filed as K-shot while these classes had fewer (it was silent)
            logger.warning("DATASET.NUM_SHOTS %d: %d class(es) of %s have fewer training images and train on all of "
                           "them: %s", shots, len(short), os.path.basename(part.directory),
                           _inline([f"{name} ({counts[name]})" for name in short], limit=5))
        filename = f"shot_{shots}-seed_{seed}-{part.digest}.json"
        dirs = self._cache_dirs(part, cfg)
        legacy = os.path.join(part.directory, FEWSHOT_DIRNAME, f"shot_{shots}-seed_{seed}.pkl")
        if os.path.lexists(legacy):
            logger.warning("Ignoring %s: a pickled few-shot cache of the reference code (never unpickled); "
                           "the sample is drawn again and cached as JSON", legacy)
        # One generator per subset, train drawn before val, like the reference's global RNG after
        # random.seed(SEED) — but immune to any other use of `random` before this point. The draw is
        # cheap and always made: a cache is used only when it *is* this draw. A cache edited into
        # another valid sample (another train image of the same class) was used silently, under the
        # fingerprint id of the seed's own sample, which it no longer is.
        rng = random.Random(seed)
        train = self.generate_fewshot_dataset(part.train, num_shots=shots, rng=rng)
        val = self.generate_fewshot_dataset(part.val, num_shots=min(shots, VAL_MAX_SHOTS), rng=rng)
        drawn = ([(d.impath, d.label) for d in train], [(d.impath, d.label) for d in val])
        for directory in dirs:
            path = os.path.join(directory, filename)
            if os.path.isfile(path):
                cached = _read_fewshot_cache(path, part, shots, seed, self.superclass_mode)
                if cached is None:
                    continue
                if ([(d.impath, d.label) for d in cached[0]], [(d.impath, d.label) for d in cached[1]]) == drawn:
                    logger.info("Loading few-shot split from %s", path)
                    self.fewshot_cache_files[part.subset] = path
                    return cached
                logger.warning("Ignoring few-shot cache %s: a %d-shot sample of %s, but not the one seed %d draws "
                               "(edited?); it is replaced by the seed's own sample", path, shots,
                               os.path.basename(part.split_file), seed)

        stale = sorted(
            os.path.basename(p) for d in dirs for p in glob.glob(os.path.join(glob.escape(d), f"shot_{shots}-seed_{seed}-*.json"))
            if os.path.basename(p) != filename
        )
        if stale:
            logger.info("Few-shot cache %s was drawn from another version of %s (split file changed): sampling again",
                        stale[0], os.path.basename(part.split_file))
        payload = {
            "format": FEWSHOT_CACHE_FORMAT,
            "version": FEWSHOT_CACHE_VERSION,
            "split_file": os.path.basename(part.split_file),
            "split_digest": part.digest,
            "superclass": self.superclass_mode,
            "num_shots": shots,
            "seed": seed,
            "train": [_to_record(d, part.directory) for d in train],
            "val": [_to_record(d, part.directory) for d in val],
        }
        errors = []
        for directory in dirs:
            path = os.path.join(directory, filename)
            try:
                write_json(payload, path, ensure_ascii=False, indent=None, separators=None)
            except OSError as err:
                errors.append(f"{path}: {err}")
                continue
            if errors:
                logger.warning("Dataset folder not writable (%s); few-shot split cached in %s", errors[0], path)
            else:
                logger.info("Saving few-shot split to %s", path)
            self.fewshot_cache_files[part.subset] = path
            break
        else:
            logger.warning("Could not cache the few-shot split anywhere: %s", "; ".join(errors))
        return train, val


def subset_dirs_under(root: str) -> List[str]:
    """Every subset folder of every registered domain found under ``root``: what no analysis output may
    be written into (``tools.cluster_names --out`` onto another domain's split file replaced it)."""
    root = os.path.abspath(os.path.expanduser(str(root)))
    found = []
    for cls in laion_beyond_domains().values():
        for subset in SUBSETS:  # every match, also where several make the domain ambiguous
            regex = subset_dir_regex(cls.prefix, subset)
            for hit in sorted(glob.glob(os.path.join(glob.escape(root), glob.escape(cls.prefix) + "*_" + subset))):
                if os.path.isdir(hit) and regex.fullmatch(os.path.basename(hit)):
                    found.append(hit)
    return list(dict.fromkeys(found))


def laion_beyond_domains() -> Dict[str, type]:
    """Registered LAION-Beyond-style datasets by name (used by the checker and the toy generator)."""
    out = {}
    for name in DATASET_REGISTRY.registered_names():
        obj = DATASET_REGISTRY.get(name)
        if isinstance(obj, type) and issubclass(obj, LaionBeyond) and obj.prefix:
            out[name] = obj
    return out


@DATASET_REGISTRY.register()
class Pokemon89_39(LaionBeyond):
    prefix = "Pokemon"
    hint = "pokemon"


@DATASET_REGISTRY.register()
class Animals92_42(LaionBeyond):
    prefix = "Animals"
    hint = "animal"


@DATASET_REGISTRY.register()
class Architecture50_23(LaionBeyond):
    prefix = "Architecture"
    hint = "architecture"


@DATASET_REGISTRY.register()
class Attire54_28(LaionBeyond):
    prefix = "Attire"
    hint = "attire"


@DATASET_REGISTRY.register()
class FolkArt59_27(LaionBeyond):
    prefix = "FolkArt"
    hint = "folk art"


@DATASET_REGISTRY.register()
class Food53_27(LaionBeyond):
    prefix = "Food"
    hint = "food"


@DATASET_REGISTRY.register()
class Insects_Spiders106_52(LaionBeyond):
    prefix = "Insects_Spiders"
    hint = "insect or spider"


@DATASET_REGISTRY.register()
class Landmark59_30(LaionBeyond):
    prefix = "Landmark"
    hint = "landmark"


@DATASET_REGISTRY.register()
class Plants_Fugi113_56(LaionBeyond):
    prefix = "Plants_Fugi"  # "Fugi" (sic) is the dataset's folder prefix
    hint = "plant or fungus"
