"""Epoch-wise learning-rate schedules with optional warm-up, as one closed-form scheduler.

Dassl wraps a torch scheduler in a warm-up scheduler whose ``state_dict`` contains the wrapped
scheduler *object*; such checkpoints do not load with ``weights_only=True`` (bug B15), and the old
``verbose`` argument is gone from recent torch. Here the learning rate of epoch ``e`` is a pure
function of ``e`` and a few numbers, so the state is numbers only and a resumed run gets exactly
the values an uninterrupted run would.

Per-epoch values (``base`` = the param group's initial LR, ``T`` = MAX_EPOCH, ``W`` = WARMUP_EPOCH):

* warm-up epochs ``e < W``: constant → WARMUP_CONS_LR; linear → WARMUP_MIN_LR at ``e = 0``, then
  ``base·e/W``;
* afterwards the main schedule at step ``t = e − W`` (WARMUP_RECOUNT True) or ``t = e`` (False):
  cosine ``base·½(1+cos(π·t/T))``, single_step ``base·γ^⌊t/step⌋``, multi_step
  ``base·γ^(#milestones ≤ t)``.

With cosine + 1 constant warm-up epoch this reproduces spec §10.5 exactly: epoch 0 at the warm-up
LR, epoch 1 at ``base``, epoch e ≥ 1 at ``base·½(1+cos(π(e−1)/T))``. (Dassl's non-recount path
re-entered a recursive cosine formula at the wrong point; the closed form has no such drift.)
"""
from __future__ import annotations

import bisect
import math
from typing import Any, List, Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler

from ..utils.registry import check_availability
from .optimizer import nonnegative

__all__ = ["build_lr_scheduler", "check_scheduler_cfg", "EpochLRScheduler", "AVAI_SCHEDS", "WARMUP_TYPES",
           "missing_state_keys"]

AVAI_SCHEDS = ("single_step", "multi_step", "cosine")
WARMUP_TYPES = ("constant", "linear")


