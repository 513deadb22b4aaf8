"""Few-shot linear probe on frozen CLIP image features (spec §9.2).

Reads the features written by ``python -m lpclip.feat_extractor`` from
``<feature-dir>/<dataset>/<sub-classes>/{train,val,test}.npz`` and, for every shot count K and run r,
samples K training images per class and min(K, 4) validation images per class, picks the inverse
regularisation strength C of an L2 logistic regression on that few-shot validation set, and reports the
test accuracy of the chosen classifier.

C search (as in the reference): fit at each C of a coarse grid {1e6, 1e4, ..., 1e-6} and keep the best
(first on ties); then ``num_step`` rounds on the interval [C*/10, 10·C*] in log10 space: fit both ends,
keep the better one (the left one on ties) as the current classifier and halve the interval towards it.
The run's C and test accuracy are those of the classifier kept in the last round.

Two solvers fit the same objective with the same protocol: ``--solver torch`` (default; the batched
L-BFGS of :mod:`lpclip.logreg`, all runs of a shot count and all C values of a stage in one batch,
each new C warm-started from the nearest C already fitted, on the GPU when there is one) and
``--solver sklearn`` (the reference's ``LogisticRegression(solver="lbfgs", max_iter=1000)``, one
fit at a time; kept as the reference). ``benchmarks/linear_probe.py`` measures both side by side.

Every feature file carries the backbone fingerprint of the extractor call that wrote it; the three
splits must agree (features of different backbones -- e.g. three separate calls with unseeded random
weights -- are refused, as are truncated files and files without the arrays the probe reads). Each
file's values are checked before any fit, because a bad value does not fail the fit, it skews it: a NaN
or inf feature (the torch solver silently lands at chance level, scikit-learn raises), an empty split
(a NaN accuracy in results.json, or C "chosen" on no validation image), labels that are not integers
or features that are not real floats (silently truncated or cast), image ids that cannot be the
extractor's (an id with rows of different labels, or another number of rows than the file's ``views``:
ids set to the labels made "1-shot" sample every image), a width other than the train
split's, and val/test labels no training image has (never predicted, so C is chosen on a validation
set it cannot get right). Files that carry the extractor's ``job`` identity must name their own split
(a ``cp train.npz test.npz`` probed on the training images) and agree on the data they come from
(dataset, subset, split-file digests); a val or test split whose arrays equal the train split's is refused too.

Differences from the reference, all deliberate (B31):

* the layout read is exactly the one the extractor writes (with the SUB_CLASSES level), and missing
  files fail immediately with a message listing them (the reference polled forever);
* classes with fewer images than K contribute all their images (the reference crashed);
* each run draws from its own ``np.random.default_rng(run)`` instead of re-seeding the global RNG;
  with augmented train views (``--views``) K *images* are sampled and all their views are used;
* fits are cached per C within a search (lbfgs is deterministic, so results are unchanged);
* results go to ``results.json`` (written through the results contract, ``dassl.results``, kind
  ``linear_probe``, fingerprinted by the probe's settings -- solver included -- and the feature files'
  content) and a CSV whose columns say what they hold (``accuracy_mean``, ``accuracy_std``: the
  project's one spread convention, the sample std with ddof 1) with the real SUB_CLASSES and seeds
  (the reference wrote the std into ``error_rate`` and hard-coded SUB_CLASSES "OOP" and SEED 4).
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by path (python dir/script.py): the repo root goes first on sys.path, as under -m
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if __name__ == "__main__":  # a Ctrl-C during the imports below: one line, not a traceback
    from dassl.ctrl_c import quiet_ctrl_c_while_loading

    quiet_ctrl_c_while_loading()

import argparse
import csv
import difflib
import io
import json
import logging
import math
import os
import os.path as osp
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from dassl import results as results_contract
from dassl.cli import ArgumentParser
from dassl.ctrl_c import exit_with
from dassl.utils import WriteError, atomic_write, check_writable_dir, hold_output_dir, requested_device
from dassl.utils.identity import content_identity
from lpclip import logreg
from lpclip.files import FINGERPRINT_KEY, JOB_KEY, SPLITS, FeatureError, OutputConflictError, feature_file

logger = logging.getLogger(__name__)

COARSE_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)
DEFAULT_SHOTS = (1, 2, 4, 8, 16)
VAL_MAX_SHOTS = 4
RESULTS_JSON = results_contract.RESULTS_FILE
RESULTS_CSV = "linear_probe.csv"
CSV_COLUMNS = (
    "method", "dataset", "sub_classes", "shots", "features", "num_run", "num_step", "seeds",
    "accuracy_mean", "accuracy_std", "accuracy_min", "accuracy_max", "c_median",
)


SOLVERS = ("torch", "sklearn")
#: How many items (labels, differing keys) an error line names before "and N more": one readable line.
SHOWN = 3
#: The keys of a feature file's job identity (``lpclip.feat_extractor.job_identity``) that say which data
#: it was extracted from; the three splits must agree on them. The others are per split or per call:
#: ``split`` (checked against the file name instead), ``views`` and ``seed`` (train's augmentation,
#: 0/None for val and test), ``num_shots`` (a subset of the same split files, and test ignores it),
#: ``precision`` (the one requested; the fingerprint holds the one used) and ``weights``/``transform``
#: (compared through the backbone fingerprint already).
JOB_DATA_KEYS = ("dataset", "sub_classes", "data")


class MissingFeaturesError(FeatureError):
    """Some of the feature files a probe needs do not exist."""


@dataclass
class FeatureSplit:
    """One split's features: ``x [N, D]``, ``y [N]``, ``image_ids [N]`` (views of one image share an id);
    ``job`` is the extractor's job identity stored in the file (None for files written without one)."""

    x: np.ndarray
    y: np.ndarray
    image_ids: np.ndarray
    classnames: List[str] = field(default_factory=list)
    job: Optional[Dict[str, Any]] = None


@dataclass
class SearchResult:
    """Outcome of :func:`search_c`: the kept C, its val accuracy and fitted model, and every fit made."""

    c: float
    val_accuracy: float
    model: Any
    trace: List[Tuple[float, float]]


# ---------------------------------------------------------------------- files
def feature_paths(feature_dir: str, dataset: str, sub_classes: str) -> Dict[str, str]:
    """Where ``lpclip.feat_extractor`` writes each split (one layout for both tools, B31)."""
    return {s: feature_file(feature_dir, dataset, sub_classes, s) for s in SPLITS}


