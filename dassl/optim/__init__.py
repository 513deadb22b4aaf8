"""Optimizers and learning-rate schedules built from the ``OPTIM`` config node."""
from .lr_scheduler import AVAI_SCHEDS, WARMUP_TYPES, EpochLRScheduler, build_lr_scheduler, check_scheduler_cfg
from .optimizer import AVAI_OPTIMS, build_optimizer, check_optimizer_cfg

__all__ = [
    "build_optimizer",
    "build_lr_scheduler",
    "check_optimizer_cfg",
    "check_scheduler_cfg",
    "EpochLRScheduler",
    "AVAI_OPTIMS",
    "AVAI_SCHEDS",
    "WARMUP_TYPES",
]
