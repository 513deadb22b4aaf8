"""Dataset registry and builder (looked up by ``cfg.DATASET.NAME``)."""
from __future__ import annotations

import logging
from typing import Any, Dict, List

from dassl.utils.registry import Registry, RegistryKeyError, closest_name

__all__ = ["DATASET_REGISTRY", "build_dataset", "data_dirs", "data_identity"]

logger = logging.getLogger(__name__)

DATASET_REGISTRY = Registry("DATASET")


def build_dataset(cfg: Any) -> Any:
    """Instantiate the registered dataset named by ``cfg.DATASET.NAME`` with ``cfg``."""
    name = cfg.DATASET.NAME
    available = DATASET_REGISTRY.registered_names()
    if name not in DATASET_REGISTRY:
        hint = closest_name(name, available) if name else None
        suggestion = f' Did you mean "{hint}"?' if hint else ""
        # Datasets register themselves when their module is imported; an empty registry almost
        # always means the caller forgot `import datasets` (train.py does it).
        where = (
            " No dataset is registered yet: import the `datasets` package (run from the repository root)."
            if not available
            else f" Registered: {', '.join(sorted(available))}"
        )
        raise RegistryKeyError(f'Unknown dataset "{name}" (cfg.DATASET.NAME).{suggestion}{where}')
    if getattr(cfg, "VERBOSE", False):
        logger.info("Loading dataset: %s", name)
    return DATASET_REGISTRY.get(name)(cfg)


def data_identity(cfg: Any) -> Dict[str, Any]:
    """What the data of ``cfg`` *is*, from the config alone (no images read): the registered dataset
    class's ``data_identity(cfg)`` hook (e.g. the split files' SHA-256), ``{}`` for a dataset without
    one. The run fingerprint and the feature files' job identity both use it."""
    name = str(cfg.DATASET.NAME)
    dataset_cls = DATASET_REGISTRY.get(name) if name in DATASET_REGISTRY else None
    identity = getattr(dataset_cls, "data_identity", None)
    return dict(identity(cfg)) if callable(identity) else {}


def data_dirs(cfg: Any) -> List[str]:
    """The folders ``cfg``'s dataset reads (images and split files), from the config alone: the registered
    class's ``data_dirs(cfg)`` hook, ``[]`` for a dataset without one. No run may write inside them."""
    name = str(cfg.DATASET.NAME)
    dataset_cls = DATASET_REGISTRY.get(name) if name in DATASET_REGISTRY else None
    dirs = getattr(dataset_cls, "data_dirs", None)
    return [str(d) for d in dirs(cfg)] if callable(dirs) else []
