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
    """Look up ``cfg.TRAINER.NAME``, construct the trainer and write the resolved config to
    ``OUTPUT_DIR/config.yaml``.

    The config is written only once the trainer is built, so a config that fails to build (bad
    weights, data) never replaces the ``config.yaml`` of a finished run in the same directory.

    The config is written here rather than in the trainer's constructor because trainers built
    for cross-evaluation share the output directory and must not overwrite it.
    """
    cls = TRAINER_REGISTRY.get(cfg.TRAINER.NAME)
    if cfg.VERBOSE:
        logger.info("Loading trainer: %s", cfg.TRAINER.NAME)
    trainer = cls(cfg, **kwargs)
    atomic_write_text(osp.join(cfg.OUTPUT_DIR, "config.yaml"), cfg.dump())
    return trainer