def check_features(feature_dir: str, dataset: str, sub_classes: str) -> Dict[str, str]:
    """Return the split paths, or raise listing every missing file (never wait for them)."""
    paths = feature_paths(feature_dir, dataset, sub_classes)
    missing = [p for p in paths.values() if not osp.isfile(p)]
    if missing and osp.lexists(feature_dir) and not osp.isdir(feature_dir):
        raise MissingFeaturesError(f"--feature-dir {feature_dir} is not a directory; give the --output-dir of "
                                   "lpclip/feat_extractor.py")
    if missing:
        # a typo in --dataset or --sub-classes is far likelier than features never extracted: say what is there
        for folder, flag, value in ((feature_dir, "--dataset", dataset),
                                    (osp.join(feature_dir, dataset), "--sub-classes", sub_classes)):
            if osp.isdir(folder) and not osp.isdir(osp.join(folder, value)):
                there = sorted(d for d in os.listdir(folder) if osp.isdir(osp.join(folder, d)))
                if there:
                    lower = {d.lower(): d for d in there}
                    close = [lower[c] for c in difflib.get_close_matches(value.lower(), list(lower), n=1, cutoff=0.8)]
                    hint = (f"did you mean {flag} {close[0]}?" if close else
                            f"check {flag}, or extract them with: python lpclip/feat_extractor.py --dataset "
                            f"{dataset} --root DATA --output-dir {feature_dir} DATASET.SUB_CLASSES {sub_classes}")
                    raise MissingFeaturesError(f"no features for {flag} {value} in {folder} "
                                               f"(it holds: {', '.join(there)}); {hint}")
        raise MissingFeaturesError(
            f"missing feature file(s) for {dataset}/{sub_classes}: {', '.join(missing)}; write them with: "
            f"python lpclip/feat_extractor.py --dataset {dataset} --root DATA --output-dir {feature_dir} "
            f"DATASET.SUB_CLASSES {sub_classes}"
        )
    return paths


def _reextract(path: str) -> str:
    return f"re-extract it with python lpclip/feat_extractor.py (see {path}'s folder for the other splits)"


def _extract_all(feature_dir: str, dataset: str, sub_classes: str) -> str:
    """The fix for splits that do not belong together: all three from one extractor call, replacing the
    files there (``--overwrite`` goes before the trailing ``KEY VALUE`` overrides, which take the rest)."""
    return (f"re-extract all three splits in one call (no --split, the backbone options you used): python "
            f"lpclip/feat_extractor.py --dataset {dataset} --root DATA --output-dir {feature_dir} --overwrite ... "
            f"DATASET.SUB_CLASSES {sub_classes}")


