"""What the project's OpenAI-CLIP trainers (``coop.py``, ``cocoop.py``, ``zsclip.py``) share.

Each of those three files imports its helpers from here and never from another of them, so any of
them can be replaced by CoOp's own file without breaking the others (CoOp's ``zsclip.py`` imports
``load_clip_to_cpu`` from ``.coop``; ``coop.py`` re-exports it). A private module: trainer discovery
skips it.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from clip import clip

__all__ = ["OPENAI_WEIGHTS", "PRECISIONS", "TextEncoder", "check_backbone", "check_precision", "load_clip_to_cpu", "run_fp32"]

#: ``MODEL.BACKBONE.WEIGHTS`` values that agree with how ``clip.load`` finds OpenAI weights.
OPENAI_WEIGHTS = ("", "none", "openai")

#: ``TRAINER.COOP.PREC`` / ``TRAINER.COCOOP.PREC`` values CoOp accepts.
PRECISIONS = ("fp16", "fp32", "amp")


def check_backbone(cfg: Any) -> None:
    """``MODEL.BACKBONE.NAME`` must be a ``clip._MODELS`` key whose weight file is found and reads as
    weights (checked before any data is built)."""
    backbone_name = cfg.MODEL.BACKBONE.NAME
    if backbone_name not in clip._MODELS:
        raise clip.BackboneError(
            f"MODEL.BACKBONE.NAME {backbone_name!r} is not an OpenAI CLIP name; OpenAI-CLIP trainers "
            f"take one of {clip.available_models()} (OpenCLIP models: use the *_openclip trainers)"
        )
    # clip.load picks the file by name (~/.cache/clip/, open_clip's cache, CLIP_WEIGHTS): any other
    # MODEL.BACKBONE.WEIGHTS was silently ignored while results.json named it as the weights used.
    weights = str(cfg.MODEL.BACKBONE.get("WEIGHTS", "") or "")
    if weights not in OPENAI_WEIGHTS:
        raise clip.BackboneError(
            f"MODEL.BACKBONE.WEIGHTS {weights!r} is not used by OpenAI-CLIP trainers, which load the weights "
            f"of MODEL.BACKBONE.NAME by name; set it to 'openai' (or 'none' for openai-tiny) and point "
            f"{clip.WEIGHTS_ENV} at a local weight file instead"
        )
    # the file clip._download resolves must read as weights: a truncated CLIP_WEIGHTS file was a torch.load
    # traceback after the data was built (clip.openai_weights_identity owns the check)
    clip.openai_weights_identity(cfg)


def check_precision(prec: str, key: str) -> None:
    if prec not in PRECISIONS:
        raise ValueError(f"{key} must be one of {PRECISIONS}, got {prec!r}")


def load_clip_to_cpu(cfg: Any) -> clip.CLIP:
    """OpenAI CLIP named by ``MODEL.BACKBONE.NAME`` (a ``clip._MODELS`` key), as CoOp loads it."""
    check_backbone(cfg)
    model_path = clip._download(clip._MODELS[cfg.MODEL.BACKBONE.NAME])
    return clip.build_model(clip.load_state_dict(model_path))


def run_fp32(cfg_prec: str, device: torch.device) -> bool:
    """CoOp converts CLIP to fp32 for ``fp32``/``amp``; here also on CPU (B30)."""
    return cfg_prec in ("fp32", "amp") or device.type == "cpu"


class TextEncoder(nn.Module):
    """CLIP's text tower on prompt *embeddings* (OpenAI layout: sequence-first transformer)."""

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        self.transformer = clip_model.transformer
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.dtype = clip_model.dtype

    def forward(self, prompts: torch.Tensor, tokenized_prompts: torch.Tensor) -> torch.Tensor:
        x = prompts + self.positional_embedding.type(self.dtype)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)  # NLD -> LND -> NLD
        x = self.ln_final(x).type(self.dtype)
        eot = tokenized_prompts.argmax(dim=-1)
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection
