"""Trainer registry and builder (``TRAINER.NAME``)."""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional

from ..results import fingerprint, source_identity, write_config
from ..utils import Registry

__all__ = ["TRAINER_REGISTRY", "build_trainer", "expected_fingerprint"]

logger = logging.getLogger(__name__)

TRAINER_REGISTRY = Registry("TRAINER")


def expected_fingerprint(cfg: Any, model_dir: str = "", load_epoch: Optional[int] = None,
                         identity_cfg: Any = None) -> Dict[str, Any]:
    """The fingerprint a run of ``cfg`` will record (dassl.results), computed from the config, the
    trainer class's ``identity_parts(cfg)`` and, for an evaluation, the model dir it loads, without
    building anything: what a sweep compares with a finished run's ``results.json``. It lacks only the
    few-shot digest, which ``id`` does not cover.

    ``identity_cfg`` is ``cfg`` with its file paths resolved where this process can read them (a job
    that runs in another directory names its weights file relative to that one): the identity parts
    come from it, the recorded config stays ``cfg``, as the job writes it."""
    name = str(cfg.TRAINER.NAME)
    cls = TRAINER_REGISTRY.get(name)
    parts = cls.identity_parts(identity_cfg if identity_cfg is not None else cfg) if hasattr(cls, "identity_parts") else {}
    source = source_identity(model_dir, load_epoch, str(cfg.OUTPUT_DIR)) if model_dir else None
    return fingerprint(cfg, trainer=name, source=source, **parts)


def build_trainer(cfg: Any, **kwargs: Any) -> Any:
    """Look up ``cfg.TRAINER.NAME``, construct the trainer and write the resolved config to
    ``OUTPUT_DIR/config.yaml``, headed by the run fingerprint as comments (dassl.results).

    The config is written only once the trainer is built, so a config that fails to build (bad
    weights, data) never replaces the ``config.yaml`` of a finished run in the same directory.

    The config is written here rather than in the trainer's constructor because trainers built
    for cross-evaluation share the output directory and must not overwrite it.
    """
    cls = TRAINER_REGISTRY.get(cfg.TRAINER.NAME)
    if cfg.VERBOSE:
        logger.info("Loading trainer: %s", cfg.TRAINER.NAME)
    trainer = cls(cfg, **kwargs)
    fp = expected_fingerprint(cfg)
    write_config(cfg.OUTPUT_DIR, cfg.dump(), fp)
    logger.info("Run fingerprint %s (without seed: %s)", fp["id"], fp["group"])
    return trainer
