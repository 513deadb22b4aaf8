"""LAION-Beyond's evaluation protocol as a trainer hook: the OOP->IP cross-evaluation and the H-mean.

The engine (``dassl``) knows no benchmark: after the main ``test()`` it only calls the hook
``extra_evaluations()``. This mixin implements it for datasets with OOP/IP subsets
(``supports_subsets``): the weights just trained (or loaded) are evaluated on the other
``DATASET.SUB_CLASSES`` of ``TEST.CROSS_EVAL`` ("auto" = IP after OOP), and ``oop``, ``ip`` and
``hmean`` are added to results.json.

The cross-evaluation builds only what evaluation needs: a sibling trainer with ``eval_only=True``
(no feature cache, no caption preprocessing) on ``DATASET.NUM_SHOTS 0`` (Dassl's "all images": the
IP few-shot set is never sampled nor cached, since only the test split is read), sharing the loaded
CLIP and the evaluation features through ``shared``.

Label spaces (issue 11, item 6): a checkpoint of the same dataset's other subset shares no class
by design (OOP weights evaluated on IP); anything else sharing no class is an error (engine). A
class name present in both OOP and IP is an error whenever both subsets take part (cross-evaluation
or ``All``): the IP class would silently be scored with the OOP-trained tensor.
"""
from __future__ import annotations

import inspect
import logging
from collections import OrderedDict
from typing import Any, Dict, List, Optional

from dassl.evaluation import hmean
from dassl.utils import CheckpointError

__all__ = ["SubsetEvaluation", "SUBSET_PARTS"]

logger = logging.getLogger(__name__)

#: which of the two subsets each SUB_CLASSES value reads
SUBSET_PARTS = {"OOP": ("OOP",), "IP": ("IP",), "All": ("OOP", "IP")}


