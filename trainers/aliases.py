"""The original CoOp trainer names (``CoOp``, ``CoCoOp``, ``ZeroshotCLIP``, ``ZeroshotCLIP2``).

The reference kept CoOp's own trainers on a vendored OpenAI CLIP (spec §3.8). Here each name is the
OpenCLIP trainer of the same method with OpenAI's ViT-B/16 weights (QuickGELU, as OpenAI trained
it) preset, so ``--trainer CoOp`` style commands run unchanged. CoOp's default ``PREC fp16`` comes
from ``TRAINER.COOP.PREC`` / ``TRAINER.COCOOP.PREC``; on CPU the loader runs fp32. Unlike the
reference's legacy trainers they know the LAION-Beyond domain templates.
"""
from __future__ import annotations

from dassl.engine import TRAINER_REGISTRY

from .cocoop import CoCoOp_openclip
from .coop import CoOp_openclip
from .zsclip import ZeroshotCLIP2_openclip, ZeroshotCLIP_openclip

__all__ = ["CoOp", "CoCoOp", "ZeroshotCLIP", "ZeroshotCLIP2", "OPENAI_VIT_B16"]

#: (model, open_clip pretrained tag, QUICK_GELU) of CoOp's default backbone.
OPENAI_VIT_B16 = ("ViT-B-16", "openai", "true")


@TRAINER_REGISTRY.register()
class CoOp(CoOp_openclip):
    """CoOp on OpenAI ViT-B/16."""

    BACKBONE_PRESET = OPENAI_VIT_B16


@TRAINER_REGISTRY.register()
class CoCoOp(CoCoOp_openclip):
    """CoCoOp on OpenAI ViT-B/16."""

    BACKBONE_PRESET = OPENAI_VIT_B16


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(ZeroshotCLIP_openclip):
    """Zero-shot CLIP (single template) on OpenAI ViT-B/16."""

    BACKBONE_PRESET = OPENAI_VIT_B16


@TRAINER_REGISTRY.register()
class ZeroshotCLIP2(ZeroshotCLIP2_openclip):
    """Zero-shot CLIP with the template ensemble on OpenAI ViT-B/16."""

    BACKBONE_PRESET = OPENAI_VIT_B16
