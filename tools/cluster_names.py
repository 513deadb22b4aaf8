"""Cluster a domain's OOP images and name the clusters: the input of the GCD experiment.

    python -m tools.cluster_names --root DATA --domain Pokemon [--config FILE] [--backbone NAME]
        [--weights W] [--min-size 20] [--seed 0] [--out FILE] [KEY VALUE ...]

The reference took these pseudo labels from its CMS code (spec §4.7); this tool makes them from our
own code so the GCD experiment runs end to end:

1. L2-normalised CLIP image features of the train + test images of the domain's OOP subset;
2. k-means (scikit-learn, seeded) with k = the number of OOP classes;
3. each cluster is named by a Hungarian assignment between the normalised cluster means and the text
   features of ``a photo of a {name}.`` for the OOP class names (k = C, so every name is used once);
4. clusters with fewer than ``--min-size`` images are dropped (the reference's 20 by default).

Writes ``<ROOT>/<SUBFIELD>_clustering_results.json`` (SUBFIELD = the domain's folder prefix, e.g.
``Pokemon`` or ``MiniAnimals``), a list of ``{"image_path", "pseudo_label", "pseudo_classname"}``
with ``image_path`` relative to the root when the image is below it and ``pseudo_label`` the k-means
cluster index. The run's summary (k-means clustering accuracy, share of correctly named images) is
printed as JSON.

A file already at the output path is refused before any image is encoded unless ``--overwrite``: the
format carries no identity, so an earlier file may be the reference's CMS output or the clusters a
finished GCD run was trained on, and nothing tells it from one this tool wrote. Mistakes (domain, root,
config, weights, output path) are one ``error:`` line, exit 2, before the backbone loads when they can be.
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
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

import train
from clip import normalize_name
from dassl import results
from dassl.cli import ArgumentParser
from dassl.ctrl_c import exit_with
from dassl.data.datasets import data_dirs
from dassl.evaluation.clustering import clustering_accuracy
from dassl.utils import check_outside, set_random_seed
from datasets.gcd import clustering_results_path, write_clustering_results
from datasets.laion_beyond import subset_dirs_under
from scripts.cluster_eval import kmeans_labels  # re-exported (moved so scripts/ never imports tools/)
from scripts.domains import DomainError, count_classes, laion_beyond_classes, resolve_domain
from scripts.features import add_backbone_args, cfg_from_args, image_features, load_backbone, text_features
from scripts.parse_test_res import OutputError, check_output_target

__all__ = ["NAME_TEMPLATE", "DEFAULT_MIN_SIZE", "kmeans_labels", "name_clusters", "cluster_records",
           "cluster_names", "check_output", "main"]

logger = logging.getLogger(__name__)

NAME_TEMPLATE = "a photo of a {}."
DEFAULT_MIN_SIZE = 20
DEFAULT_SPLITS = ("train", "test")


def name_clusters(features: np.ndarray, assignment: np.ndarray, name_features: np.ndarray) -> Dict[int, int]:
    """``cluster -> name index``: Hungarian assignment maximising mean-feature / name-text cosine similarity."""
    clusters = sorted(int(c) for c in np.unique(assignment))
    means = np.stack([features[assignment == c].mean(axis=0) for c in clusters])
    means /= np.linalg.norm(means, axis=1, keepdims=True).clip(min=1e-12)
    sims = means @ name_features.T
    rows, cols = linear_sum_assignment(sims, maximize=True)
    return {clusters[r]: int(c) for r, c in zip(rows.tolist(), cols.tolist())}


def _portable_path(impath: str, root: str) -> str:
    rel = os.path.relpath(os.path.abspath(impath), os.path.abspath(root))
    if rel.startswith(os.pardir + os.sep) or rel == os.pardir or os.path.isabs(rel):
        return os.path.abspath(impath)
    return rel.replace(os.sep, "/")


def cluster_records(
    impaths: Sequence[str], assignment: np.ndarray, naming: Dict[int, int], classnames: Sequence[str],
    root: str, min_size: int = DEFAULT_MIN_SIZE,
) -> Tuple[List[Dict[str, Any]], List[int]]:
    """JSON records of the kept clusters and the indices of the dropped clusters."""
    sizes = {int(c): int((assignment == c).sum()) for c in np.unique(assignment)}
    dropped = sorted(c for c, n in sizes.items() if n < min_size or c not in naming)
    records = [
        {"image_path": _portable_path(p, root), "pseudo_label": int(c), "pseudo_classname": classnames[naming[int(c)]]}
        for p, c in zip(impaths, assignment.tolist())
        if int(c) not in dropped
    ]
    return records, dropped


def cluster_names(
    cfg: Any, loaded: Any, min_size: int = DEFAULT_MIN_SIZE, seed: int = 0, splits: Sequence[str] = DEFAULT_SPLITS,
    batch_size: int = 0, n_init: int = 10,
) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """Records for ``cfg``'s domain (OOP) and a summary of how good the clusters and names are."""
    fs = image_features(cfg, loaded, "OOP", splits, batch_size=batch_size)
    k = len(fs.classnames)
    assignment = kmeans_labels(fs.features, k, seed, n_init)
    names = text_features(loaded, [NAME_TEMPLATE.format(normalize_name(c)) for c in fs.classnames])
    naming = name_clusters(fs.features, assignment, names)
    records, dropped = cluster_records(fs.impaths, assignment, naming, fs.classnames, cfg.DATASET.ROOT, min_size)
    kept = np.array([int(c) not in dropped for c in assignment])
    named = np.array([naming.get(int(c), -1) for c in assignment])
    summary = {
        "dataset": fs.dataset,
        "images": len(fs),
        "clusters": k,
        "kept_clusters": k - len(dropped),
        "kept_images": int(kept.sum()),
        "dropped_clusters": dropped,
        "min_size": min_size,
        "kmeans_clustering_accuracy": clustering_accuracy(fs.labels.tolist(), assignment.tolist()),
        "correctly_named_images": 100.0 * float((named == fs.labels).mean()),
        "seed": seed,
    }
    return records, summary


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m tools.cluster_names", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="dataset root (DATASET.ROOT); the JSON is written there")
    p.add_argument("--domain", required=True, help="registered (Pokemon89_39, MiniAnimals) or short name (Pokemon)")
    add_backbone_args(p)
    p.add_argument("--min-size", type=int, default=DEFAULT_MIN_SIZE, help="drop clusters with fewer images")
    p.add_argument("--n-init", type=int, default=10, help="k-means restarts (>= 1)")
    p.add_argument("--splits", nargs="+", default=list(DEFAULT_SPLITS), choices=("train", "val", "test"),
                   help="OOP splits to cluster")
    p.add_argument("--out", default="", help="output file (default <ROOT>/<SUBFIELD>_clustering_results.json)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a clustering file already at the output path (refused without it)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides, as for train.py")
    return p


