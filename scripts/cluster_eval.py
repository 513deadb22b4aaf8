"""Finding 1 of the paper: CLIP image features cluster OOP concepts worse than IP concepts.

    python -m scripts.cluster_eval --root DATA [--domains Animals Food ...] [--subsets OOP IP]
        [--splits test] [--config FILE | --backbone NAME --weights W] [--seed 0] --out results/cluster_eval

For every domain and subset: L2-normalised frozen image features of the chosen splits, k-means with
k = the subset's number of classes, and the clustering accuracy (the best one-to-one cluster → class
map, the same Hungarian matching as the ``ClusteringAccuracy`` evaluator). Writes ``<out>.json``
(one row per domain × subset) and ``<out>.md`` (domains × subsets, with the average).
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
import json
import logging
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from sklearn.cluster import KMeans

import train
from clip import weights_identity
from dassl import results
from dassl.cli import ArgumentParser
from dassl.ctrl_c import exit_with
from dassl.data.datasets import data_identity
from dassl.evaluation.clustering import clustering_accuracy
from dassl.results import jsonable
from dassl.utils import atomic_write_text, check_outside, set_random_seed
from datasets.laion_beyond import subset_dirs_under
from scripts.domains import LAION_BEYOND_DOMAINS, DomainError, count_classes, resolve_domains, short_name
from scripts.features import add_backbone_args, cfg_from_args, image_features, load_backbone
from scripts.parse_test_res import OutputError, check_output_target, json_recogniser, target_label

__all__ = ["kmeans_labels", "kmeans_accuracy", "evaluate", "render_markdown", "output_paths", "check_outputs",
           "run_identity", "check_same_run", "provenance", "write_outputs", "main"]

logger = logging.getLogger(__name__)

#: The first line of ``<out>.md`` (how a rerun recognises its own table).
TABLE_NOTE = "k-means clustering accuracy (%) of frozen image features, Hungarian-matched; k = classes."


def kmeans_labels(features: np.ndarray, k: int, seed: int = 0, n_init: int = 10) -> np.ndarray:
    """Seeded k-means cluster index per row (also used by ``tools.cluster_names``)."""
    if features.shape[0] < k:
        raise ValueError(f"cannot make {k} clusters from {features.shape[0]} images")
    return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(features).astype(np.int64)


def kmeans_accuracy(
    features: np.ndarray, labels: Sequence[int], k: Optional[int] = None, seed: int = 0, n_init: int = 10
) -> float:
    """Clustering accuracy (%) of seeded k-means on ``features`` (k = number of distinct labels by default)."""
    labels = np.asarray(labels)
    k = int(k) if k else len(np.unique(labels))
    pred = kmeans_labels(np.asarray(features, dtype=np.float32), k, seed, n_init)
    return clustering_accuracy(labels.tolist(), pred.tolist())


def evaluate(
    args: argparse.Namespace, domains: Sequence[str], subsets: Sequence[str], splits: Sequence[str]
) -> List[Dict[str, Any]]:
    """One row per (domain, subset); the backbone is loaded once."""
    rows: List[Dict[str, Any]] = []
    loaded = None
    for dataset in domains:
        cfg = cfg_from_args(args, dataset)
        if loaded is None:
            loaded = load_backbone(cfg, torch.device(args.device) if args.device else None, args.precision)
        for sub in subsets:
            fs = image_features(cfg, loaded, sub, splits, batch_size=args.batch_size)
            acc = kmeans_accuracy(fs.features, fs.labels, len(fs.classnames), args.seed, args.n_init)
            rows.append({
                "dataset": dataset, "subset": sub, "splits": list(fs.splits), "num_classes": len(fs.classnames),
                "num_images": len(fs), "clustering_accuracy": acc,
                "backbone": str(loaded.name), "weights": str(loaded.weights), "seed": args.seed,
            })
            logger.info("%s %s: k-means clustering accuracy %.2f%% (%d classes, %d images)",
                        dataset, sub, acc, len(fs.classnames), len(fs))
    return rows


def render_markdown(rows: Sequence[Dict[str, Any]]) -> str:
    """Domains as rows, subsets as columns, plus the average over domains that have every subset."""
    subsets: List[str] = []
    datasets: List[str] = []
    for r in rows:
        if r["subset"] not in subsets:
            subsets.append(r["subset"])
        if r["dataset"] not in datasets:
            datasets.append(r["dataset"])
    value = {(r["dataset"], r["subset"]): r for r in rows}
    header = ["Domain"] + [f"{s} (k)" for s in subsets]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for d in datasets:
        cells = [short_name(d)]
        for s in subsets:
            r = value.get((d, s))
            cells.append("–" if r is None else f"{r['clustering_accuracy']:.2f} ({r['num_classes']})")
        lines.append("| " + " | ".join(cells) + " |")
    complete = [d for d in datasets if all((d, s) in value for s in subsets)]
    if len(complete) > 1:
        means = [float(np.mean([value[(d, s)]["clustering_accuracy"] for d in complete])) for s in subsets]
        lines.append("| Avg | " + " | ".join(f"{m:.2f}" for m in means) + " |")
    return TABLE_NOTE + "\n\n" + "\n".join(lines) + "\n"


def output_paths(out: str) -> Tuple[str, str]:
    """``<out>.json`` and ``<out>.md`` (a ``.json`` / ``.md`` extension on ``out`` is dropped)."""
    base = Path(out)
    if base.suffix.lower() in (".json", ".md"):
        base = base.with_suffix("")
    return f"{base}.json", f"{base}.md"


#: A ``<out>.json`` of this script: an object whose only key is ``rows``, a list (older versions), or whose
#: keys are ``rows`` and ``run`` (the configuration that computed them).
_written_old = json_recogniser(("rows",), "rows", exact=True)
_written_new = json_recogniser(("rows", "run"), "rows", exact=True)


def written_rows(path: Path) -> bool:
    return _written_old(path) or _written_new(path)


def run_identity(args: argparse.Namespace, domains: Sequence[str]) -> Dict[str, Any]:
    """What computed a table: the data (each domain's split files, by content: the same benchmark in
    another folder or clone is the same data), the backbone's weights (by content), the input transform
    and every setting of the clustering. Two tables of one ``--out`` must agree on it, or the second
    would replace the first without a word (another seed, split or subset list, silently)."""
    cfgs = {dataset: cfg_from_args(args, dataset) for dataset in domains}
    cfg = cfgs[domains[0]]
    return {
        "data": {dataset: data_identity(c) for dataset, c in cfgs.items()},
        "domains": list(domains),
        "subsets": list(args.subsets),
        "splits": list(dict.fromkeys(args.splits)),
        "seed": args.seed,
        "n_init": args.n_init,
        "backbone": str(cfg.MODEL.BACKBONE.NAME),
        "weights": jsonable(weights_identity(cfg)),
        "precision": args.precision,
        "input": jsonable({k: v for k, v in cfg.INPUT.items() if k != "SIZE"}),  # the size follows the backbone
        "opts": list(getattr(args, "opts", None) or []),
    }


def check_same_run(out: str, run: Dict[str, Any], overwrite: bool) -> None:
    """Refuse (:class:`OutputError`, one line) to replace a table of another configuration unless
    ``overwrite``; the same configuration recomputes in place."""
    json_path = output_paths(out)[0]
    if overwrite or not Path(json_path).is_file():
        return
    with open(json_path, encoding="utf-8") as f:
        former = json.load(f).get("run")
    if former == run:
        return
    keys = ["run (a table of an older version, which recorded none)"] if former is None else [
        k for k in sorted(set(run) | set(former)) if run.get(k) != former.get(k)]
    raise OutputError(f"{json_path} holds the clustering table of another configuration (differs in "
                      f"{', '.join(keys)}); give another --out, or pass --overwrite to replace it")


def written_table(path: Path) -> bool:
    """A ``<out>.md`` of this script: it opens with the table's note."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(len(TABLE_NOTE)) == TABLE_NOTE
    except (OSError, ValueError):
        return False


