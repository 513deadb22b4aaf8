"""LAION_Beyond_GCD: FSNL on pseudo-labelled clusters of a domain's OOP images (spec §4.7).

The generalized-category-discovery experiment replaces the OOP labels by clusters named after the
closest real class name, trains FSNL on 16 images per cluster and scores the rest with the
clustering accuracy against the images' *real* classes. The clusters come from
``<ROOT>/<SUBFIELD>_clustering_results.json``, a list of
``{"image_path", "pseudo_label", "pseudo_classname"}`` written by the reference's CMS code or by
``python -m tools.cluster_names``.

Differences from the reference loader, all deliberate:

* a relative ``image_path`` is resolved against ``DATASET.ROOT`` (the reference only worked with the
  authors' absolute paths); absolute paths are still accepted when they lie under the root, and a path
  outside it (absolute, or climbing out with ``..``) is refused: the project reads only its dataset root;
* the per-class shuffle uses ``random.Random(SEED)`` over the classes in sorted order, not the global
  RNG, so the split depends on the seed and the file only;
* ``DATASET.NUM_SHOTS >= 1`` sets the number of training images per cluster (the reference ignored
  it and always took 16, which is also the default here);
* malformed records, duplicated paths and missing images are reported at once, with the file name;
* a SUB_CLASSES other than OOP is a clear error instead of an ``assert``.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from clip.templates import DOMAIN_HINTS
from dassl.data.datasets.base_dataset import DatasetBase, Datum
from dassl.data.datasets.build import DATASET_REGISTRY
from dassl.evaluation.clustering import parent_dir_class
from dassl.utils import closest_name, write_json
from dassl.utils.identity import content_identity

from .laion_beyond import (
    DEFAULT_SEED,
    DatasetError,
    DatasetNotFoundError,
    check_images,
    find_subset_dir,
    laion_beyond_domains,
)

__all__ = [
    "LAION_Beyond_GCD",
    "GCD_TRAIN_PER_CLASS",
    "RESULTS_SUFFIX",
    "clustering_results_path",
    "read_clustering_results",
    "write_clustering_results",
    "split_clusters",
    "subfield_hint",
]

logger = logging.getLogger(__name__)

GCD_TRAIN_PER_CLASS = 16
RESULTS_SUFFIX = "_clustering_results.json"
_MAX_LISTED = 10


def clustering_results_path(root: str, subfield: str) -> str:
    """``<root>/<subfield>_clustering_results.json``."""
    return os.path.join(root, f"{subfield}{RESULTS_SUFFIX}")


def subfield_hint(subfield: str) -> str:
    """The domain hint of a ``DATASET.SUBFIELD`` (the domain's folder prefix, e.g. ``Pokemon``).

    The benchmark's hint table (``clip.templates.DOMAIN_HINTS``) is keyed by registered dataset
    name (``Pokemon89_39``); a subfield is that name without its class counts. Registered
    LAION-Beyond-style datasets (e.g. the Mini-Beyond domains) are looked up by their prefix.
    """
    pattern = re.compile(re.escape(subfield) + r"\d+_\d+")
    hits = sorted(name for name in DOMAIN_HINTS if pattern.fullmatch(name))
    if hits:
        return DOMAIN_HINTS[hits[0]]
    domains = laion_beyond_domains()
    by_prefix = {cls.prefix: cls.hint for cls in domains.values() if cls.hint}
    if subfield in by_prefix:
        return by_prefix[subfield]
    known = sorted(set(by_prefix) | {re.sub(r"\d+_\d+$", "", n) for n in DOMAIN_HINTS})
    close = closest_name(subfield, known)
    raise DatasetError(
        f"DATASET.SUBFIELD {subfield!r} is not a known domain prefix"
        + (f'; did you mean "{close}"?' if close else "")
        + f" Known: {', '.join(known)}"
    )


def _listing(items: Sequence[str]) -> str:
    shown = [f"  {item}" for item in items[:_MAX_LISTED]]
    if len(items) > _MAX_LISTED:
        shown.append(f"  ... and {len(items) - _MAX_LISTED} more")
    return "\n".join(shown)


def read_clustering_results(path: str, root: str, images_dir: Optional[str] = None) -> List[Tuple[str, str]]:
    """``(absolute image path, pseudo class name)`` per record, in file order, after validation.

    With ``images_dir`` (the domain's ``<Prefix>*_OOP/images``) every image must lie in it: IP images
    (or another domain's) in the file were trained and scored as clusters of OOP images, their folder
    names counted as true classes, exit 0. ``pseudo_label`` is not what groups the records (the pseudo
    class name does, as in the reference), but a file whose labels and names disagree -- a label named
    twice, a name under two labels, a label that is no non-negative integer -- is not one clustering:
    the reference merged two clusters of one name silently, and trained on another class count."""
    if not os.path.isfile(path):
        raise DatasetNotFoundError(
            f"No clustering results at {path!r}. Fix: produce them with "
            f"`python -m tools.cluster_names --root {root} --domain <domain>` (or copy the CMS output "
            "there), and check DATASET.SUBFIELD."
        )
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}") from err
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    problems: List[str] = []
    out: List[Tuple[str, str]] = []
    seen: Dict[str, int] = {}
    base = os.path.normpath(os.path.abspath(root))
    images = os.path.normpath(os.path.abspath(images_dir)) if images_dir else None
    label_name: Dict[int, Tuple[str, int]] = {}
    name_label: Dict[str, Tuple[int, int]] = {}
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            problems.append(f"[{i}] is not an object")
            continue
        impath, name = rec.get("image_path"), rec.get("pseudo_classname")
        if not isinstance(impath, str) or not impath:
            problems.append(f"[{i}]: image_path must be a non-empty string, got {impath!r}")
            continue
        if not isinstance(name, str) or not name:
            problems.append(f"[{i}]: pseudo_classname must be a non-empty string, got {name!r}")
            continue
        full = os.path.normpath(impath if os.path.isabs(impath) else os.path.join(root, *impath.split("/")))
        if os.path.commonpath([full, base]) != base:  # by name: links inside the root stay allowed
            problems.append(f"[{i}]: image_path {impath!r} lies outside DATASET.ROOT {root}; the data is read "
                            "only under the root: move the image there and write its path relative to it")
            continue
        if images is not None and os.path.commonpath([full, images]) != images:
            problems.append(f"[{i}]: image_path {impath!r} is not an image of the domain's OOP subset ({images}); "
                            "GCD clusters OOP images only: drop the record")
            continue
        if full in seen:
            problems.append(f"[{i}]: image_path {impath!r} repeats record [{seen[full]}]")
            continue
        if "pseudo_label" in rec:
            label = rec["pseudo_label"]
            if isinstance(label, bool) or not isinstance(label, int) or label < 0:
                problems.append(f"[{i}]: pseudo_label must be a non-negative integer, got {label!r}")
                continue
            if label_name.setdefault(label, (name, i))[0] != name:
                problems.append(f"[{i}]: pseudo_label {label} is named {name!r} here and {label_name[label][0]!r} in "
                                f"record [{label_name[label][1]}]: one cluster, one name")
                continue
            if name_label.setdefault(name, (label, i))[0] != label:
                problems.append(f"[{i}]: pseudo_classname {name!r} names cluster {label} here and cluster "
                                f"{name_label[name][0]} in record [{name_label[name][1]}]: two clusters would merge "
                                "into one class")
                continue
        seen[full] = i
        out.append((full, name))
    if not out and not problems:
        problems.append("no records")
    if problems:
        # one line for the run (the first problem; it was a line per problem), the listing in the log
        listing = f"{path}: {len(problems)} problem(s):\n{_listing(problems)}"
        logger.info("%s", listing)
        more = f" (and {len(problems) - 1} more, listed in the log)" if len(problems) > 1 else ""
        raise DatasetError(f"{path}: {len(problems)} problem(s): {problems[0]}{more}", listing)
    return out


def write_clustering_results(path: str, records: Sequence[Dict[str, Any]]) -> None:
    """Write records (``image_path``, ``pseudo_label``, ``pseudo_classname``) atomically."""
    required = ("image_path", "pseudo_label", "pseudo_classname")
    clean = []
    for rec in records:
        missing = [k for k in required if k not in rec]
        if missing:
            raise ValueError(f"record {rec!r} lacks {missing}")
        clean.append({"image_path": str(rec["image_path"]), "pseudo_label": int(rec["pseudo_label"]),
                      "pseudo_classname": str(rec["pseudo_classname"])})
    write_json(clean, path, ensure_ascii=False, indent=1)


def split_clusters(
    records: Sequence[Tuple[str, str]], seed: int, train_per_class: int = GCD_TRAIN_PER_CLASS
) -> Tuple[List[str], List[Datum], List[Datum]]:
    """Sorted class names, train (first ``train_per_class`` of each shuffled class) and test (the rest)."""
    groups: Dict[str, List[str]] = OrderedDict()
    for impath, name in records:
        groups.setdefault(name, []).append(impath)
    classnames = sorted(groups)
    rng = random.Random(seed)
    train: List[Datum] = []
    test: List[Datum] = []
    for label, name in enumerate(classnames):
        items = list(groups[name])
        rng.shuffle(items)
        train += [Datum(p, label, 0, name) for p in items[:train_per_class]]
        test += [Datum(p, label, 0, name) for p in items[train_per_class:]]
    return classnames, train, test


@DATASET_REGISTRY.register()
class LAION_Beyond_GCD(DatasetBase):
    """Clusters of one domain's OOP images as classes; ``val`` is the test split (as in the reference).

    Instances expose ``hint`` (from ``DATASET.SUBFIELD``), ``subfield``, ``sub_classes`` ("OOP"),
    ``results_file``, ``train_per_class`` and ``true_class(impath)``: the image's real class, which
    the clustering evaluator compares the predictions with.
    """

    supports_subsets = False
    #: impath -> real class (the parent folder in the LAION-Beyond layout); replace for other layouts.
    true_class: Callable[[str], str] = staticmethod(parent_dir_class)

    @classmethod
    def data_identity(cls, cfg: Any) -> Dict[str, Any]:
        """The clustering results file's content (the pseudo-labels are this dataset's data)."""
        path = clustering_results_path(os.path.abspath(os.path.expanduser(str(cfg.DATASET.ROOT))),
                                       str(cfg.DATASET.SUBFIELD))
        return {"clustering_results": content_identity(path)["sha256"]} if os.path.isfile(path) else {}

    def __init__(self, cfg: Any) -> None:
        dcfg = cfg.DATASET
        sub_classes = str(dcfg.get("SUB_CLASSES", "OOP"))
        if sub_classes != "OOP":
            raise DatasetError(
                f"LAION_Beyond_GCD clusters OOP images only; DATASET.SUB_CLASSES is {sub_classes!r}. "
                "Fix: set DATASET.SUB_CLASSES OOP (and TEST.CROSS_EVAL () if you changed it)."
            )
        if not str(dcfg.ROOT).strip():
            raise DatasetNotFoundError("DATASET.ROOT is empty; pass --root pointing at the folder with "
                                       "<SUBFIELD>_clustering_results.json")
        self.root = os.path.abspath(os.path.expanduser(str(dcfg.ROOT)))
        self.sub_classes = sub_classes
        self.subfield = str(dcfg.SUBFIELD)
        self.hint = subfield_hint(self.subfield)
        self.results_file = clustering_results_path(self.root, self.subfield)
        shots = int(dcfg.get("NUM_SHOTS", -1))
        self.train_per_class = shots if shots >= 1 else GCD_TRAIN_PER_CLASS
        seed = int(cfg.get("SEED", -1))
        if seed < 0:
            logger.warning("SEED=%d: the cluster split uses the fixed seed %d", seed, DEFAULT_SEED)
            seed = DEFAULT_SEED
        self.seed = seed

        images_dir = None  # the domain's OOP images: what the clusters must be made of
        try:
            images_dir = os.path.join(find_subset_dir(self.root, self.subfield, "OOP"), "images")
        except DatasetNotFoundError:
            if os.path.isfile(self.results_file):  # else the reader says the file is missing, and how to make it
                raise
        records = read_clustering_results(self.results_file, self.root, images_dir)
        classnames, train, test = split_clusters(records, seed, self.train_per_class)
        check_images([(self.results_file, [*train, *test], self.root)])
        empty = sorted({d.classname for d in train} - {d.classname for d in test})
        if empty:
            logger.info("%d cluster(s) have at most %d images and no test image: %s", len(empty),
                        self.train_per_class, empty[:_MAX_LISTED])
        if not test:
            raise DatasetError(
                f"{self.results_file}: no test image left after taking {self.train_per_class} training "
                "images per cluster; lower DATASET.NUM_SHOTS or use larger clusters"
            )
        self.dataset_dir = self.root
        super().__init__(train_x=train, val=test, test=test, classnames=classnames)
        logger.info("LAION_Beyond_GCD [%s]: %d clusters, %d train / %d test images (%d per cluster, seed %d)",
                    self.subfield, len(classnames), len(train), len(test), self.train_per_class, seed)