class EpochLRScheduler(LRScheduler):
    """Closed-form epoch schedule; call ``step()`` once at the end of every epoch."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        kind: str = "cosine",
        max_epoch: int = 10,
        stepsize: Sequence[int] = (-1,),
        gamma: float = 0.1,
        warmup_epoch: int = 0,
        warmup_type: str = "constant",
        warmup_cons_lr: float = 1e-5,
        warmup_min_lr: float = 1e-5,
        warmup_recount: bool = True,
        last_epoch: int = -1,
    ) -> None:
        check_availability(kind, AVAI_SCHEDS)
        if warmup_epoch > 0:
            check_availability(warmup_type, WARMUP_TYPES)
        self.kind = str(kind)
        self.max_epoch = int(max_epoch)
        self.stepsize = [int(s) for s in stepsize]
        self.gamma = float(gamma)
        self.warmup_epoch = max(int(warmup_epoch), 0)
        self.warmup_type = str(warmup_type)
        self.warmup_cons_lr = float(warmup_cons_lr)
        self.warmup_min_lr = float(warmup_min_lr)
        self.warmup_recount = bool(warmup_recount)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch: int, base_lr: float) -> float:
        """Learning rate used during (0-based) ``epoch`` for a group whose initial LR is ``base_lr``."""
        w = self.warmup_epoch
        if epoch < w:
            if self.warmup_type == "constant":
                return self.warmup_cons_lr
            if epoch == 0:
                return self.warmup_min_lr
            return base_lr * epoch / w
        t = epoch - w if self.warmup_recount else epoch
        if self.kind == "cosine":
            return base_lr * 0.5 * (1.0 + math.cos(math.pi * t / self.max_epoch))
        if self.kind == "single_step":
            step = self.stepsize[-1] if self.stepsize else -1
            if step <= 0:
                step = self.max_epoch
            return base_lr * self.gamma ** (t // step)
        milestones = sorted(self.stepsize)
        return base_lr * self.gamma ** bisect.bisect_right(milestones, t)

    def get_lr(self) -> List[float]:
        return [self.lr_at(self.last_epoch, float(b)) for b in self.base_lrs]

    def _get_closed_form_lr(self) -> List[float]:
        return self.get_lr()


#: What a resumed :class:`EpochLRScheduler` needs from a checkpoint's scheduler state: its schedule and
#: position (torch's private bookkeeping may differ between torch versions and is not required).
_STATE_KEYS = ("kind", "max_epoch", "stepsize", "gamma", "warmup_epoch", "warmup_type", "warmup_cons_lr",
               "warmup_min_lr", "warmup_recount", "last_epoch", "base_lrs")


def missing_state_keys(scheduler: Any, state: Any) -> List[str]:
    """The keys ``scheduler`` needs that a checkpoint's scheduler ``state`` lacks (all of them when it is
    not a dict). ``load_state_dict`` merges any dict into the scheduler, so a partial state resumed
    silently at epoch 0 of the schedule."""
    needed = _STATE_KEYS if isinstance(scheduler, EpochLRScheduler) else ("last_epoch",)
    return [k for k in needed if not isinstance(state, dict) or k not in state]


def _stepsizes(optim_cfg: Any) -> List[Any]:
    stepsize = optim_cfg.STEPSIZE
    return [stepsize] if isinstance(stepsize, int) else list(stepsize)


def check_scheduler_cfg(optim_cfg: Any) -> None:
    """Raise a ``ValueError`` naming the ``OPTIM`` key the schedule cannot use, before any model is
    built. Only what the chosen schedule and warm-up read is checked. A negative ``GAMMA`` or warm-up
    LR trained with a negative learning rate (gradient *ascent*) without a word; a bad ``WARMUP_TYPE``
    or milestone was a traceback once data and backbone were loaded."""
    kind = optim_cfg.LR_SCHEDULER
    check_availability(kind, AVAI_SCHEDS)
    if kind in ("single_step", "multi_step"):  # cosine reads neither STEPSIZE nor GAMMA
        _check_steps(optim_cfg, kind)
    _check_warmup(optim_cfg)


def _check_steps(optim_cfg: Any, kind: str) -> None:
    stepsize = _stepsizes(optim_cfg)
    if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and float(s).is_integer() for s in stepsize):
        raise ValueError(f"OPTIM.STEPSIZE must be whole numbers of epochs for {kind}, got {optim_cfg.STEPSIZE!r}")
    if kind == "multi_step" and (not stepsize or any(s <= 0 for s in stepsize)):
        raise ValueError(f"multi_step needs positive OPTIM.STEPSIZE milestones, got {stepsize}")
    if not nonnegative(optim_cfg.GAMMA):
        raise ValueError(f"OPTIM.GAMMA (the LR decay factor of {kind}) must be a finite number >= 0, "
                         f"got {optim_cfg.GAMMA!r}")


def _check_warmup(optim_cfg: Any) -> None:
    if int(optim_cfg.WARMUP_EPOCH) > 0:
        try:
            check_availability(optim_cfg.WARMUP_TYPE, WARMUP_TYPES)
        except ValueError as e:
            raise ValueError(f"OPTIM.WARMUP_TYPE: {e}") from None
        key = "WARMUP_CONS_LR" if optim_cfg.WARMUP_TYPE == "constant" else "WARMUP_MIN_LR"
        if not nonnegative(optim_cfg[key]):
            raise ValueError(f"OPTIM.{key} (the {optim_cfg.WARMUP_TYPE} warm-up's learning rate) must be a "
                             f"finite number >= 0, got {optim_cfg[key]!r}")


def build_lr_scheduler(optimizer: torch.optim.Optimizer, optim_cfg: Any) -> EpochLRScheduler:
    """Build the schedule named by ``optim_cfg.LR_SCHEDULER`` (with optional warm-up)."""
    check_scheduler_cfg(optim_cfg)
    kind = optim_cfg.LR_SCHEDULER
    stepsize = _stepsizes(optim_cfg)
    return EpochLRScheduler(
        optimizer,
        kind=kind,
        max_epoch=optim_cfg.MAX_EPOCH,
        stepsize=stepsize,
        gamma=optim_cfg.GAMMA,
        warmup_epoch=optim_cfg.WARMUP_EPOCH,
        warmup_type=optim_cfg.WARMUP_TYPE,
        warmup_cons_lr=optim_cfg.WARMUP_CONS_LR,
        warmup_min_lr=optim_cfg.WARMUP_MIN_LR,
        warmup_recount=optim_cfg.WARMUP_RECOUNT,
    )
