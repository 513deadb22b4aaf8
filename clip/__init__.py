"""OpenCLIP glue: backbone loading and precision, the text tower on embeddings, name slots, templates.

This package is deliberately named ``clip`` (it shadows OpenAI's package of that name); open_clip is
imported as ``open_clip``. Because it shadows OpenAI's package, it also provides OpenAI CLIP's API,
implemented on open_clip, in the submodules CoOp-family trainers import: ``from clip import clip``
(``clip.clip``: load / tokenize / _MODELS / _download / build_model), ``clip.model`` and
``clip.simple_tokenizer``. They are not imported here, so the glue does not depend on them.
"""
from . import templates
from .config import add_clip_config, parse_quick_gelu
from .loader import (
    BackboneError,
    BackboneNotFoundError,
    BackboneSpec,
    LoadedCLIP,
    Precision,
    autocast,
    cpu_supports_bf16,
    drawn_anew,
    load_clip,
    make_grad_scaler,
    normalize_model_name,
    register_repo_configs,
    resolve_backbone,
    resolve_precision,
    weights_identity,
)
from .prompts import (
    NameMatcher,
    PromptBank,
    PromptBatch,
    ReferenceNameMatcher,
    Slot,
    assemble,
    bank_offsets,
    class_prompt_pieces,
    name_slot_ids,
    normalize_name,
    reference_normalize_name,
    scatter_names,
    tokenize_pieces,
)
from .text import TextEncoder

__all__ = [
    "weights_identity",
    "drawn_anew",
    "BackboneError",
    "BackboneNotFoundError",
    "BackboneSpec",
    "LoadedCLIP",
    "NameMatcher",
    "ReferenceNameMatcher",
    "Precision",
    "PromptBank",
    "PromptBatch",
    "Slot",
    "TextEncoder",
    "add_clip_config",
    "assemble",
    "autocast",
    "bank_offsets",
    "class_prompt_pieces",
    "load_clip",
    "make_grad_scaler",
    "name_slot_ids",
    "normalize_model_name",
    "normalize_name",
    "reference_normalize_name",
    "parse_quick_gelu",
    "register_repo_configs",
    "resolve_backbone",
    "cpu_supports_bf16",
    "resolve_precision",
    "scatter_names",
    "templates",
    "tokenize_pieces",
]
