"""Evaluators: accumulate predictions over a test pass and summarise them.

``process(mo, gt, impaths=None)`` has one signature for every evaluator, so the engine's generic
``test()`` can drive any of them (the reference's ClusteringAccuracy needed a different call: B35).
Results are an ``OrderedDict`` at full precision whose first entry is the headline metric; the log
lines round to two decimals and keep Dassl's wording so existing regex parsers still work.
"""
from __future__ import annotations

import logging
import os.path as osp
from collections import OrderedDict, defaultdict
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, f1_score

from ..utils import Registry, atomic_torch_save, check_availability

__all__ = ["EVALUATOR_REGISTRY", "build_evaluator", "EvaluatorBase", "Classification", "hmean"]

logger = logging.getLogger(__name__)

EVALUATOR_REGISTRY = Registry("EVALUATOR")


def hmean(a: float, b: float) -> float:
    """Harmonic mean ``2ab/(a+b)`` of two accuracies (0 when both are 0)."""
    a, b = float(a), float(b)
    if a + b == 0:
        return 0.0
    return 2.0 * a * b / (a + b)


class EvaluatorBase:
    """Interface: ``reset()`` before a pass, ``process()`` per batch, ``evaluate()`` at the end."""

    def __init__(self, cfg: Any, **kwargs: Any) -> None:
        self.cfg = cfg

    def reset(self) -> None:
        raise NotImplementedError

    def process(self, mo: torch.Tensor, gt: torch.Tensor, impaths: Optional[Sequence[str]] = None) -> None:
        raise NotImplementedError

    def evaluate(self) -> OrderedDict[str, float]:
        raise NotImplementedError


@EVALUATOR_REGISTRY.register()
class Classification(EvaluatorBase):
    """Accuracy, error rate and macro-F1 of arg-max predictions (plus optional per-class results
    and a row-normalised confusion matrix)."""

    def __init__(self, cfg: Any, lab2cname: Optional[Dict[int, str]] = None, **kwargs: Any) -> None:
        super().__init__(cfg)
        self._lab2cname = lab2cname
        self.per_class = bool(cfg.TEST.PER_CLASS_RESULT)
        self.compute_cmat = bool(cfg.TEST.COMPUTE_CMAT)
        #: file name of the confusion matrix inside OUTPUT_DIR (cross-evaluation renames it).
        self.cmat_filename = "cmat.pt"
        self.reset()

    def reset(self) -> None:
        self._correct = 0
        self._total = 0
        self._y_true: list = []
        self._y_pred: list = []
        self._per_class_res: Optional[Dict[int, list]] = defaultdict(list) if self.per_class else None

    def process(self, mo: torch.Tensor, gt: torch.Tensor, impaths: Optional[Sequence[str]] = None) -> None:
        pred = mo.detach().argmax(dim=1).cpu()
        gt = gt.detach().cpu()
        matches = pred.eq(gt)
        self._correct += int(matches.sum().item())
        self._total += int(gt.numel())
        self._y_true.extend(gt.tolist())
        self._y_pred.extend(pred.tolist())
        if self._per_class_res is not None:
            for label, hit in zip(gt.tolist(), matches.tolist()):
                self._per_class_res[label].append(int(hit))

    def evaluate(self) -> OrderedDict[str, float]:
        if self._total == 0:
            raise RuntimeError("Classification.evaluate() called before any prediction was processed")
        results: OrderedDict[str, float] = OrderedDict()
        acc = 100.0 * self._correct / self._total
        err = 100.0 - acc
        labels = np.unique(self._y_true)
        macro_f1 = 100.0 * float(
            f1_score(self._y_true, self._y_pred, average="macro", labels=labels, zero_division=0)
        )
        results["accuracy"] = acc
        results["error_rate"] = err
        results["macro_f1"] = macro_f1

        logger.info(
            "=> result\n"
            f"* total: {self._total}\n"
            f"* correct: {self._correct}\n"
            f"* accuracy: {acc:.2f}%\n"
            f"* error: {err:.2f}%\n"
            f"* macro_f1: {macro_f1:.2f}%"
        )

        if self._per_class_res is not None:
            accs = []
            logger.info("=> per-class result")
            for label in sorted(self._per_class_res):
                res = self._per_class_res[label]
                correct, total = sum(res), len(res)
                class_acc = 100.0 * correct / total
                accs.append(class_acc)
                name = self._lab2cname.get(label, "") if self._lab2cname else ""
                logger.info(
                    f"* class: {label} ({name})\ttotal: {total}\tcorrect: {correct}\tacc: {class_acc:.2f}%"
                )
            mean_acc = float(np.mean(accs))
            logger.info(f"* average: {mean_acc:.2f}%")
            results["perclass_accuracy"] = mean_acc

        if self.compute_cmat:
            cmat = confusion_matrix(self._y_true, self._y_pred, normalize="true")
            save_path = osp.join(self.cfg.OUTPUT_DIR, self.cmat_filename)
            atomic_torch_save(torch.from_numpy(np.asarray(cmat, dtype=np.float64)), save_path)
            logger.info(f"Confusion matrix is saved to {save_path}")

        return results


def build_evaluator(cfg: Any, **kwargs: Any) -> EvaluatorBase:
    """Instantiate ``cfg.TEST.EVALUATOR`` (extra keyword arguments, e.g. ``lab2cname``, pass through)."""
    name = cfg.TEST.EVALUATOR
    check_availability(name, EVALUATOR_REGISTRY.registered_names())
    if cfg.VERBOSE:
        logger.info(f"Loading evaluator: {name}")
    return EVALUATOR_REGISTRY.get(name)(cfg, **kwargs)
