"""FSNL_openclip_GCD: FSNL on pseudo-labelled clusters, scored by clustering accuracy (spec §3.2).

The method is FSNL unchanged; what differs is the data and the score:

* the GCD data has no captions, so the caption loss is off whatever ``TRAINER.FSNL.USE_CAPTION``
  says (the reference relied on the scripts passing ``USE_CAPTION False``; with True it crashed, B3);
* the prompt hint comes from ``DATASET.SUBFIELD`` (the domain the clusters were made from);
* predictions are compared with the images' *real* classes: the engine's ``test()`` already hands
  every batch's ``impath`` to the evaluator, and this trainer gives ``ClusteringAccuracy`` the
  dataset's ``true_class`` function (the reference overrode ``parse_batch_test`` and ``test`` for this).

Run it with ``TEST.EVALUATOR ClusteringAccuracy`` (``scripts/gcd/gcd_fsnl.sh`` does).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional

from dassl.engine import TRAINER_REGISTRY
from dassl.evaluation.clustering import ClusteringAccuracy
from datasets.gcd import subfield_hint

from .fsnl import FSNL_openclip

__all__ = ["FSNL_openclip_GCD"]

logger = logging.getLogger(__name__)

GCD_EVALUATOR = "ClusteringAccuracy"


@TRAINER_REGISTRY.register()
class FSNL_openclip_GCD(FSNL_openclip):
    """FSNL without captions, hint from ``DATASET.SUBFIELD``, evaluated by clustering accuracy."""

    def __init__(self, cfg: Any, shared: Optional[Dict[Any, Any]] = None, eval_only: bool = False) -> None:
        super().__init__(cfg, shared=shared, eval_only=eval_only)
        if isinstance(self.evaluator, ClusteringAccuracy):
            true_class = getattr(self.dm.dataset, "true_class", None)
            if callable(true_class):
                self.evaluator.true_class_fn = true_class

    def check_cfg(self, cfg: Any) -> None:
        super().check_cfg(cfg)
        loss = self.LOSS_PRESET or cfg.TRAINER.FSNL.LOSS
        if loss == "clip_caption":
            raise ValueError("TRAINER.FSNL.LOSS clip_caption needs captions; the GCD data has none")
        if bool(cfg.TRAINER.FSNL.USE_CAPTION):
            logger.warning("TRAINER.FSNL.USE_CAPTION True ignored: the GCD data has no captions")
        if cfg.TEST.EVALUATOR != GCD_EVALUATOR:
            logger.warning("TEST.EVALUATOR is %s: results are scored against the pseudo labels, not the "
                           "real classes (set TEST.EVALUATOR %s for the GCD metric)",
                           cfg.TEST.EVALUATOR, GCD_EVALUATOR)

    def finalize(self, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """results.json also names the subfield and the number of clusters (the reference's CSV columns)."""
        info: Dict[str, Any] = {"subfield": str(self.cfg.DATASET.SUBFIELD), "num_clusters": int(self.num_classes)}
        info.update(extra or {})
        return super().finalize(info)

    @property
    def uses_captions(self) -> bool:
        return False

    @property
    def hint(self) -> Optional[str]:
        return subfield_hint(str(self.cfg.DATASET.SUBFIELD))
