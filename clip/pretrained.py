"""Default weights per backbone, kept as data.

``MODEL.BACKBONE.WEIGHTS default`` resolves through this table. Values are open_clip pretrained tags,
paths relative to the repository root (repo-local model configs ship their own weights), or ``none``
for a randomly initialised model.
"""
from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Mapping

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"

DEFAULT_WEIGHTS: Mapping[str, str] = MappingProxyType({
    # the paper's backbones (spec §3.1)
    "ViT-B-16": "laion400m_e32",
    "ViT-B-32": "laion400m_e32",
    "ViT-L-14": "laion400m_e32",
    "ViT-g-14": "laion2b_s12b_b42k",
    "EVA01-g-14": "laion400m_s11b_b41k",
    "EVA02-E-14-plus": "laion2b_s9b_b144k",
    # repository model configs (clip/model_configs/)
    "mini-clip": "assets/mini_beyond/mini_clip.safetensors",
    "test-tiny": "none",
    "openai-tiny": "none",  # OpenAI-format dims (heads = width / 64) for the clip.clip API tests
})


def default_weights(model_name: str) -> str:
    """The registered default for ``model_name`` (already normalised, e.g. ``ViT-B-16``)."""
    try:
        return DEFAULT_WEIGHTS[model_name]
    except KeyError:
        raise ValueError(
            f"MODEL.BACKBONE.WEIGHTS 'default' has no entry for model {model_name!r}; registered: "
            f"{sorted(DEFAULT_WEIGHTS)}. Give an open_clip tag, a weight file or 'none' instead."
        ) from None
