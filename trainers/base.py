"""Shared plumbing for trainers built on a frozen OpenCLIP model.

Every method in this repository keeps CLIP frozen and trains a small module (names, context vectors,
an adapter, a residual). What they share lives here, so each trainer file only holds its method:

* loading CLIP once (and sharing it with the trainers built for cross-subset evaluation),
* precision that follows the device (``PREC``: fp32 | fp16 | amp | bf16; CPU always runs fp32),
* frozen image features under ``inference_mode`` and autocast,
* class-text features computed once per ``test()`` call instead of once per batch (P1),
* one optimisation step that handles the AMP GradScaler, so no trainer re-implements it.
"""
from __future__ import annotations

import logging
from typing import Any, ContextManager, Dict, List, Optional

import torch
import torch.nn.functional as F

from clip import LoadedCLIP, Precision, autocast, load_clip, normalize_name, resolve_precision
from clip.templates import DEFAULT_TEMPLATE
from dassl.engine import TrainerX

logger = logging.getLogger(__name__)

VALID_PRECISIONS = ("fp32", "fp16", "amp", "bf16")


class ClipTrainer(TrainerX):
    """A Dassl ``TrainerX`` around a frozen OpenCLIP model.

    Subclasses set ``PREC_KEY`` (the ``cfg.TRAINER.<KEY>.PREC`` they read) and implement
    ``build_model`` plus, for trainable methods, ``forward_backward``. Trainers whose class scores
    come from a fixed set of class text features implement ``compute_text_features()``; the base
    class then caches those features for the whole of each ``test()`` call.
    """

    PREC_KEY: str = "COOP"
    #: ``(backbone name, weights)`` forced by trainer variants such as ``FSNL_openclip_2B``; applied
    #: by :func:`preset_cfg` before the command line, so ``--backbone`` and opts still win.
    BACKBONE_PRESET: Optional[tuple] = None

    # ------------------------------------------------------------------ config
    @classmethod
    def preset_cfg(cls, cfg: Any) -> None:
        """Write the variant's backbone into ``cfg`` (called by ``train.setup_cfg``)."""
        if cls.BACKBONE_PRESET is None:
            return
        name, weights, *rest = cls.BACKBONE_PRESET
        cfg.MODEL.BACKBONE.NAME = name
        cfg.MODEL.BACKBONE.WEIGHTS = weights
        if rest:
            cfg.MODEL.BACKBONE.QUICK_GELU = rest[0]

    def check_cfg(self, cfg: Any) -> None:
        prec = self.prec_name(cfg)
        if prec not in VALID_PRECISIONS:
            raise ValueError(
                f"TRAINER.{self.PREC_KEY}.PREC must be one of {VALID_PRECISIONS}, got {prec!r}"
            )

    @classmethod
    def prec_name(cls, cfg: Any) -> str:
        node = cfg.TRAINER.get(cls.PREC_KEY)
        return str(node.PREC) if node is not None and "PREC" in node else "fp32"

    @property
    def precision(self) -> Precision:
        if not hasattr(self, "_precision"):
            self._precision = resolve_precision(self.prec_name(self.cfg), self.device)
        return self._precision

    def autocast(self) -> ContextManager:
        return autocast(self.precision, self.device)

    # ------------------------------------------------------------------ CLIP
    def load_clip(self) -> LoadedCLIP:
        """Load (or reuse) the frozen CLIP for this backbone, weights and precision."""
        bb = self.cfg.MODEL.BACKBONE
        key = ("clip", bb.NAME, bb.get("WEIGHTS", ""), str(bb.get("QUICK_GELU", "auto")),
               self.precision.name, str(self.device))
        cached = self.shared.get(key)
        if cached is None:
            cached = load_clip(self.cfg, self.device, self.precision.name)
            self.shared[key] = cached
        self.clip = cached
        self.check_input_size(cached)
        return cached

    def check_input_size(self, loaded: LoadedCLIP) -> None:
        size = tuple(self.cfg.INPUT.SIZE)
        expected = loaded.image_size
        expected = tuple(expected) if isinstance(expected, (tuple, list)) else (expected, expected)
        if size != expected:
            raise ValueError(
                f"INPUT.SIZE {size} does not match the backbone's image size {expected}; "
                f"set INPUT.SIZE {list(expected)}"
            )

    @property
    def classnames(self) -> List[str]:
        return list(self.dm.dataset.classnames)

    @property
    def hint(self) -> Optional[str]:
        return getattr(self.dm.dataset, "hint", None)

    def class_template(self) -> str:
        """The dataset's single zero-shot template with ``{}`` for the name."""
        hint = self.hint
        if hint:
            return "a photo of {}, a type of " + hint + "."
        return DEFAULT_TEMPLATE

    @staticmethod
    def display_names(classnames: List[str]) -> List[str]:
        return [normalize_name(c) for c in classnames]

    # ------------------------------------------------------------------ features
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image features of the frozen visual tower (fp32 result)."""
        model = self.clip.model
        with torch.no_grad(), self.autocast():
            feats = model.encode_image(images.to(self.device, dtype=self.clip.dtype))
        return F.normalize(feats.float(), dim=-1)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.model.logit_scale.detach().exp().float()

    def compute_text_features(self) -> torch.Tensor:
        """Normalised ``[C, D]`` class text features; trainers with fixed class prompts override."""
        raise NotImplementedError

    def before_test(self) -> None:
        self._text_cache = None
        try:
            with torch.no_grad():
                self._text_cache = self.compute_text_features()
        except NotImplementedError:
            self._text_cache = None

    def after_test(self) -> None:
        self._text_cache = None

    def cached_text_features(self) -> torch.Tensor:
        cache = getattr(self, "_text_cache", None)
        if cache is None:
            with torch.no_grad():
                cache = self.compute_text_features()
        return cache

    def model_inference(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.encode_images(images)
        return self.logit_scale * feats @ self.cached_text_features().t()

    # ------------------------------------------------------------------ optimisation
    def build_scaler(self) -> Optional[torch.amp.GradScaler]:
        if self.precision.use_scaler:
            return torch.amp.GradScaler(self.device.type)
        return None

    def optimize(self, loss: torch.Tensor, names: Optional[List[str]] = None) -> None:
        """Backward + step for ``loss``, through the GradScaler under AMP."""
        scaler = getattr(self, "scaler", None)
        if scaler is None:
            self.model_backward_and_update(loss, names)
            return
        self.detect_anomaly(loss)
        self.model_zero_grad(names)
        scaler.scale(loss).backward()
        for name in self.get_model_names(names):
            if self._optims.get(name) is not None:
                scaler.step(self._optims[name])
        scaler.update()

    def maybe_update_lr(self) -> None:
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()

    def parse_batch_train(self, batch: Dict[str, Any]):
        images = batch["img"].to(self.device)
        labels = batch["label"].to(self.device)
        return images, labels

