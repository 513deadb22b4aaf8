"""Optimizers and learning-rate schedules built from the ``OPTIM`` config node."""
from .lr_scheduler import AVAI_SCHEDS, WARMUP_TYPES, EpochLRScheduler, build_lr_scheduler
from .optimizer import AVAI_OPTIMS, build_optimizer

__all__ = [
    "build_optimizer",
    "build_lr_scheduler",
    "EpochLRScheduler",
    "AVAI_OPTIMS",
    "AVAI_SCHEDS",
    "WARMUP_TYPES",
]
