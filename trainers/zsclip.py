"""Zero-shot OpenAI CLIP (``ZeroshotCLIP``, ``ZeroshotCLIP2``), written in CoOp's idiom (spec §3.8).

The shape of CoOp's ``trainers/zsclip.py`` (text features computed once in ``build_model``,
``model_inference`` = scaled cosine), so CoOp's file can be copied over it. Run with
``--eval-only``. Precision is ``TRAINER.COOP.PREC`` (declared by ``coop_openclip.py``).

Departures from CoOp's file, deliberate: ``CUSTOM_TEMPLATES`` also knows the LAION-Beyond domains
(``a photo of {}, a type of <hint>.``) and any other dataset falls back to ``a photo of a {}.``
(CoOp's raised KeyError); a run without ``--eval-only`` evaluates instead of failing; ZeroshotCLIP2 builds a fresh template list per trainer, so a second
instance does not append the dataset template again (B26); precision follows the device (B30).
"""
from __future__ import annotations

import logging
from types import MappingProxyType
from typing import Any, List, Mapping

import torch

from clip import clip
from clip.templates import DEFAULT_TEMPLATE, DOMAIN_HINTS, zs_template
from dassl.engine import TRAINER_REGISTRY, TrainerX

from ._openai_clip import check_backbone, check_precision, load_clip_to_cpu, run_fp32
from .imagenet_templates import IMAGENET_TEMPLATES_SELECT

logger = logging.getLogger(__name__)

#: CoOp's per-dataset templates, plus the LAION-Beyond domains.
CUSTOM_TEMPLATES: Mapping[str, str] = MappingProxyType({
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
    **{name: zs_template(hint) for name, hint in DOMAIN_HINTS.items()},
})


def dataset_template(dataset_name: str) -> str:
    return CUSTOM_TEMPLATES.get(dataset_name, DEFAULT_TEMPLATE)


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(TrainerX):
    """CLIP with the dataset's single template; nothing is trained."""

    LOADS_WEIGHTS = False  # nothing is learned: --model-dir is refused

    def check_cfg(self, cfg: Any) -> None:
        check_precision(cfg.TRAINER.COOP.PREC, "TRAINER.COOP.PREC")
        check_backbone(cfg)

    def templates(self) -> List[str]:
        return [dataset_template(self.cfg.DATASET.NAME)]

    def build_model(self) -> None:
        cfg = self.cfg
        classnames = [c.replace("_", " ") for c in self.dm.dataset.classnames]
        logger.info("Loading CLIP (backbone: %s)", cfg.MODEL.BACKBONE.NAME)
        clip_model = load_clip_to_cpu(cfg)
        if run_fp32(cfg.TRAINER.COOP.PREC, self.device):
            clip_model.float()
        clip_model.to(self.device).requires_grad_(False)
        templates = self.templates()
        logger.info("Prompt ensembling over %d template(s), e.g. %r", len(templates), templates[0].format(classnames[0]))
        mean = 0
        with torch.no_grad():
            for template in templates:
                tokens = clip.tokenize([template.format(c) for c in classnames]).to(self.device)
                feats = clip_model.encode_text(tokens)
                mean = mean + feats / feats.norm(dim=-1, keepdim=True)
        mean = mean / len(templates)
        self.text_features = mean / mean.norm(dim=-1, keepdim=True)
        self.clip_model = clip_model

    def model_inference(self, image: torch.Tensor) -> torch.Tensor:
        image_features = self.clip_model.encode_image(image)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        return self.clip_model.logit_scale.exp() * image_features @ self.text_features.t()

    def forward_backward(self, batch: Any) -> Any:
        raise RuntimeError(f"{type(self).__name__} has nothing to train; run it with --eval-only")

    def train(self) -> None:  # type: ignore[override]
        """Nothing to train: without ``--eval-only`` too, evaluate and write results.json."""
        logger.info("%s has no parameters to train; evaluating directly", type(self).__name__)
        self.finalize()


@TRAINER_REGISTRY.register()
class ZeroshotCLIP2(ZeroshotCLIP):
    """Prompt ensembling: the 7 "select" ImageNet templates plus the dataset's (not for ImageNet)."""

    def templates(self) -> List[str]:
        templates = list(IMAGENET_TEMPLATES_SELECT)
        if self.cfg.DATASET.NAME != "ImageNet":
            templates.append(dataset_template(self.cfg.DATASET.NAME))
        return templates