def check_output(out: str, overwrite: bool) -> None:
    """Refuse (:class:`OutputError` / ``WriteError``, one line) an output path whose write would destroy
    what this call cannot vouch for, before the backbone loads: an existing file unless ``overwrite``
    (the format has no identity: it may be the reference's CMS output), a directory, a link, a run's
    folder, or a folder that cannot be written (the read-only dataset root of a shared lab)."""
    if os.path.isfile(out) and not os.path.islink(out) and not overwrite:
        raise OutputError(f"{out} exists (the reference's CMS output, or clusters a GCD run was trained on); "
                          "move it away, give --out another file, or pass --overwrite to replace it")
    check_output_target(out, f"--out {out}", "clustering results", lambda _path: True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.n_init < 1:  # KMeans refused it with a traceback, after the features were computed
        parser.error(f"argument --n-init: k-means needs at least one restart, got {args.n_init}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        dataset = resolve_domain(args.domain)
        domains = laion_beyond_classes()
        if dataset not in domains:
            raise DomainError(f"{dataset} is not a LAION-Beyond-style domain")
        subfield = domains[dataset].prefix
        out = args.out or clustering_results_path(os.path.abspath(args.root), subfield)
        cfg = cfg_from_args(args, dataset)
        # never among the images and split files of any domain: --out onto the split file with --overwrite
        # replaced it, and the domain was broken for every tool (exit 0; another domain's, too)
        check_outside(out, [*data_dirs(cfg), *subset_dirs_under(args.root)], "--out")
        check_output(out, results.overwrite_requested(args.overwrite))
        count_classes(args.root, dataset, "OOP")  # the data before the backbone: a wrong --root is not worth a load
        set_random_seed(args.seed)
        device = torch.device(args.device) if args.device else None
        loaded = load_backbone(cfg, device, args.precision)
        records, summary = cluster_names(cfg, loaded, args.min_size, args.seed, args.splits, args.batch_size,
                                         args.n_init)
        if not records:  # a setting to change, like every user mistake here (exit 2), not a failure of the tool
            print(f"error: every cluster has fewer than {args.min_size} images; lower --min-size", file=sys.stderr)
            return 2
        write_clustering_results(out, records)
    except (DomainError, OutputError, *train.user_errors()) as err:
        print(f"error: {train.error_message(err)}", file=sys.stderr)
        return 2
    summary.update(subfield=subfield, output=out)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    exit_with(main)
