"""Project trainers. Importing this package registers every trainer in ``TRAINER_REGISTRY``.

Each module named in ``TRAINER_MODULES`` registers its trainer(s) on import and may define
``add_config(cfg)`` to add its ``TRAINER.<METHOD>.*`` keys; ``train.extend_cfg`` calls
:func:`add_trainer_configs` before any yaml is merged. Like ``datasets/``, this folder is run from
the repository root and never installed.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, List, Tuple

__all__ = ["TRAINER_MODULES", "add_trainer_configs", "trainer_modules"]

#: Modules (relative to this package) that define trainers, in registration order.
TRAINER_MODULES: Tuple[str, ...] = (
    "feature_cache", "fsnl", "zsclip", "coop", "cocoop", "clip_adapter", "taskres", "fsnl_gcd", "aliases",
)


def trainer_modules() -> List[ModuleType]:
    """Import (once) and return every module listed in ``TRAINER_MODULES``."""
    return [importlib.import_module(f"{__name__}.{name}") for name in TRAINER_MODULES]


def add_trainer_configs(cfg: Any) -> None:
    """Let every trainer module add its config keys (modules without ``add_config`` are skipped)."""
    for module in trainer_modules():
        add_config = getattr(module, "add_config", None)
        if callable(add_config):
            add_config(cfg)


trainer_modules()
