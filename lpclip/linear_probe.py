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

Differences from the reference, all deliberate (B31):

* the layout read is exactly the one the extractor writes (with the SUB_CLASSES level), and missing
  files fail immediately with a message listing them (the reference polled forever);
* classes with fewer images than K contribute all their images (the reference crashed);
* each run draws from its own ``np.random.default_rng(run)`` instead of re-seeding the global RNG;
  with augmented train views (``--views``) K *images* are sampled and all their views are used;
* fits are cached per C within a search (lbfgs is deterministic, so results are unchanged);
* results go to ``results.json`` (written through the results contract, ``dassl.results``, kind
  ``linear_probe``, fingerprinted by the probe's settings and the feature files' content) and a CSV
  whose columns say what they hold (``accuracy_mean``, ``accuracy_std``: the project's one spread
  convention, the sample std with ddof 1) with the real SUB_CLASSES and seeds (the reference wrote
  the std into ``error_rate`` and hard-coded SUB_CLASSES "OOP" and SEED 4).
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import os
import os.path as osp
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from dassl import results as results_contract
from dassl.utils import atomic_write
from dassl.utils.identity import content_identity

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
COARSE_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)
DEFAULT_SHOTS = (1, 2, 4, 8, 16)
VAL_MAX_SHOTS = 4
RESULTS_JSON = results_contract.RESULTS_FILE
RESULTS_CSV = "linear_probe.csv"
CSV_COLUMNS = (
    "method", "dataset", "sub_classes", "shots", "features", "num_run", "num_step", "seeds",
    "accuracy_mean", "accuracy_std", "accuracy_min", "accuracy_max", "c_median",
)


class MissingFeaturesError(FileNotFoundError):
    """Some of the feature files a probe needs do not exist."""


@dataclass
class FeatureSplit:
    """One split's features: ``x [N, D]``, ``y [N]``, ``image_ids [N]`` (views of one image share an id)."""

    x: np.ndarray
    y: np.ndarray
    image_ids: np.ndarray
    classnames: List[str] = field(default_factory=list)


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
    return {s: osp.join(feature_dir, dataset, sub_classes, f"{s}.npz") for s in SPLITS}


def check_features(feature_dir: str, dataset: str, sub_classes: str) -> Dict[str, str]:
    """Return the split paths, or raise listing every missing file (never wait for them)."""
    paths = feature_paths(feature_dir, dataset, sub_classes)
    missing = [p for p in paths.values() if not osp.isfile(p)]
    if missing:
        listing = "\n  ".join(missing)
        raise MissingFeaturesError(
            f"Missing feature files for {dataset}/{sub_classes}:\n  {listing}\n"
            "Write them with: python -m lpclip.feat_extractor --root DATA --output-dir "
            f"{feature_dir} --config-file CFG --dataset-config-file configs/datasets/{dataset}.yaml "
            f"--split SPLIT DATASET.SUB_CLASSES {sub_classes}"
        )
    return paths


def load_split(path: str, normalized: bool) -> FeatureSplit:
    with np.load(path, allow_pickle=False) as data:
        key = "features" if normalized else "features_raw"
        if key not in data.files:
            raise KeyError(f"{path} has no array {key!r} (has {sorted(data.files)}); re-run the extractor")
        x = np.asarray(data[key], dtype=np.float32)
        y = np.asarray(data["labels"], dtype=np.int64)
        ids = np.asarray(data["image_ids"], dtype=np.int64) if "image_ids" in data.files else np.arange(len(y))
        names = [str(n) for n in data["classnames"]] if "classnames" in data.files else []
    if x.ndim != 2 or len(x) != len(y) or len(ids) != len(y):
        raise ValueError(f"{path}: inconsistent shapes features {x.shape}, labels {y.shape}, ids {ids.shape}")
    return FeatureSplit(x, y, ids, names)


def load_features(feature_dir: str, dataset: str, sub_classes: str, normalized: bool) -> Dict[str, FeatureSplit]:
    paths = check_features(feature_dir, dataset, sub_classes)
    return {s: load_split(p, normalized) for s, p in paths.items()}


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


def val_shots(shots: int) -> int:
    """The reference's val shots {1:1, 2:2, 4:4, 8:4, 16:4}."""
    return min(int(shots), VAL_MAX_SHOTS)


# ---------------------------------------------------------------------- C search
def search_c(
    evaluate: Callable[[float], Tuple[float, Any]],
    num_step: int = 8,
    grid: Sequence[float] = COARSE_GRID,
) -> SearchResult:
    """Coarse grid, then ``num_step`` rounds of log10 bisection (ties → left), as spec §9.2.

    ``evaluate(C)`` returns ``(val_accuracy, fitted_model)``. Each C is evaluated at most once; the
    ends of the interval are kept as log10 values so the end carried into the next round is the same
    float and hits the cache.
    """
    cache: Dict[float, Tuple[float, Any]] = {}
    trace: List[Tuple[float, float]] = []

    def run(log_c: float) -> Tuple[float, Any]:
        if log_c not in cache:
            cache[log_c] = evaluate(10.0 ** log_c)
            trace.append((10.0 ** log_c, cache[log_c][0]))
        return cache[log_c]

    logs = [math.log10(c) for c in grid]
    accs = [run(lc)[0] for lc in logs]
    peak = logs[int(np.argmax(accs))]
    best_log = peak
    best_acc, best_model = cache[peak]
    left, right = peak - 1.0, peak + 1.0
    for _ in range(int(num_step)):
        acc_left, model_left = run(left)
        acc_right, model_right = run(right)
        mid = 0.5 * (left + right)
        if acc_left < acc_right:
            best_log, best_acc, best_model = right, acc_right, model_right
            left = mid
        else:
            best_log, best_acc, best_model = left, acc_left, model_left
            right = mid
    return SearchResult(10.0 ** best_log, float(best_acc), best_model, trace)