def check_outputs(out: str) -> None:
    """Refuse (:class:`OutputError` / :class:`WriteError`, one line) an ``out`` whose ``.json`` or ``.md``
    could replace anything but this script's own earlier output (``parse_test_res.check_output_target``):
    checked before any model is loaded, as the features take minutes."""
    for path, ours in zip(output_paths(out), (written_rows, written_table)):
        check_output_target(path, target_label(path, "--out", out), "clustering table", ours)


def provenance(run: Dict[str, Any]) -> str:
    """The line under the table's note naming what computed it (the JSON holds all of :func:`run_identity`)."""
    weights = run["weights"]
    digest = weights.get("sha256") or weights.get("tag") or weights.get("kind", "")
    return (f"Backbone {run['backbone']} (weights {str(digest)[:16]}), seed {run['seed']}, k-means restarts "
            f"{run['n_init']}, splits {'+'.join(run['splits'])}; the JSON records the rest.")


def write_outputs(rows: Sequence[Dict[str, Any]], out: str, run: Optional[Dict[str, Any]] = None) -> List[str]:
    """``<out>.json`` (the rows, and ``run``: what computed them) and ``<out>.md``, each written
    atomically; returns both paths."""
    json_path, md_path = output_paths(out)
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
    payload: Dict[str, Any] = {"rows": clean}
    table = render_markdown(rows)
    if run is not None:
        payload["run"] = run
        note, rest = table.split("\n\n", 1)
        table = f"{note}\n{provenance(run)}\n\n{rest}"
    atomic_write_text(json_path, json.dumps(payload, indent=1))
    atomic_write_text(md_path, table)
    return [json_path, md_path]