def _few(items: Sequence[Any], sep: str = ", ", limit: int = SHOWN) -> str:
    """The first ``limit`` items, then "and N more": an error line names examples, not thousands."""
    shown = sep.join(str(item) for item in list(items)[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _read_npz(path: str, key: str) -> Dict[str, np.ndarray]:
    """The arrays of ``path`` the probe reads, as stored (no cast: the checks need the real dtypes).
    A file that is not a readable npz archive -- truncated, pickled, or a bare ``.npy`` array under
    the name ``.npz`` (``np.load`` returns an array, not an archive) -- is a :class:`FeatureError`."""
    wanted = (key, "labels", "image_ids", "views", "classnames", FINGERPRINT_KEY, JOB_KEY)
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise FeatureError(f"{path} is a single {data.dtype} array of shape {data.shape} (a .npy file), not a "
                               f"feature file with the arrays {key}, labels, {FINGERPRINT_KEY}; {_reextract(path)}")
        with data:
            missing = [k for k in (key, "labels", FINGERPRINT_KEY) if k not in data.files]
            if missing:
                raise FeatureError(f"{path} has no array(s) {missing} (it has {sorted(data.files)}); "
                                   f"{_reextract(path)}")
            return {k: data[k] for k in wanted if k in data.files}
    except FeatureError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise FeatureError(f"{path} cannot be read ({type(err).__name__}: {err}); {_reextract(path)}") from None


def _read_job(path: str, stored: Optional[np.ndarray]) -> Optional[Dict[str, Any]]:
    """The file's job identity: a JSON object; None when the file has none (written before files
    recorded it) or it is ``null`` (unseeded random weights: the extractor cannot know it in advance)."""
    if stored is None:
        return None
    job: Any = None
    readable = stored.ndim == 0 and stored.dtype.kind == "U"
    if readable:
        try:
            job = json.loads(str(stored))
        except ValueError:
            readable = False
    if not readable or not (job is None or isinstance(job, dict)):
        raise FeatureError(f"{path}: its {JOB_KEY!r} (dtype {stored.dtype}, shape {stored.shape}) is not the job "
                           f"identity the extractor writes (a JSON object string); {_reextract(path)}")
    return job


def load_split(path: str, normalized: bool) -> Tuple[FeatureSplit, str]:
    """One split and its backbone fingerprint; a broken file is a :class:`FeatureError` naming it.

    Checked before any fit, as none of these fails the fit -- each skews it: features must be a real
    floating ``[N, D]`` array with N, D >= 1 and every value finite (a NaN row made the torch solver
    return a chance-level result with exit 0; complex values were cast to their real part); labels
    (and image ids) integer, one per row (float labels were truncated to int); the fingerprint a
    string; every image id one label and as many rows as the file's ``views`` (:func:`_check_image_ids`:
    ids set to the labels made "1-shot" train on every image, exit 0). The extractor writes float32
    features, int64 labels and ids, and string fingerprints.
    """
    key = "features" if normalized else "features_raw"
    arrays = _read_npz(path, key)
    fingerprint = arrays[FINGERPRINT_KEY]
    if fingerprint.ndim != 0 or fingerprint.dtype.kind != "U":
        raise FeatureError(f"{path}: its {FINGERPRINT_KEY!r} (dtype {fingerprint.dtype}, shape {fingerprint.shape}) "
                           f"is not the backbone fingerprint string the extractor writes; {_reextract(path)}")
    x, y = arrays[key], arrays["labels"]
    if x.ndim != 2 or x.shape[1] == 0:
        raise FeatureError(f"{path}: {key!r} has shape {x.shape}, not [images, feature width >= 1]; "
                           f"{_reextract(path)}")
    if x.dtype.kind != "f":
        raise FeatureError(f"{path}: {key!r} is {x.dtype}, not real floating-point features; {_reextract(path)}")
    if len(x) == 0:
        raise FeatureError(f"{path} holds no images ({key!r} has shape {x.shape}): the probe needs every split; "
                           f"{_reextract(path)}")
    for name in ("labels", "image_ids"):
        arr = arrays.get(name)
        if arr is None:
            continue
        if arr.ndim != 1 or len(arr) != len(x):
            raise FeatureError(f"{path}: {name!r} has shape {arr.shape}, but {key!r} has {len(x)} rows (one "
                               f"entry per row expected); {_reextract(path)}")
        if arr.dtype.kind not in "iu":
            raise FeatureError(f"{path}: {name!r} is {arr.dtype}, not integers (the probe does not round them; "
                               f"first values {arr[:SHOWN].tolist()}); {_reextract(path)}")
    classnames = arrays.get("classnames")
    if classnames is not None and classnames.ndim != 1:
        raise FeatureError(f"{path}: 'classnames' has shape {classnames.shape}, not a list of names; "
                           f"{_reextract(path)}")
    x = np.asarray(x, dtype=np.float32)  # a float64 value beyond float32's range becomes inf: checked below
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if len(bad):
        raise FeatureError(f"{path}: {len(bad)} of {len(x)} rows of {key!r} hold NaN or infinite values (row(s) "
                           f"{_few(bad.tolist())}); {_reextract(path)}")
    y = np.asarray(y, dtype=np.int64)
    ids = np.asarray(arrays["image_ids"], dtype=np.int64) if "image_ids" in arrays else np.arange(len(y))
    _check_image_ids(path, y, ids, arrays.get("views"), "image_ids" in arrays)
    names = [str(n) for n in classnames] if classnames is not None else []
    return FeatureSplit(x, y, ids, names, _read_job(path, arrays.get(JOB_KEY))), str(fingerprint)


def _views_per_image(path: str, stored: Optional[np.ndarray]) -> int:
    """How many rows each image has in the file ``path``: its 0-d ``views`` array. The extractor has
    always written it, as ``max(--views, 1)`` (1 for val, test and a test-transform train split); a file
    without one (not the extractor's) or with 0 (``--views 0``: the test transform, one pass) holds one
    row per image -- what the probe already assumes for a file without ``image_ids``."""
    if stored is None:
        return 1
    if stored.ndim != 0 or stored.dtype.kind not in "iu" or int(stored) < 0:
        shown = f"value {stored.tolist()}" if stored.ndim == 0 else f"shape {stored.shape}"
        raise FeatureError(f"{path}: its 'views' ({stored.dtype}, {shown}) is not the number of rows per image the "
                           f"extractor writes (a whole number >= 1); {_reextract(path)}")
    return max(int(stored), 1)


def _check_image_ids(path: str, y: np.ndarray, ids: np.ndarray, views_field: Optional[np.ndarray],
                     stored: bool) -> None:
    """Refuse image ids that cannot be the extractor's, a :class:`FeatureError` naming ``path``.

    K-shot sampling draws K *ids* per class and takes every row of each (:func:`sample_per_class`), so the
    ids decide how many images a "K-shot" run trains on, and nothing downstream notices wrong ones: ids
    set to the labels made each class one "image" and the 1-shot probe trained on every image (100 %,
    exit 0), and all ids 0 did the same. The extractor gives every image exactly ``views`` rows under one
    id, all of its label; so an id shared by rows of different labels, or an id with another number of
    rows than ``views`` (:func:`_views_per_image`), is refused. ``stored``: the file has ``image_ids``
    (``ids`` is one id per row otherwise). Sorting instead of a loop over rows keeps the check
    O(N log N) on a split of any size.
    """
    views = _views_per_image(path, views_field)
    order = np.lexsort((y, ids))  # by id, then label: an id's labels lie next to each other
    sid, sy = ids[order], y[order]
    mixed = np.unique(sid[1:][(sid[1:] == sid[:-1]) & (sy[1:] != sy[:-1])])
    if len(mixed):
        first = mixed[0]
        raise FeatureError(
            f"{path}: {len(mixed)} image id(s) ({_few(mixed.tolist())}) are shared by rows of different labels "
            f"(id {first}: labels {_few(np.unique(y[ids == first]).tolist())}), but one id is one image and "
            f"K-shot sampling takes all its rows (ids set to the labels or to 0?); {_reextract(path)}")
    uniq, counts = np.unique(ids, return_counts=True)
    wrong = np.flatnonzero(counts != views)
    if not len(wrong):
        return
    if not stored:
        raise FeatureError(f"{path} records {views} views per image but has no 'image_ids' to tell which rows "
                           f"are one image; {_reextract(path)}")
    expected = (f"{views} row(s) each, one per view (its 'views' is {int(views_field)})" if views_field is not None
                else "one row each, one per image (it has no 'views' array)")
    examples = ", ".join(f"{uniq[i]} ({counts[i]} {'row' if counts[i] == 1 else 'rows'})" for i in wrong[:SHOWN])
    examples += f" and {len(wrong) - SHOWN} more" if len(wrong) > SHOWN else ""
    raise FeatureError(
        f"{path}: {len(wrong)} of {len(uniq)} image id(s) do not have {expected}: id(s) {examples}; "
        f"K-shot sampling takes all rows of an id, so a run would not train on K images per class "
        f"(ids set to the labels?); {_reextract(path)}")


def _fingerprint_diff(a: str, b: str) -> str:
    """The top-level fields in which two fingerprints differ (for the error line)."""
    try:
        da, db = json.loads(a), json.loads(b)
    except ValueError:
        return "unreadable fingerprint"
    if not (isinstance(da, dict) and isinstance(db, dict)):
        return "unreadable fingerprint"
    keys = sorted(k for k in set(da) | set(db) if da.get(k) != db.get(k))
    return ", ".join(f"{k}: {json.dumps(da.get(k), sort_keys=True)} vs {json.dumps(db.get(k), sort_keys=True)}"
                     for k in keys)


def _job_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> List[str]:
    """The :data:`JOB_DATA_KEYS` in which two job identities differ, readable (digests are not shown)."""
    out = []
    for key in JOB_DATA_KEYS:
        va, vb = a.get(key), b.get(key)
        if va == vb:
            continue
        if key == "data" and isinstance(va, dict) and isinstance(vb, dict):
            subsets = sorted(k for k in set(va) | set(vb) if va.get(k) != vb.get(k))
            out.append(f"data.{'/'.join(subsets)} (split-file digest)")
        elif key == "data":
            out.append("data (split-file digests)")
        else:
            out.append(f"{key} {json.dumps(va)} vs {json.dumps(vb)}")
    return out


def load_features(feature_dir: str, dataset: str, sub_classes: str, normalized: bool) -> Dict[str, FeatureSplit]:
    """The three splits, refused unless one backbone (weights, model, transform, precision) wrote them all
    from one data build and they fit together: a probe on features of different backbones, on a test
    split that is the train split, or on splits of different split files measures nothing.

    Beyond the fingerprint and class list: every split has the train split's feature width; a file's
    job identity names its own split (``cp train.npz test.npz`` probed on the training images, exit 0),
    the asked ``dataset`` and ``sub_classes`` (another domain's files copied into this one's folder were
    probed and filed under its name), and the splits' job identities agree on :data:`JOB_DATA_KEYS`.
    Files without a job identity (written before files recorded one, or ``null`` for unseeded random
    weights) cannot be compared that way and are still read, as before -- refusing them would orphan
    every older extraction, and their fingerprint still ties the splits to one backbone; for them (and
    all others) a val or test split whose features and labels equal the train split's is refused, which
    catches the copy (val may equal test: datasets without a val split use their test split, spec
    §4.7). Last, every val/test label must be a train label: the probe never predicts another, so C
    would be chosen on a validation set it cannot get right and the test accuracy would be silently
    capped.
    """
    paths = check_features(feature_dir, dataset, sub_classes)
    loaded = {s: load_split(p, normalized) for s, p in paths.items()}
    fix = _extract_all(feature_dir, dataset, sub_classes)
    for split, path in paths.items():
        job = loaded[split][0].job
        if job is not None and job.get("split") != split:
            raise FeatureError(f"{path} holds the {json.dumps(job.get('split'))} split by its job identity, not "
                               f"{split} (a copy or rename of another split's file?); {fix}")
        # a folder is only where a file lies: its job identity says whose images it encodes (another
        # domain's or subset's files copied here were probed and filed under this --dataset)
        for key, asked in (("dataset", dataset), ("sub_classes", sub_classes)):
            if job is not None and key in job and str(job[key]) != asked:
                raise FeatureError(f"{path} holds features of {key} {json.dumps(job[key])} by its job identity, not "
                                   f"{json.dumps(asked)} (copied from another folder?); {fix}")
    ref_split = SPLITS[0]
    ref_feats, ref_fp = loaded[ref_split]
    for split in SPLITS[1:]:
        feats, fp = loaded[split]
        if fp != ref_fp:
            raise FeatureError(
                f"{paths[split]} and {paths[ref_split]} come from different backbones "
                f"({_fingerprint_diff(fp, ref_fp)}); extract all splits in one call "
                f"(python lpclip/feat_extractor.py --dataset {dataset} ... without --split) or with a fixed "
                "--seed for random weights"
            )
        if feats.classnames and ref_feats.classnames and feats.classnames != ref_feats.classnames:
            raise FeatureError(f"{paths[split]} and {paths[ref_split]} list different classes; re-extract both")
        if feats.x.shape[1] != ref_feats.x.shape[1]:
            raise FeatureError(f"{paths[split]} has features of width {feats.x.shape[1]}, {paths[ref_split]} of "
                               f"width {ref_feats.x.shape[1]}; {fix}")
    with_job = [s for s in SPLITS if loaded[s][0].job is not None]
    for split in with_job[1:]:
        differences = _job_diff(loaded[split][0].job or {}, loaded[with_job[0]][0].job or {})
        if differences:
            raise FeatureError(f"{paths[split]} and {paths[with_job[0]]} were extracted from different data "
                               f"({_few(differences, '; ')}); {fix}")
    # val may equal test (datasets without a val split use the test split, e.g. LAION_Beyond_GCD, spec §4.7);
    # neither may equal train
    for split in SPLITS[1:]:
        a = loaded[split][0]
        if a.x.shape == ref_feats.x.shape and np.array_equal(a.x, ref_feats.x) and np.array_equal(a.y, ref_feats.y):
            raise FeatureError(f"{paths[split]} holds the same features and labels as {paths[ref_split]} (a copy "
                               f"of the {ref_split} split?); {fix}")
    train_labels = np.unique(ref_feats.y)
    for split in SPLITS[1:]:
        unknown = np.setdiff1d(np.unique(loaded[split][0].y), train_labels)
        if len(unknown):
            raise FeatureError(f"{paths[split]} has label(s) {_few(unknown.tolist())} that no image of "
                               f"{paths[ref_split]} has (train labels: {_few(train_labels.tolist())}); the probe "
                               f"never predicts them; {fix}")
    return {s: feats for s, (feats, _) in loaded.items()}


# ---------------------------------------------------------------------- sampling
def sample_per_class(split: FeatureSplit, shots: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices of ``shots`` images per label (all of them when a class has fewer; B31).

    Labels are visited in sorted order and images are sampled without replacement; every row (view) of
    a chosen image is returned.
    """
    rows: List[np.ndarray] = []
    for label in np.unique(split.y):
        class_rows = np.flatnonzero(split.y == label)
        images = np.unique(split.image_ids[class_rows])
        k = min(int(shots), len(images))
        chosen = rng.choice(images, size=k, replace=False)
        rows.append(class_rows[np.isin(split.image_ids[class_rows], chosen)])
    return np.sort(np.concatenate(rows)) if rows else np.zeros(0, dtype=np.int64)


#: The most runs one probe makes: the torch solver holds every run's samples at once.
MAX_RUNS = 1000


def usable_shots(split: FeatureSplit, shots: Sequence[int], where: str) -> List[int]:
    """The shot counts of ``shots`` that some class of ``split`` has training images for. Above every
    class's count each class would contribute all its images (B31): the all-images run filed under K
    (train.py refuses such a NUM_SHOTS). Such counts are left out with a warning naming them (the
    default 1..16 on a small benchmark); when none is left, a :class:`FeatureError`."""
    largest = max((len(np.unique(split.image_ids[split.y == label])) for label in np.unique(split.y)), default=0)
    kept = [int(k) for k in shots if int(k) <= largest]
    dropped = [int(k) for k in shots if int(k) > largest]
    if not kept:
        raise FeatureError(f"--shots {' '.join(map(str, dropped))}: no class of {where} has that many training "
                           f"images (at most {largest}); use shot counts <= {largest}")
    if dropped:
        logger.warning("--shots %s left out: no class of %s has that many training images (at most %d)",
                       " ".join(map(str, dropped)), where, largest)
    return kept


def val_shots(shots: int) -> int:
    """The reference's val shots {1:1, 2:2, 4:4, 8:4, 16:4}."""
    return min(int(shots), VAL_MAX_SHOTS)


# ---------------------------------------------------------------------- C search
def search_c_many(
    evaluate_many: Callable[[List[Tuple[int, float]]], Sequence[float]],
    num_runs: int,
    num_step: int = 8,
    grid: Sequence[float] = COARSE_GRID,
) -> List[Tuple[float, float]]:
    """The C search of spec §9.2 for ``num_runs`` independent runs in lockstep: the rule's one owner.

    Coarse grid (first best wins), then ``num_step`` rounds of log10 bisection on [C*/10, 10·C*]: fit
    both ends, keep the better one (the left one on ties) and halve the interval towards it.
    ``evaluate_many(pairs)`` gets every ``(run, log10 C)`` a stage needs that is not fitted yet (each
    pair at most once per search) and returns their val accuracies; a batched solver fits them together.
    The ends of the interval are kept as log10 values, so the end carried into the next round is the
    same float and hits the cache. Returns ``(log10 C, val accuracy)`` of each run's kept classifier.
    """
    cache: List[Dict[float, float]] = [{} for _ in range(int(num_runs))]

    def ensure(pairs: List[Tuple[int, float]]) -> None:
        todo = list(dict.fromkeys((r, lc) for r, lc in pairs if lc not in cache[r]))
        if todo:
            for (r, lc), acc in zip(todo, evaluate_many(todo)):
                cache[r][lc] = float(acc)

    logs = [math.log10(c) for c in grid]
    runs = range(int(num_runs))
    ensure([(r, lc) for r in runs for lc in logs])
    best: List[Tuple[float, float]] = []
    bounds: List[Tuple[float, float]] = []
    for r in runs:
        accs = [cache[r][lc] for lc in logs]
        peak = logs[int(np.argmax(accs))]
        best.append((peak, cache[r][peak]))
        bounds.append((peak - 1.0, peak + 1.0))
    for _ in range(int(num_step)):
        ensure([(r, end) for r in runs for end in bounds[r]])
        for r in runs:
            left, right = bounds[r]
            acc_left, acc_right = cache[r][left], cache[r][right]
            mid = 0.5 * (left + right)
            if acc_left < acc_right:
                best[r], bounds[r] = (right, acc_right), (mid, right)
            else:
                best[r], bounds[r] = (left, acc_left), (left, mid)
    return best


def search_c(
    evaluate: Callable[[float], Tuple[float, Any]],
    num_step: int = 8,
    grid: Sequence[float] = COARSE_GRID,
) -> SearchResult:
    """:func:`search_c_many` for one run whose ``evaluate(C)`` returns ``(val_accuracy, fitted_model)``."""
    models: Dict[float, Any] = {}
    trace: List[Tuple[float, float]] = []

    def evaluate_many(pairs: List[Tuple[int, float]]) -> List[float]:
        accs = []
        for _, lc in pairs:
            acc, models[lc] = evaluate(10.0 ** lc)
            trace.append((10.0 ** lc, acc))
            accs.append(acc)
        return accs

    (best_log, best_acc), = search_c_many(evaluate_many, 1, num_step, grid)
    return SearchResult(10.0 ** best_log, float(best_acc), models[best_log], trace)


def _accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(model.predict(x) == y) * 100.0)


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float) -> Any:
    return LogisticRegression(C=c, solver="lbfgs", max_iter=1000, random_state=0).fit(x, y)


def probe_run(
    feats: Dict[str, FeatureSplit], shots: int, run: int, num_step: int
) -> Dict[str, float]:
    """One run: sample with ``default_rng(run)``, search C on few-shot val, score on the full test split."""
    train, val, test = feats["train"], feats["val"], feats["test"]
    tr, va = _samples(feats, shots, run)
    x_tr, y_tr = train.x[tr], train.y[tr]
    x_va, y_va = val.x[va], val.y[va]

    def evaluate(c: float) -> Tuple[float, Any]:
        model = fit_logistic(x_tr, y_tr, c)
        return _accuracy(model, x_va, y_va), model

    result = search_c(evaluate, num_step=num_step)
    return {
        "accuracy": _accuracy(result.model, test.x, test.y),
        "c": result.c,
        "val_accuracy": result.val_accuracy,
        "n_train": int(len(tr)),
        "n_val": int(len(va)),
    }


def _samples(feats: Dict[str, FeatureSplit], shots: int, run: int) -> Tuple[np.ndarray, np.ndarray]:
    """The run's train and val rows: ``default_rng(run)``, train first (both solvers use this)."""
    rng = np.random.default_rng(run)
    tr = sample_per_class(feats["train"], shots, rng)
    va = sample_per_class(feats["val"], val_shots(shots), rng)
    return tr, va


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class BatchedFits:
    """Every fit of one shot count's runs, for :func:`search_c_many`, through :func:`lpclip.logreg.fit`.

    Each stage's fits form one batch (``(run, log10 C)`` pairs over all runs); a new C of a run starts
    from the fitted C of that run nearest in log10 (a warm start along the C path), the coarse grid
    from zeros as scikit-learn does. Runs that drew the same training rows (every run, when a class
    has no more images than the shot count -- Mini-Beyond's 16 train images at 16 shots) share their
    fits: a fit depends on the rows and C only, so it is done once. Labels are mapped to the sorted
    classes of the train split, as scikit-learn's ``classes_``; a val/test label outside them is never
    predicted. ``dtype`` float32 is the probe's; float64 with a tight ``tol`` gives the protocol with
    every fit converged (``benchmarks.linear_probe --converged``: how far the reference's own stopping
    point is from the optimum it approximates).
    """

    def __init__(self, feats: Dict[str, FeatureSplit], samples: Sequence[Tuple[np.ndarray, np.ndarray]],
                 device: torch.device, max_iter: int = 1000, tol: float = 1e-4,
                 dtype: torch.dtype = torch.float32, stats: Optional[logreg.FitStats] = None) -> None:
        train, val = feats["train"], feats["val"]
        self.classes = np.unique(train.y)
        self.device, self.max_iter, self.tol, self.dtype = device, int(max_iter), float(tol), dtype
        self.stats = stats
        # one training set per distinct row sample; run r fits training set set_of[r]
        distinct: Dict[bytes, int] = {}
        self.set_of = [distinct.setdefault(np.asarray(tr).tobytes(), len(distinct)) for tr, _ in samples]
        first = {s: r for r, s in reversed(list(enumerate(self.set_of)))}
        self.x_tr, self.y_tr, self.w_tr = self._pad(train, [samples[first[s]][0] for s in range(len(distinct))])
        self.x_va, _, _ = self._pad(val, [va for _, va in samples])
        self.val_rows = [va for _, va in samples]
        self.val_y = val.y
        self.thetas: Dict[Tuple[int, float], torch.Tensor] = {}

    def _labels(self, y: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.classes, y).clip(0, len(self.classes) - 1)
        return np.where(self.classes[pos] == y, pos, -1)

    def _pad(self, split: FeatureSplit, rows: Sequence[np.ndarray]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = max(len(r) for r in rows)
        x = np.zeros((len(rows), n, split.x.shape[1]), dtype=np.float32)
        y = np.zeros((len(rows), n), dtype=np.int64)
        w = np.zeros((len(rows), n), dtype=np.float32)
        for i, r in enumerate(rows):
            x[i, :len(r)], w[i, :len(r)] = split.x[r], 1.0
            y[i, :len(r)] = self._labels(split.y[r]).clip(min=0)
        return (torch.from_numpy(x).to(self.device, self.dtype), torch.from_numpy(y).to(self.device),
                torch.from_numpy(w).to(self.device, self.dtype))

    def _start(self, train_set: int, log_c: float) -> Optional[torch.Tensor]:
        fitted = [lc for (s, lc) in self.thetas if s == train_set]
        if not fitted:
            return None
        return self.thetas[(train_set, min(fitted, key=lambda lc: (abs(lc - log_c), lc)))]

    def theta(self, run: int, log_c: float) -> torch.Tensor:
        """The fitted classifier of ``run`` at ``log10 C``."""
        return self.thetas[(self.set_of[run], log_c)]

    def predict(self, theta: torch.Tensor, x: np.ndarray) -> np.ndarray:
        """Labels (in the split's label space) of ``theta [D+1, K]`` on rows ``x [N, D]``."""
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device, self.dtype)
        return self.classes[logreg.predict(xt.unsqueeze(0), theta.unsqueeze(0))[0].cpu().numpy()]

    def evaluate_many(self, pairs: List[Tuple[int, float]]) -> List[float]:
        todo = list(dict.fromkeys((self.set_of[r], lc) for r, lc in pairs
                                  if (self.set_of[r], lc) not in self.thetas))
        if todo:
            idx = torch.tensor([s for s, _ in todo], device=self.device)
            c = torch.tensor([10.0 ** lc for _, lc in todo], dtype=self.dtype, device=self.device)
            starts = [self._start(s, lc) for s, lc in todo]
            init = None
            if any(st is not None for st in starts):
                zero = torch.zeros(self.x_tr.shape[-1] + 1, len(self.classes), device=self.device, dtype=self.dtype)
                init = torch.stack([zero if st is None else st for st in starts])
            problems = logreg.Problems(self.x_tr[idx], self.y_tr[idx], self.w_tr[idx], len(self.classes))
            theta, _ = logreg.fit(problems, c, init, max_iter=self.max_iter, tol=self.tol, stats=self.stats)
            for i, key in enumerate(todo):
                self.thetas[key] = theta[i]
        runs = [r for r, _ in pairs]
        x_va = self.x_va[torch.tensor(runs, device=self.device)]
        stacked = torch.stack([self.theta(r, lc) for r, lc in pairs])
        preds = self.classes[logreg.predict(x_va, stacked).cpu().numpy()]
        accs = []
        for i, r in enumerate(runs):
            va = self.val_rows[r]
            accs.append(float(np.mean(preds[i, :len(va)] == self.val_y[va]) * 100.0))
        return accs


def probe_runs_torch(feats: Dict[str, FeatureSplit], shots: int, seeds: Sequence[int], num_step: int,
                     device: Optional[torch.device] = None, **fit_options: Any) -> List[Dict[str, float]]:
    """:func:`probe_run` for all ``seeds`` at once with the batched solver (same samples, same search);
    ``fit_options`` (``max_iter``, ``tol``, ``dtype``, ``stats``) go to :class:`BatchedFits`."""
    samples = [_samples(feats, shots, r) for r in seeds]
    fits = BatchedFits(feats, samples, device or default_device(), **fit_options)
    best = search_c_many(fits.evaluate_many, len(seeds), num_step)
    test = feats["test"]
    out = []
    for i, (log_c, val_acc) in enumerate(best):
        pred = fits.predict(fits.theta(i, log_c), test.x)
        out.append({"accuracy": float(np.mean(pred == test.y) * 100.0), "c": 10.0 ** log_c,
                    "val_accuracy": float(val_acc), "n_train": int(len(samples[i][0])),
                    "n_val": int(len(samples[i][1]))})
    return out


def probe_runs(feats: Dict[str, FeatureSplit], shots: int, seeds: Sequence[int], num_step: int,
               solver: str = "torch", device: Optional[torch.device] = None) -> List[Dict[str, float]]:
    """Every run of one shot count with ``solver`` (``torch``: batched; ``sklearn``: the reference)."""
    if solver == "sklearn":
        return [probe_run(feats, shots, r, num_step) for r in seeds]
    if solver == "torch":
        return probe_runs_torch(feats, shots, seeds, num_step, device)
    raise ValueError(f"unknown solver {solver!r}; choose from {SOLVERS}")


def _nan_to_none(value: float) -> Optional[float]:
    """JSON has no NaN: an undefined spread (one run) is written as null."""
    return None if math.isnan(value) else float(value)


def linear_probe(
    feats: Dict[str, FeatureSplit], shots: Sequence[int], num_run: int, num_step: int,
    solver: str = "torch", device: Optional[torch.device] = None,
) -> Dict[str, Dict[str, Any]]:
    """Per K: mean / sample std (ddof 1, :func:`dassl.results.sample_std`; None for one run) / per-run
    accuracies and the chosen C of each run."""
    out: Dict[str, Dict[str, Any]] = {}
    seeds = list(range(1, int(num_run) + 1))
    for k in shots:
        runs = probe_runs(feats, int(k), seeds, num_step, solver, device)
        accs = np.array([r["accuracy"] for r in runs])
        std = _nan_to_none(results_contract.sample_std(accs))
        out[str(int(k))] = {
            "shots": int(k),
            "accuracy_mean": float(accs.mean()),
            "accuracy_std": std,
            "accuracies": [float(a) for a in accs],
            "c": [float(r["c"]) for r in runs],
            "val_accuracies": [float(r["val_accuracy"]) for r in runs],
            "n_train": [int(r["n_train"]) for r in runs],
            "seeds": seeds,
        }
        logger.info("K=%d: accuracy %.2f%% ± %s (sample std) over %d runs (C median %.3g)", int(k), accs.mean(),
                    "-" if std is None else f"{std:.2f}", len(runs), float(np.median([r["c"] for r in runs])))
    return out


# ---------------------------------------------------------------------- output
def csv_rows(results: Dict[str, Dict[str, Any]], dataset: str, sub_classes: str, features: str,
             num_step: int) -> List[Dict[str, Any]]:
    rows = []
    for res in results.values():
        accs = res["accuracies"]
        rows.append({
            "method": "Linear probe",
            "dataset": dataset,
            "sub_classes": sub_classes,
            "shots": res["shots"],
            "features": features,
            "num_run": len(accs),
            "num_step": int(num_step),
            "seeds": " ".join(str(s) for s in res["seeds"]),
            "accuracy_mean": f"{res['accuracy_mean']:.4f}",
            "accuracy_std": "" if res["accuracy_std"] is None else f"{res['accuracy_std']:.4f}",
            "accuracy_min": f"{min(accs):.4f}",
            "accuracy_max": f"{max(accs):.4f}",
            "c_median": f"{float(np.median(res['c'])):.6g}",
        })
    return rows


def probe_fingerprint(feature_dir: str, dataset: str, sub_classes: str, shots: Sequence[int], num_run: int,
                      num_step: int, normalized: bool, solver: str = "torch") -> Dict[str, Any]:
    """The probe's run fingerprint (dassl.results): its settings (the solver too: the two solvers agree
    to a few tenths of a point, not bit for bit) plus the content of the feature files it reads (which
    embody backbone, weights, transform and split). ``scripts.sweep`` compares it with a finished
    probe's results.json before skipping it."""
    config = {
        "method": "linear_probe", "dataset": dataset, "sub_classes": sub_classes,
        "shots": [int(k) for k in shots], "num_run": int(num_run), "num_step": int(num_step),
        "features": "normalized" if normalized else "raw", "coarse_grid": list(COARSE_GRID), "solver": solver,
    }
    paths = check_features(feature_dir, dataset, sub_classes)
    data = {split: content_identity(path)["sha256"] for split, path in paths.items()}
    return results_contract.fingerprint(config, trainer="linear_probe", data=data)


def check_output_dir(output_dir: str, fp: Dict[str, Any], overwrite: bool = False) -> None:
    """Before any fit: ``output_dir`` must be writable and must not hold another probe's results: a
    rerun with other settings (shots, runs, solver, features ...) silently replaced results.json and
    the CSV before. Only a results.json with this very fingerprint is recomputed in place; any other one
    (another configuration's, one without a usable fingerprint, an unreadable one), or a CSV without a
    results.json beside it, is refused with an :class:`OutputConflictError` naming it, unless
    ``overwrite``. A directory where a file goes is refused even then. The line stays short: a
    train.py run's results are named as such (with its trainer) instead of listing every config key it
    does not share with the probe, and another probe configuration's differences are cut to the first
    few plus "and N more"."""
    check_writable_dir(output_dir, "probe output directory", create=False)
    for name in (RESULTS_JSON, RESULTS_CSV):
        path = osp.join(output_dir, name)
        if osp.lexists(path) and not osp.isfile(path):
            raise OutputConflictError(f"{path} is not a regular file (a directory or a dangling link is in the "
                                      "way); move it away or use another --output-dir")
    state = results_contract.find_finished(output_dir, fp)
    if state.state == "match":
        return
    if state.state == "missing":
        csv_path = osp.join(output_dir, RESULTS_CSV)
        if not osp.isfile(csv_path):
            return
        what = f"a {RESULTS_CSV} without the {RESULTS_JSON} this probe writes first (not its output)"
    elif state.state == "mismatch" and state.results is not None and not state.results.legacy \
            and state.results.kind == "run":
        # a train.py run: its config shares no key with the probe's, so the differences would list
        # every config key "-> (absent)" -- thousands of characters that say nothing useful
        trainer = state.results.get("trainer") or (state.results.fingerprint or {}).get("trainer") or "unknown"
        what = f"the results of a train.py run (trainer {trainer}), not of a linear probe"
    elif state.state == "mismatch" and state.results is not None and state.results.fingerprint:
        what = "the results of another probe configuration (differs in: " + _few(state.differences, "; ") + ")"
    elif state.state == "mismatch":
        what = f"a {RESULTS_JSON} without a fingerprint (written by other code)"
    else:
        what = f"a {RESULTS_JSON} that cannot be read ({state.differences[0]})"
    if not overwrite:
        raise OutputConflictError(f'--output-dir "{output_dir}" holds {what}; this probe would overwrite it. Use '
                                  "another --output-dir, or --overwrite to replace it")
    logger.warning("overwrite: %s held %s", output_dir, what)


def write_results(output_dir: str, payload: Dict[str, Any], rows: List[Dict[str, Any]],
                  fp: Dict[str, Any]) -> Tuple[str, str]:
    os.makedirs(output_dir, exist_ok=True)
    csv_path = osp.join(output_dir, RESULTS_CSV)
    json_path = results_contract.write_results(output_dir, payload, fp, kind="linear_probe")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(csv_path, lambda f: f.write(buf.getvalue().encode("utf-8")), mode="wb")
    return json_path, csv_path


# ---------------------------------------------------------------------- CLI
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = ArgumentParser(prog="python lpclip/linear_probe.py", description=__doc__.split("\n")[0])
    p.add_argument("--feature-dir", "--feature_dir", dest="feature_dir", default="clip_feat",
                   help="the --output-dir given to lpclip.feat_extractor")
    p.add_argument("--dataset", required=True, help="DATASET.NAME, e.g. Animals92_42")
    p.add_argument("--sub-classes", dest="sub_classes", default="OOP", help="OOP | IP | All")
    p.add_argument("--shots", type=int, nargs="+", default=list(DEFAULT_SHOTS))
    p.add_argument("--num-run", "--num_run", dest="num_run", type=int, default=10)
    p.add_argument("--num-step", "--num_step", dest="num_step", type=int, default=8)
    p.add_argument("--output-dir", dest="output_dir", default="",
                   help="default: <feature-dir>/<dataset>/<sub-classes>/linear_probe")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--raw", dest="normalized", action="store_false",
                       help="unnormalised projected features (default; what the reference probed)")
    group.add_argument("--normalized", dest="normalized", action="store_true",
                       help="L2-normalised features")
    p.set_defaults(normalized=False)
    p.add_argument("--solver", choices=SOLVERS, default="torch",
                   help="torch: batched L-BFGS, all runs and C values of a stage at once (default); "
                        "sklearn: the reference's one-fit-at-a-time LogisticRegression")
    p.add_argument("--device", default="", help="torch solver's device (default: the GPU when available)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of another probe configuration in --output-dir")
    args = p.parse_args(argv)
    if not 1 <= args.num_run <= MAX_RUNS:  # 10**8 runs grew past 4.5 GB before any fit (every run is a batch row)
        p.error(f"--num-run {args.num_run}: must be in 1..{MAX_RUNS} (the reference's protocol uses 10)")
    if args.num_step < 0:
        p.error(f"--num-step {args.num_step}: must be >= 0")
    if any(k < 1 for k in args.shots):
        p.error(f"--shots {' '.join(map(str, args.shots))}: every shot count must be >= 1")
    args.shots = sorted(set(args.shots))  # one configuration whatever the order (--shots 2 1 was another)
    for flag, value in (("--dataset", args.dataset), ("--sub-classes", args.sub_classes)):
        if not value or value in (".", "..") or "/" in value or os.sep in value:
            p.error(f"{flag} {value!r}: give a name (a folder of the feature directory), not a path")
    return args


