"""Project datasets. Importing this package registers every dataset in ``DATASET_REGISTRY``.

This folder is run from the repository root and never installed: an installed ``datasets`` would
shadow Hugging Face's package of the same name.
"""
from __future__ import annotations

from dassl.ctrl_c import quiet_ctrl_c_while_package_loads

quiet_ctrl_c_while_package_loads()  # `python -m datasets.check`: this package loads torch before check's guard

from typing import Any  # noqa: E402

# Imported for their side effect: the nine LAION-Beyond and the five Mini-Beyond domains register.
from . import gcd, laion_beyond, mini_beyond  # noqa: F401, E402
from .laion_beyond import LaionBeyond  # noqa: E402

__all__ = ["add_dataset_config", "LaionBeyond"]


def add_dataset_config(cfg: Any) -> None:
    """Add the project's DATASET keys (called by ``train.extend_cfg`` before any yaml is merged)."""
    cfg.DATASET.SUB_CLASSES = "OOP"  # OOP | IP | All
    cfg.DATASET.USE_SUPERCLASS_F_ZS_TEST = False  # labels/classnames from s_label/superclass
    cfg.DATASET.SUBFIELD = "Pokemon"  # LAION_Beyond_GCD only
    cfg.DATASET.SUBSAMPLE_CLASSES = "all"  # all | base | new (CoOp benchmarks only)
    cfg.DATASET.FEWSHOT_CACHE_DIR = ""  # "" = <subset dir>/split_fewshot, else <dir>/<subset dir name>
