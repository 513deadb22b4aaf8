"""CoOp's ``trainers/imagenet_templates.py`` names, so CoOp's own ``zsclip.py`` imports unchanged.

``IMAGENET_TEMPLATES``: the 80 ImageNet prompt templates of the CLIP paper, taken from open_clip's
copy (``open_clip.zero_shot_metadata``) and turned into ``str.format`` strings;
``IMAGENET_TEMPLATES_SELECT``: the 7 "select" templates ZeroshotCLIP2 ensembles (spec §3.5,
``clip.templates.IMAGENET_ENSEMBLE``). Both are lists, as in CoOp: its ZeroshotCLIP2 does
``self.templates += [...]`` on them, which a tuple would refuse (that in-place growth is B26; the
project's own ``zsclip.py`` never mutates them).
"""
from __future__ import annotations

from typing import List

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from clip.templates import IMAGENET_ENSEMBLE

__all__ = ["IMAGENET_TEMPLATES", "IMAGENET_TEMPLATES_SELECT"]

IMAGENET_TEMPLATES: List[str] = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
IMAGENET_TEMPLATES_SELECT: List[str] = list(IMAGENET_ENSEMBLE)
