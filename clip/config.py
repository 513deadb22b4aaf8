"""Config keys of the CLIP glue.

``MODEL.BACKBONE.QUICK_GELU`` is stored as a *string* (``"auto"``, ``"true"`` or ``"false"``): yacs
refuses to merge a value whose type differs from the default's, so a boolean default could never be
set back to ``"auto"`` and a string default could never receive a YAML boolean. Write it lower-case
on the command line (``MODEL.BACKBONE.QUICK_GELU true``); in YAML quote it (``QUICK_GELU: "true"``).
:func:`parse_quick_gelu` also accepts real booleans for code that builds a config by hand.
"""
from __future__ import annotations

from typing import Any, Optional

from yacs.config import CfgNode as CN

QUICK_GELU_CHOICES = ("auto", "true", "false")

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def add_clip_config(cfg: CN) -> CN:
    """Add the backbone-weight keys; existing values are left alone so the call is idempotent."""
    if "MODEL" not in cfg:
        cfg.MODEL = CN()
    if "BACKBONE" not in cfg.MODEL:
        cfg.MODEL.BACKBONE = CN()
    backbone = cfg.MODEL.BACKBONE
    if "NAME" not in backbone:
        backbone.NAME = "ViT-B-16"
    if "WEIGHTS" not in backbone:
        # An open_clip pretrained tag, a local weight file, "none" (seeded random init) or "default"
        # (the registered default of the model, see clip/pretrained.py). The reference hard-codes this tag.
        backbone.WEIGHTS = "laion400m_e32"
    if "QUICK_GELU" not in backbone:
        backbone.QUICK_GELU = "auto"
    return cfg


def parse_quick_gelu(value: Any) -> Optional[bool]:
    """``None`` means "auto": follow the pretrained tag's metadata or the model config."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("auto", ""):
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"MODEL.BACKBONE.QUICK_GELU must be one of {QUICK_GELU_CHOICES}, got {value!r}")
