"""Trainer registry and builder (``TRAINER.NAME``)."""
from __future__ import annotations

import logging
import os.path as osp
from typing import Any

from ..utils import Registry, atomic_write_text

__all__ = ["TRAINER_REGISTRY", "build_trainer"]

logger = logging.getLogger(__name__)

TRAINER_REGISTRY = Registry("TRAINER")


def build_trainer(cfg: Any, **kwargs: Any) -> Any:
    """Look up ``cfg.TRAINER.NAME``, write the resolved config to ``OUTPUT_DIR/config.yaml`` and
    construct the trainer.

    The config is written here rather than in the trainer's constructor because trainers built
    for cross-evaluation share the output directory and must not overwrite it.
    """
    cls = TRAINER_REGISTRY.get(cfg.TRAINER.NAME)
    if cfg.VERBOSE:
        logger.info("Loading trainer: %s", cfg.TRAINER.NAME)
    atomic_write_text(osp.join(cfg.OUTPUT_DIR, "config.yaml"), cfg.dump())
    return cls(cfg, **kwargs)
