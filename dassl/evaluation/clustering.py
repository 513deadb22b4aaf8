"""Clustering accuracy (GCD, spec §7.7): predictions are scored after the best one-to-one relabelling.

In the GCD experiment the training labels are *pseudo* labels (k-means clusters named by matching),
so a prediction is right when the predicted cluster is the one that best corresponds to the image's
real class. The correspondence is the Hungarian assignment that maximises the number of matches on
the confusion matrix (padded to a square, so there may be more clusters than classes or fewer).

Differences from the reference evaluator (B35):

* the engine's one ``process(mo, gt, impaths=None)`` signature: the generic ``test()`` drives it;
* the true class of an image comes from ``true_class_fn(impath)`` (default: the name of the image's
  parent folder, the LAION-Beyond layout ``images/<classname>/<file>``); a dataset with another
  layout swaps the function instead of renaming folders; without impaths the given labels are the
  truth, so the evaluator also scores any ordinary classifier up to a relabelling;
* true classes are indexed in *sorted* name order, not a Python ``set``'s order, so the per-class
  report and the saved matrix are the same from run to run.
"""
from __future__ import annotations

import logging
import os
import os.path as osp
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..utils import atomic_torch_save
from .evaluator import EVALUATOR_REGISTRY, EvaluatorBase

__all__ = ["ClusteringAccuracy", "parent_dir_class", "match_clusters", "clustering_accuracy"]

logger = logging.getLogger(__name__)


def parent_dir_class(impath: str) -> str:
    """Real class of an image stored as ``.../<classname>/<file>``."""
    return osp.basename(osp.dirname(os.fspath(impath)))


def _as_index(values: Sequence[Any]) -> Tuple[np.ndarray, List[Any]]:
    """Integer codes of ``values`` in sorted order of the distinct values (deterministic)."""
    names = sorted(set(values))
    lookup = {v: i for i, v in enumerate(names)}
    return np.fromiter((lookup[v] for v in values), dtype=np.int64, count=len(values)), names