def run(args: argparse.Namespace) -> Tuple[str, str, Dict[str, Dict[str, Any]]]:
    """The probe of :func:`parse_args`'s ``args``: features checked, the output folder checked (before any
    fit), every shot count probed, results written. Returns ``(results.json, results.csv, per-K results)``;
    a user's mistake raises :class:`FeatureError` (features), :class:`OutputConflictError` (another
    probe's results in the way) or ``WriteError`` (folder) -- what :func:`main` prints as one ``error:``
    line and ``scripts.grid`` records for its probe cell (``--device`` is :func:`main`'s to check)."""
    device = requested_device(args.device)
    feats = load_features(args.feature_dir, args.dataset, args.sub_classes, args.normalized)
    shots = usable_shots(feats["train"], args.shots, f"{args.dataset}/{args.sub_classes}")
    features = "normalized" if args.normalized else "raw"
    output_dir = args.output_dir or osp.join(args.feature_dir, args.dataset, args.sub_classes, "linear_probe")
    fp = probe_fingerprint(args.feature_dir, args.dataset, args.sub_classes, args.shots, args.num_run,
                           args.num_step, args.normalized, args.solver)
    overwrite = results_contract.overwrite_requested(args.overwrite)
    check_output_dir(output_dir, fp, overwrite)
    existed = osp.isdir(output_dir)
    check_writable_dir(output_dir, "probe output directory")
    with hold_output_dir(output_dir):  # no second probe or run writes this folder meanwhile
        if (existed or os.listdir(output_dir)) and not overwrite:  # again under the lock: results another
            # process finished meanwhile stay
            check_output_dir(output_dir, fp)
        return _probe(args, feats, shots, features, output_dir, fp, device)


def _probe(args: argparse.Namespace, feats: Dict[str, FeatureSplit], shots: List[int], features: str, output_dir: str,
           fp: Dict[str, Any], device: torch.device) -> Tuple[str, str, Dict[str, Dict[str, Any]]]:
    """The fits and the results files of :func:`run`, in its checked and held output folder."""
    logger.info("%s/%s: train %d, val %d, test %d rows, D=%d, %s features", args.dataset, args.sub_classes,
                len(feats["train"].y), len(feats["val"].y), len(feats["test"].y), feats["train"].x.shape[1],
                features)
    results = linear_probe(feats, shots, args.num_run, args.num_step, args.solver, device)
    payload = {
        "method": "Linear probe",
        "dataset": args.dataset,
        "sub_classes": args.sub_classes,
        "feature_dir": args.feature_dir,
        "features": features,
        "num_run": args.num_run,
        "num_step": args.num_step,
        "seeds": list(range(1, args.num_run + 1)),
        "coarse_grid": list(COARSE_GRID),
        "solver": args.solver,
        "std": results_contract.STD_CONVENTION.replace("over seeds", "over runs"),
        "shots": results,
    }
    json_path, csv_path = write_results(output_dir, payload,
                                        csv_rows(results, args.dataset, args.sub_classes, features, args.num_step), fp)
    return json_path, csv_path, results


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        requested_device(args.device)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        json_path, csv_path, results = run(args)
    except (FeatureError, OutputConflictError, WriteError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"accuracy (%): mean ± {results_contract.STD_CONVENTION.replace('over seeds', f'over {args.num_run} runs')}")
    for res in results.values():
        spread = "-" if res["accuracy_std"] is None else f"{res['accuracy_std']:.2f}"
        print(f"K={res['shots']:>2}: {res['accuracy_mean']:.2f} ± {spread}")
    print(f"wrote {json_path} and {csv_path}")
    return 0


if __name__ == "__main__":
    exit_with(main)
