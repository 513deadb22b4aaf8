"""Prompt templates and the per-domain hint words (spec §2.3, §3.5), kept as immutable data."""
from __future__ import annotations

import difflib
from types import MappingProxyType
from typing import Mapping, Tuple

#: Hint word(s) per LAION-Beyond dataset name (``DATASET.NAME``).
DOMAIN_HINTS: Mapping[str, str] = MappingProxyType({
    "Pokemon89_39": "pokemon",
    "Animals92_42": "animal",
    "Architecture50_23": "architecture",
    "Attire54_28": "attire",
    "FolkArt59_27": "folk art",
    "Food53_27": "food",
    "Insects_Spiders106_52": "insect or spider",
    "Landmark59_30": "landmark",
    "Plants_Fugi113_56": "plant or fungus",
})

#: FSNL's prompt: ``{name}`` becomes a name slot, ``{hint}`` is filled per domain.
FSNL_TEMPLATE = "a photo of {name}, a type of {hint}."
#: Zero-shot template of the LAION domains: ``{}`` for the name (str.format style).
ZS_TEMPLATE = "a photo of {}, a type of {hint}."
#: Single template for datasets without a hint.
DEFAULT_TEMPLATE = "a photo of a {}."

#: The 7 "select" ImageNet templates of ZeroshotCLIP2 (spec §3.5).
IMAGENET_ENSEMBLE: Tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


def hint_for(dataset_name: str) -> str:
    """The hint of a dataset, with the closest known name in the error."""
    try:
        return DOMAIN_HINTS[dataset_name]
    except KeyError:
        close = difflib.get_close_matches(dataset_name, list(DOMAIN_HINTS), n=1)
        raise KeyError(
            f"No hint for dataset {dataset_name!r}" + (f"; did you mean {close[0]!r}?" if close else "")
        ) from None


def fill_hint(template: str, hint: str) -> str:
    """Fill ``{hint}`` only, leaving the name placeholder (``{}`` or ``{name}``) in place."""
    return template.replace("{hint}", hint)


def zs_template(hint: str) -> str:
    """``a photo of {}, a type of <hint>.``"""
    return fill_hint(ZS_TEMPLATE, hint)


def ensemble_templates(hint: str) -> Tuple[str, ...]:
    """The ImageNet ensemble plus the domain template, as a new tuple.

    B26: the reference appended the domain template to the shared class-level list in place, so the
    list grew with every trainer instance; the module constant here is a tuple and never changes.
    """
    return IMAGENET_ENSEMBLE + (zs_template(hint),)