class SubsetEvaluation:
    """Mixin over ``dassl.engine.SimpleTrainer``: OOP/IP cross-evaluation, H-mean, label-space rules."""

    # ------------------------------------------------------------------ which subsets
    def cross_eval_subsets(self) -> List[str]:
        """The other DATASET.SUB_CLASSES to evaluate after the main test (TEST.CROSS_EVAL)."""
        requested = self.cfg.TEST.get("CROSS_EVAL", ())
        if isinstance(requested, str):
            requested = (requested,)
        main = self.cfg.DATASET.get("SUB_CLASSES")
        supports = bool(getattr(self.dm.dataset, "supports_subsets", False))
        subsets: List[str] = []
        for item in requested:
            if item == "auto":
                if supports and main == "OOP":
                    subsets.append("IP")
                continue
            if main is None:
                logger.warning("TEST.CROSS_EVAL %s ignored: the config has no DATASET.SUB_CLASSES", item)
                continue
            if not supports:
                logger.warning("Dataset %s does not declare supports_subsets; evaluating SUB_CLASSES=%s anyway",
                               self.cfg.DATASET.NAME, item)
            subsets.append(str(item))
        out: List[str] = []
        for sub in subsets:
            if sub != main and sub not in out:
                out.append(sub)
        return out

    def check_cross_evaluation(self) -> None:
        """Before any training: let the dataset validate the subsets the cross-evaluation will read
        (datasets opt in with ``check_subsets(sub_classes)``; LAION-Beyond refuses a name in both
        OOP and IP)."""
        subsets = self.cross_eval_subsets()
        check = getattr(self.dm.dataset, "check_subsets", None)
        if subsets and callable(check):
            check(subsets)

    # ------------------------------------------------------------------ evaluation
    def evaluate_subset(self, sub: str) -> OrderedDict[str, float]:
        """Evaluate the current weights on ``DATASET.SUB_CLASSES = sub`` with an evaluation-only sibling."""
        cfg2 = self.cfg.clone()
        cfg2.defrost()
        cfg2.DATASET.SUB_CLASSES = sub
        cfg2.TEST.CROSS_EVAL = ()
        if self._resolve_split(None) == "test":
            # Only the test split is read: 0 shots = no few-shot sampling (nothing drawn or cached).
            cfg2.DATASET.NUM_SHOTS = 0
        cfg2.freeze()
        logger.info("Cross-evaluation on DATASET.SUB_CLASSES=%s", sub)
        cls = type(self)
        params = inspect.signature(cls.__init__).parameters
        kwargs: Dict[str, Any] = {}
        if "shared" in params:
            kwargs["shared"] = self.shared
        if "eval_only" in params:
            kwargs["eval_only"] = True
        other = cls(cfg2, **kwargs)
        other.show_progress = getattr(self, "show_progress", True)
        if hasattr(other.evaluator, "cmat_filename"):
            other.evaluator.cmat_filename = f"cmat_{sub}.pt"
        # A loaded model passes on the checkpoint as its file holds it, not this trainer's copy: a
        # class-specific model keeps only the names of this label space, so an IP-trained FSNL model
        # evaluated under an OOP config lost its IP names here, and its "IP accuracy" was the zero-shot
        # one (exit 0). Weights this run trained are its own state.
        loaded = self.loaded_checkpoint
        states, meta = loaded if loaded is not None else (self.export_state(), self.checkpoint_meta())
        other.import_state(states, meta=meta)
        other.model_epoch = self.model_epoch
        other.epoch = self.epoch
        other.test()
        assert other.last_results is not None
        return other.last_results

    def extra_evaluations(self, main_metrics: Dict[str, float]) -> Dict[str, Any]:
        """``subsets`` (metrics per SUB_CLASSES), ``oop`` / ``ip`` / ``all`` and, with both, ``hmean``."""
        main = self.cfg.DATASET.get("SUB_CLASSES")
        subsets: OrderedDict[str, Dict[str, float]] = OrderedDict()
        if main is not None:
            subsets[str(main)] = OrderedDict(main_metrics)
        for sub in self.cross_eval_subsets():
            subsets[sub] = OrderedDict(self.evaluate_subset(sub))
        out: Dict[str, Any] = OrderedDict(subsets=subsets)
        for sub, metrics in subsets.items():
            out[sub.lower()] = list(metrics.values())[0]
        if "oop" in out and "ip" in out:
            out["hmean"] = hmean(out["oop"], out["ip"])
            logger.info("* H-mean (OOP %.2f%%, IP %.2f%%): %.2f%%", out["oop"], out["ip"], out["hmean"])
        return out

    # ------------------------------------------------------------------ label spaces
    def _sibling_subset(self, meta: Dict[str, Any]) -> Optional[str]:
        """The checkpoint's SUB_CLASSES when it is another subset of this very dataset, else None."""
        theirs, ours = meta.get("sub_classes"), self.cfg.DATASET.get("SUB_CLASSES")
        if not bool(getattr(self.dm.dataset, "supports_subsets", False)):
            return None
        if theirs not in SUBSET_PARTS or ours not in SUBSET_PARTS or theirs == ours:
            return None
        dataset = meta.get("dataset")
        if dataset is None:
            logger.warning("The checkpoint does not record its dataset; assuming %s (%s weights on %s)",
                           self.cfg.DATASET.NAME, theirs, ours)
        elif dataset != self.cfg.DATASET.NAME:
            return None
        return str(theirs)

    def accepts_label_space(self, meta: Dict[str, Any]) -> bool:
        """OOP weights evaluated on IP (or the reverse) share no class by design."""
        sibling = self._sibling_subset(meta)
        if sibling is None:
            return False
        logger.info("Evaluating weights trained on %s on %s: no class of this label space was trained",
                    sibling, self.cfg.DATASET.get("SUB_CLASSES"))
        return True

    def check_label_space(self, directory: str, meta: Dict[str, Any]) -> Optional[str]:
        shared = super().check_label_space(directory, meta)  # type: ignore[misc]
        sibling = self._sibling_subset(meta)
        ours = self.cfg.DATASET.get("SUB_CLASSES")
        if sibling is not None and shared is not None and not shared.startswith("0/") \
                and not set(SUBSET_PARTS[sibling]) & set(SUBSET_PARTS[ours]):
            theirs = {str(c) for c in meta.get("classnames") or ()}
            same = sorted(c for c in self.label_space() or () if c in theirs)
            raise CheckpointError(
                f"--model-dir {directory}: {len(same)} class name(s) are in both {sibling} and {ours}: "
                f"{same[:10]}; their {sibling}-trained weights would score the {ours} classes. Rename them "
                "in one split file"
            )
        return shared