def _accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(model.predict(x) == y) * 100.0)


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, solver="lbfgs", max_iter=1000, random_state=0).fit(x, y)


def probe_run(
    feats: Dict[str, FeatureSplit], shots: int, run: int, num_step: int
) -> Dict[str, float]:
    """One run: sample with ``default_rng(run)``, search C on few-shot val, score on the full test split."""
    rng = np.random.default_rng(run)
    train, val, test = feats["train"], feats["val"], feats["test"]
    tr = sample_per_class(train, shots, rng)
    va = sample_per_class(val, val_shots(shots), rng)
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


def _nan_to_none(value: float) -> Optional[float]:
    """JSON has no NaN: an undefined spread (one run) is written as null."""
    return None if math.isnan(value) else float(value)


def linear_probe(
    feats: Dict[str, FeatureSplit], shots: Sequence[int], num_run: int, num_step: int
) -> Dict[str, Dict[str, Any]]:
    """Per K: mean / sample std (ddof 1, :func:`dassl.results.sample_std`) / per-run accuracies and
    the chosen C of each run."""
    out: Dict[str, Dict[str, Any]] = {}
    seeds = list(range(1, int(num_run) + 1))
    for k in shots:
        runs = [probe_run(feats, int(k), r, num_step) for r in seeds]
        accs = np.array([r["accuracy"] for r in runs])
        out[str(int(k))] = {
            "shots": int(k),
            "accuracy_mean": float(accs.mean()),
            "accuracy_std": _nan_to_none(results_contract.sample_std(accs)),
            "accuracies": [float(a) for a in accs],
            "c": [float(r["c"]) for r in runs],
            "val_accuracies": [float(r["val_accuracy"]) for r in runs],
            "n_train": [int(r["n_train"]) for r in runs],
            "seeds": seeds,
        }
        logger.info("K=%d: accuracy %.2f%% ± %.2f (sample std) over %d runs (C median %.3g)", int(k),
                    accs.mean(), results_contract.sample_std(accs), len(runs),
                    float(np.median([r["c"] for r in runs])))
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
                      num_step: int, normalized: bool) -> Dict[str, Any]:
    """The probe's run fingerprint (dassl.results): its settings plus the content of the feature files
    it reads (which embody backbone, weights, transform and split). ``scripts.sweep`` compares it with
    a finished probe's results.json before skipping it."""
    config = {
        "method": "linear_probe", "dataset": dataset, "sub_classes": sub_classes,
        "shots": [int(k) for k in shots], "num_run": int(num_run), "num_step": int(num_step),
        "features": "normalized" if normalized else "raw", "coarse_grid": list(COARSE_GRID),
    }
    paths = check_features(feature_dir, dataset, sub_classes)
    data = {split: content_identity(path)["sha256"] for split, path in paths.items()}
    return results_contract.fingerprint(config, trainer="linear_probe", data=data)


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
    p = argparse.ArgumentParser(prog="python -m lpclip.linear_probe", description=__doc__.split("\n")[0])
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
    args = p.parse_args(argv)
    if args.num_run < 1 or args.num_step < 0 or any(k < 1 for k in args.shots):
        p.error("--num-run must be >= 1, --num-step >= 0 and every shot count >= 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        feats = load_features(args.feature_dir, args.dataset, args.sub_classes, args.normalized)
    except MissingFeaturesError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    features = "normalized" if args.normalized else "raw"
    logger.info("%s/%s: train %d, val %d, test %d rows, D=%d, %s features", args.dataset, args.sub_classes,
                len(feats["train"].y), len(feats["val"].y), len(feats["test"].y), feats["train"].x.shape[1],
                features)
    results = linear_probe(feats, args.shots, args.num_run, args.num_step)
    output_dir = args.output_dir or osp.join(args.feature_dir, args.dataset, args.sub_classes, "linear_probe")
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
        "shots": results,
    }
    fp = probe_fingerprint(args.feature_dir, args.dataset, args.sub_classes, args.shots, args.num_run,
                           args.num_step, args.normalized)
    json_path, csv_path = write_results(output_dir, payload,
                                        csv_rows(results, args.dataset, args.sub_classes, features, args.num_step), fp)
    print(f"accuracy: mean ± {results_contract.STD_CONVENTION.replace('over seeds', 'over runs')}")
    for res in results.values():
        spread = "-" if res["accuracy_std"] is None else f"{res['accuracy_std']:.2f}"
        print(f"K={res['shots']:>2}: {res['accuracy_mean']:.2f} ± {spread}")
    print(f"wrote {json_path} and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