def main(argv: Optional[List[str]] = None) -> int:
    p = ArgumentParser(prog="python -m scripts.cluster_eval", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="dataset root")
    p.add_argument("--domains", nargs="+", default=list(LAION_BEYOND_DOMAINS), help="registered or short names")
    p.add_argument("--subsets", nargs="+", default=["OOP", "IP"], choices=["OOP", "IP"])
    p.add_argument("--splits", nargs="+", default=["test"], choices=["train", "val", "test"])
    p.add_argument("--n-init", type=int, default=10, help="k-means restarts")
    p.add_argument("--out", default="results/cluster_eval", help="output path without extension")
    p.add_argument("--overwrite", action="store_true", help="replace a table of another configuration at --out")
    add_backbone_args(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides, as for train.py")
    args = p.parse_args(argv)
    if args.n_init < 1:  # KMeans refused it with a traceback, after the features were computed
        p.error(f"argument --n-init: k-means needs at least one restart, got {args.n_init}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args.subsets = list(dict.fromkeys(args.subsets))  # a subset named twice was encoded and tabulated twice
    try:
        domains = resolve_domains(args.domains)
        check_outputs(args.out)
        for path in output_paths(args.out):  # never among any domain's images and split files
            check_outside(path, subset_dirs_under(args.root), "--out")
        for dataset in domains:  # the data before the backbone: a wrong --root is not worth a model load
            for sub in args.subsets:
                count_classes(args.root, dataset, sub)
        run = run_identity(args, domains)
        check_same_run(args.out, run, results.overwrite_requested(args.overwrite))
        set_random_seed(args.seed)
        rows = evaluate(args, domains, args.subsets, args.splits)
        paths = write_outputs(rows, args.out, run)
    except (DomainError, OutputError, *train.user_errors()) as err:  # data, weights, output: one line
        print(f"error: {train.error_message(err)}", file=sys.stderr)
        return 2
    print(render_markdown(rows))
    print(provenance(run))
    print("wrote " + " and ".join(paths))
    return 0


if __name__ == "__main__":
    exit_with(main)