def match_clusters(y_true: Sequence[Any], y_pred: Sequence[Any]) -> Tuple[Dict[Any, Any], int, np.ndarray]:
    """Best one-to-one map ``predicted cluster -> true class`` and the number of images it gets right.

    Both sequences may hold any hashable, sortable values (ints or names). Returns
    ``(mapping, matched, counts)`` where ``counts[t, p]`` counts images of the t-th true class (sorted
    order) predicted as the p-th cluster (sorted order), before padding. Clusters left without a
    partner (more clusters than classes) are absent from ``mapping``: their images count as wrong.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} entries but y_pred has {len(y_pred)}")
    if len(y_true) == 0:
        return {}, 0, np.zeros((0, 0), dtype=np.int64)
    t_idx, t_names = _as_index(list(y_true))
    p_idx, p_names = _as_index(list(y_pred))
    counts = np.zeros((len(t_names), len(p_names)), dtype=np.int64)
    np.add.at(counts, (t_idx, p_idx), 1)
    n = max(counts.shape)
    square = np.zeros((n, n), dtype=np.int64)
    square[: counts.shape[0], : counts.shape[1]] = counts
    rows, cols = linear_sum_assignment(square, maximize=True)
    mapping: Dict[Any, Any] = {}
    matched = 0
    for r, c in zip(rows.tolist(), cols.tolist()):
        if r < len(t_names) and c < len(p_names):
            mapping[p_names[c]] = t_names[r]
            matched += int(square[r, c])
    return mapping, matched, counts


def clustering_accuracy(y_true: Sequence[Any], y_pred: Sequence[Any]) -> float:
    """Percentage of images whose cluster maps to their true class under the best one-to-one map."""
    if len(y_true) == 0:
        raise ValueError("clustering_accuracy of an empty set")
    _, matched, _ = match_clusters(y_true, y_pred)
    return 100.0 * matched / len(y_true)


@EVALUATOR_REGISTRY.register()
class ClusteringAccuracy(EvaluatorBase):
    """Hungarian-matched accuracy of arg-max predictions against the images' real classes.

    Results: ``clustering_accuracy`` (headline), ``accuracy`` (the same number, for code that reads
    the generic key) and, with ``TEST.PER_CLASS_RESULT``, ``perclass_accuracy``. With
    ``TEST.COMPUTE_CMAT`` the raw ``[true, predicted]`` count matrix is saved to ``OUTPUT_DIR``.
    """

    def __init__(
        self,
        cfg: Any,
        lab2cname: Optional[Dict[int, str]] = None,
        true_class_fn: Optional[Callable[[str], str]] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(cfg)
        self._lab2cname = lab2cname
        #: impath -> real class name; datasets with another folder layout replace it.
        self.true_class_fn: Callable[[str], str] = true_class_fn or parent_dir_class
        self.per_class = bool(cfg.TEST.PER_CLASS_RESULT)
        self.compute_cmat = bool(cfg.TEST.COMPUTE_CMAT)
        self.cmat_filename = "cmat_clustering.pt"
        self.reset()

    def reset(self) -> None:
        self._y_true: List[Any] = []
        self._y_pred: List[int] = []
        self._by_path = True

    def process(self, mo: torch.Tensor, gt: torch.Tensor, impaths: Optional[Sequence[str]] = None) -> None:
        pred = mo.detach().argmax(dim=1).cpu().tolist()
        if impaths is None:
            # No paths: the labels are the truth (clustering accuracy of an ordinary classifier).
            self._by_path = False
            truth: List[Any] = [int(v) for v in gt.detach().cpu().tolist()]
        else:
            if len(impaths) != len(pred):
                raise ValueError(f"{len(impaths)} impaths for a batch of {len(pred)} predictions")
            truth = [self.true_class_fn(p) for p in impaths]
        if self._y_true and truth and isinstance(self._y_true[0], str) != isinstance(truth[0], str):
            raise ValueError("ClusteringAccuracy got batches with impaths and batches without")
        self._y_true.extend(truth)
        self._y_pred.extend(int(p) for p in pred)

    def _true_name(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        return self._lab2cname.get(value, str(value)) if self._lab2cname else str(value)

    def evaluate(self) -> OrderedDict[str, float]:
        total = len(self._y_true)
        if total == 0:
            raise RuntimeError("ClusteringAccuracy.evaluate() called before any prediction was processed")
        mapping, matched, counts = match_clusters(self._y_true, self._y_pred)
        acc = 100.0 * matched / total
        true_names = sorted(set(self._y_true))
        results: OrderedDict[str, float] = OrderedDict()
        results["clustering_accuracy"] = acc
        results["accuracy"] = acc
        logger.info(
            "=> result\n"
            f"* total: {total}\n"
            f"* true classes: {len(true_names)}\n"
            f"* predicted clusters: {len(set(self._y_pred))}\n"
            f"* matched: {matched}\n"
            f"* clustering_accuracy: {acc:.2f}%\n"
            f"* accuracy: {acc:.2f}%"
        )

        if self.per_class:
            hits: Dict[Any, List[int]] = {t: [] for t in true_names}
            for t, p in zip(self._y_true, self._y_pred):
                hits[t].append(int(mapping.get(p) == t))
            logger.info("=> per-class result (true class <- matched cluster)")
            inverse = {t: p for p, t in mapping.items()}
            accs = []
            for t in true_names:
                res = hits[t]
                class_acc = 100.0 * sum(res) / len(res)
                accs.append(class_acc)
                cluster = inverse.get(t)
                cname = "-" if cluster is None else f"{cluster} ({self._lab2cname.get(cluster, '') if self._lab2cname else ''})"
                logger.info(f"* class: {self._true_name(t)} <- {cname}\ttotal: {len(res)}\t"
                            f"correct: {sum(res)}\tacc: {class_acc:.2f}%")
            mean_acc = float(np.mean(accs))
            logger.info(f"* average: {mean_acc:.2f}%")
            results["perclass_accuracy"] = mean_acc

        if self.compute_cmat:
            save_path = osp.join(self.cfg.OUTPUT_DIR, self.cmat_filename)
            atomic_torch_save(torch.from_numpy(counts), save_path)
            logger.info(f"Clustering count matrix [true, predicted] is saved to {save_path}")
        return results
