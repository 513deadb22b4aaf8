"""CLIP-Adapter (Gao et al., IJCV 2023) as used as a baseline in the LAION-Beyond paper (spec §3.6).

CLIP stays frozen. A small bottleneck MLP ``A`` reads the (unnormalised, projected) image feature and
is blended back with a residual ratio ``r``::

    f' = r · A(f) + (1 − r) · f,     A = Linear(D→D/red, no bias) → ReLU → Linear(→D, no bias) → ReLU

The class scores are ``s · cos(f', t_c)`` with ``t_c`` the zero-shot text feature of
``a photo of {name}, a type of {hint}.``. Only the adapter is optimised (cross-entropy).

Differences from the reference, all deliberate:

* B27 the adapter width ``D`` comes from the backbone (``LoadedCLIP.embed_dim``), not a hard-coded 512,
  and the ratio / reduction are config keys (reference values 0.2 / 4);
* B27 / P5 the class text features are computed once when the model is built, on the trainer's device,
  and kept as a non-persistent buffer (the reference moved tokens to a hard-coded CUDA device and ran the
  whole text tower on every forward);
* B30 precision follows ``TRAINER.CLIP_ADAPTER.PREC`` through ``ClipTrainer`` (fp32 on CPU); the
  adapter itself and the loss always run in fp32.

The adapter does not depend on the label space, so IP / All evaluation rebuilds the text features for
the new class names and applies the trained adapter unchanged (as in the reference).
"""
from __future__ import annotations

import logging
from typing import Any, Dict

import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from clip.loader import expected_embed_dim
from dassl.engine import TRAINER_REGISTRY
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer

from .base import ClipTrainer

logger = logging.getLogger(__name__)

#: Class prompts are encoded in chunks of this many, so label spaces of any size fit in memory.


def add_config(cfg: CN) -> None:
    """``TRAINER.CLIP_ADAPTER.*`` with the reference's values (spec §3.6, §12.2)."""
    cfg.TRAINER.CLIP_ADAPTER = CN()
    cfg.TRAINER.CLIP_ADAPTER.RATIO = 0.2  # weight of the adapter branch in the residual blend
    cfg.TRAINER.CLIP_ADAPTER.REDUCTION = 4  # bottleneck width = D // REDUCTION
    cfg.TRAINER.CLIP_ADAPTER.PREC = "fp32"


add_clip_adapter_config = add_config


class Adapter(nn.Module):
    """The bottleneck MLP of CLIP-Adapter (both layers bias-free, ReLU after each)."""

    def __init__(self, dim: int, reduction: int) -> None:
        super().__init__()
        if reduction < 1 or dim // reduction < 1:
            raise ValueError(f"TRAINER.CLIP_ADAPTER.REDUCTION must be in [1, {dim}], got {reduction}")
        hidden = dim // reduction
        self.fc = nn.Sequential(
            nn.Linear(dim, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, dim, bias=False),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class AdapterCLIP(nn.Module):
    """Frozen CLIP + image-side residual adapter + fixed class text features.

    Only ``adapter`` is a registered sub-module; the CLIP model is held by reference (it is shared with
    the cross-evaluation trainers and must never appear in this module's state dict or parameters).
    """

    def __init__(self, trainer: CLIP_Adapter) -> None:
        super().__init__()
        cfg = trainer.cfg.TRAINER.CLIP_ADAPTER
        loaded = trainer.clip
        self.ratio = float(cfg.RATIO)
        self.adapter = Adapter(int(loaded.embed_dim), int(cfg.REDUCTION))
        self.classnames = trainer.display_names(trainer.classnames)
        text = trainer.encode_class_texts(trainer.class_template(), self.classnames)
        self.register_buffer("text_features", text, persistent=False)
        self.register_buffer("logit_scale", trainer.logit_scale.clone(), persistent=False)

    def adapt(self, feats: torch.Tensor) -> torch.Tensor:
        """``r · A(f) + (1 − r) · f`` in fp32 on the raw projected feature, L2-normalised."""
        mixed = self.ratio * self.adapter(feats) + (1.0 - self.ratio) * feats
        return F.normalize(mixed, dim=-1)

    def forward(self, raw_feats: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.adapt(raw_feats) @ self.text_features.t()


@TRAINER_REGISTRY.register()
class CLIP_Adapter(ClipTrainer):
    """CLIP-Adapter on an OpenCLIP backbone (``MODEL.BACKBONE.{NAME,WEIGHTS}``)."""

    PREC_KEY = "CLIP_ADAPTER"

    def check_cfg(self, cfg: CN) -> None:
        super().check_cfg(cfg)
        ratio = float(cfg.TRAINER.CLIP_ADAPTER.RATIO)
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"TRAINER.CLIP_ADAPTER.RATIO must be in [0, 1], got {ratio}")
        # the bottleneck width D // REDUCTION must be >= 1: checked against the declared width here, so a
        # bad value is one line before the data and the backbone load (Adapter checks again once D is known)
        reduction = cfg.TRAINER.CLIP_ADAPTER.REDUCTION
        dim = expected_embed_dim(cfg)
        if not isinstance(reduction, int) or isinstance(reduction, bool) or reduction < 1 or (dim and dim // reduction < 1):
            raise ValueError(f"TRAINER.CLIP_ADAPTER.REDUCTION must be an integer in [1, {dim or 'D'}] (the adapter's "
                             f"bottleneck is D // REDUCTION wide), got {reduction!r}")

    def build_model(self) -> None:
        cfg = self.cfg
        self.load_clip()
        self.model = AdapterCLIP(self).to(self.device)
        self.adapter = self.model.adapter
        self.optim = build_optimizer(self.adapter, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("adapter", self.adapter, self.optim, self.sched)
        self.scaler = self.build_scaler()
        n_params = sum(p.numel() for p in self.adapter.parameters())
        logger.info("CLIP-Adapter: %d classes, D=%d, reduction=%d, ratio=%.3g, %d trainable parameters",
                    len(self.model.classnames), int(self.clip.embed_dim), int(cfg.TRAINER.CLIP_ADAPTER.REDUCTION),
                    self.model.ratio, n_params)

    def checkpoint_meta(self) -> Dict[str, Any]:
        meta = super().checkpoint_meta()
        meta.update(ratio=float(self.model.ratio), reduction=int(self.cfg.TRAINER.CLIP_ADAPTER.REDUCTION))
        return meta

    def forward_backward(self, batch: Dict[str, Any]) -> Dict[str, float]:
        labels = batch["label"].to(self.device)
        logits = self.model(self.batch_features(batch, normalize=False))
        loss = F.cross_entropy(logits.float(), labels)
        self.optimize(loss)
        self.maybe_update_lr()
        return {"loss": loss.item(), "acc": compute_accuracy(logits.detach(), labels)[0].item()}

    def compute_text_features(self) -> torch.Tensor:
        return self.model.text_features

    def logits_from_features(self, feats: torch.Tensor) -> torch.Tensor:
        return self.model(feats)
