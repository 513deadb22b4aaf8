"""Zero-shot OpenCLIP baselines: one template per dataset, or an ensemble of templates (spec §3.5).

Nothing is learned. The class text features are computed once per ``test()`` call by the base class
(P1) and every test batch only runs the image tower.

Differences from the reference, deliberate:

* B12 the trainers carry no CSV log template; our engine's ``test()`` does not need one, so both
  trainers (ZS2 included) evaluate without crashing;
* B26 the ensemble is a fresh list per trainer (``clip.templates.ensemble_templates``); the module
  constant is never extended in place, so building the trainer twice (cross-subset evaluation) does
  not duplicate the dataset template;
* all ``templates × classes`` prompts are tokenised together and encoded in a few large batches
  (``TEXT_CHUNK`` sequences each) instead of one ``encode_text`` call per template.

``DATASET.USE_SUPERCLASS_F_ZS_TEST True`` needs nothing here: the dataset then provides the superclass
names as its class names.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List

import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from clip.templates import IMAGENET_ENSEMBLE, ensemble_templates
from dassl.engine import TRAINER_REGISTRY

from .base import ClipTrainer
from .coop_openclip import add_config as add_coop_config

logger = logging.getLogger(__name__)


def add_config(cfg: CN) -> None:
    """Zero-shot reads ``TRAINER.COOP.PREC`` (as the reference does); make sure that block exists."""
    if "COOP" not in cfg.TRAINER:
        add_coop_config(cfg)


add_zsclip_config = add_config


def fill_template(template: str, name: str) -> str:
    """``template`` with ``{}`` replaced by ``name``; ``str.replace`` so braces in names are harmless."""
    return template.replace("{}", name)


@TRAINER_REGISTRY.register()
class ZeroshotCLIP_openclip(ClipTrainer):
    """Zero-shot CLIP with the dataset's single template ``a photo of {}, a type of {hint}.``."""

    LOADS_WEIGHTS = False  # nothing is learned: --model-dir is refused

    PREC_KEY = "COOP"

    def build_model(self) -> None:
        self.load_clip()
        templates = self.templates()
        logger.info("%s: %d template(s) × %d classes, e.g. %r", type(self).__name__, len(templates),
                    len(self.classnames), fill_template(templates[0], self.display_names(self.classnames)[0]))

    def templates(self) -> List[str]:
        return [self.class_template()]

    def compute_text_features(self) -> torch.Tensor:
        """Per-template normalised features, averaged over templates, renormalised (spec §3.5)."""
        names = self.display_names(self.classnames)
        templates = self.templates()
        texts = [fill_template(t, n) for t in templates for n in names]
        feats = self.encode_texts(texts).view(len(templates), len(names), -1)
        return F.normalize(feats.mean(dim=0), dim=-1)

    # ------------------------------------------------------------------ no training
    def forward_backward(self, batch: Dict[str, Any]) -> Dict[str, float]:
        raise RuntimeError(f"{type(self).__name__} has nothing to train; run it with --eval-only")

    def train(self, *args: Any, **kwargs: Any) -> None:
        """Zero-shot: no training loop; evaluate (with cross-evaluation) and write results.json."""
        logger.info("%s has no parameters to train; evaluating directly", type(self).__name__)
        self.finalize()


@TRAINER_REGISTRY.register()
class ZeroshotCLIP2_openclip(ZeroshotCLIP_openclip):
    """Zero-shot CLIP with the template ensemble: 7 ImageNet templates plus the dataset template."""

    def templates(self) -> List[str]:
        if self.hint:
            return list(ensemble_templates(self.hint))
        return list(IMAGENET_ENSEMBLE) + [self.class_template()]
