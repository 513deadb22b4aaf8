"""Optimizer factory driven by the ``OPTIM`` config node (Dassl semantics)."""
from __future__ import annotations

import logging
import math
from typing import Any, Iterable, List, Optional, Union

import torch
import torch.nn as nn

from ..utils.registry import check_availability

__all__ = ["build_optimizer", "check_optimizer_cfg", "nonnegative", "AVAI_OPTIMS"]

logger = logging.getLogger(__name__)

AVAI_OPTIMS = ("adam", "amsgrad", "sgd", "rmsprop", "radam", "adamw")
#: the optimizers that read ``ADAM_BETA1`` / ``ADAM_BETA2``, and those that read ``MOMENTUM``
_ADAM_FAMILY = ("adam", "amsgrad", "radam", "adamw")
_MOMENTUM_FAMILY = ("sgd", "rmsprop")


def nonnegative(value: Any) -> bool:
    """A finite number >= 0: what a learning rate, decay factor or coefficient of ``OPTIM`` must be."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def check_optimizer_cfg(optim_cfg: Any) -> None:
    """Raise a ``ValueError`` naming the ``OPTIM`` key that :func:`build_optimizer` cannot use, before
    any model is built (torch's own checks fire only at construction, as a traceback after the data and
    the backbone were loaded). Only the keys the chosen ``OPTIM.NAME`` reads are checked: Dassl's
    defaults carry every optimizer's keys, and an unused one is harmless."""
    name = optim_cfg.NAME
    check_availability(name, AVAI_OPTIMS)
    if not nonnegative(optim_cfg.LR):
        raise ValueError(f"OPTIM.LR must be a finite number >= 0, got {optim_cfg.LR!r}")
    wd = optim_cfg.WEIGHT_DECAY
    if not nonnegative(wd):
        raise ValueError(f"OPTIM.WEIGHT_DECAY must be a finite number >= 0, got {wd!r}")
    if name in _MOMENTUM_FAMILY and not nonnegative(optim_cfg.MOMENTUM):
        raise ValueError(f"OPTIM.MOMENTUM must be a finite number >= 0 for {name}, got {optim_cfg.MOMENTUM!r}")
    if name == "sgd" and optim_cfg.SGD_NESTEROV and (optim_cfg.MOMENTUM <= 0 or optim_cfg.SGD_DAMPNING != 0):
        raise ValueError("OPTIM.SGD_NESTEROV True needs OPTIM.MOMENTUM > 0 and OPTIM.SGD_DAMPNING 0, got "
                         f"{optim_cfg.MOMENTUM!r} and {optim_cfg.SGD_DAMPNING!r}")
    if name == "rmsprop" and not nonnegative(optim_cfg.RMSPROP_ALPHA):
        raise ValueError(f"OPTIM.RMSPROP_ALPHA must be a finite number >= 0, got {optim_cfg.RMSPROP_ALPHA!r}")
    if name in _ADAM_FAMILY:
        for key in ("ADAM_BETA1", "ADAM_BETA2"):
            beta = optim_cfg[key]
            if not nonnegative(beta) or beta >= 1:
                raise ValueError(f"OPTIM.{key} must be in [0, 1) for {name}, got {beta!r}")
    if optim_cfg.STAGED_LR and not nonnegative(optim_cfg.BASE_LR_MULT):
        raise ValueError(f"OPTIM.BASE_LR_MULT must be a finite number >= 0 with OPTIM.STAGED_LR, "
                         f"got {optim_cfg.BASE_LR_MULT!r}")


def _staged_param_groups(model: nn.Module, lr: float, new_layers: Any, base_lr_mult: float) -> List[dict]:
    """Children named in ``new_layers`` train at ``lr``; every other child at ``lr * base_lr_mult``."""
    if not isinstance(model, nn.Module):
        raise TypeError("OPTIM.STAGED_LR needs an nn.Module to split into new and base layers")
    if isinstance(new_layers, str):
        new_layers = [new_layers]
    new_layers = list(new_layers)
    children = dict(model.named_children())
    unknown = [n for n in new_layers if n not in children]
    if unknown:
        raise ValueError(f"OPTIM.NEW_LAYERS {unknown} are not children of the model: {list(children)}")
    base_params, new_params = [], []
    for name, module in children.items():
        target = new_params if name in new_layers else base_params
        target.extend(module.parameters())
    return [{"params": base_params, "lr": lr * base_lr_mult}, {"params": new_params}]


def build_optimizer(
    model_or_params: Union[nn.Module, Iterable[Any]],
    optim_cfg: Any,
    param_groups: Optional[List[dict]] = None,
) -> torch.optim.Optimizer:
    """Build the optimizer named by ``optim_cfg.NAME`` over a module's parameters, an iterable of
    parameters/groups, or explicit ``param_groups``."""
    name = optim_cfg.NAME
    lr = optim_cfg.LR
    check_optimizer_cfg(optim_cfg)

    if param_groups is not None and optim_cfg.STAGED_LR:
        logger.warning("OPTIM.STAGED_LR is ignored because explicit param_groups were given")
    if param_groups is None:
        if optim_cfg.STAGED_LR:
            param_groups = _staged_param_groups(
                model_or_params, lr, optim_cfg.NEW_LAYERS, optim_cfg.BASE_LR_MULT
            )
        elif isinstance(model_or_params, nn.Module):
            param_groups = list(model_or_params.parameters())
        else:
            param_groups = list(model_or_params)

    wd = optim_cfg.WEIGHT_DECAY
    betas = (optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2)
    if name == "adam":
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=wd, betas=betas)
    if name == "amsgrad":
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=wd, betas=betas, amsgrad=True)
    if name == "sgd":
        return torch.optim.SGD(
            param_groups,
            lr=lr,
            momentum=optim_cfg.MOMENTUM,
            weight_decay=wd,
            dampening=optim_cfg.SGD_DAMPNING,
            nesterov=optim_cfg.SGD_NESTEROV,
        )
    if name == "rmsprop":
        return torch.optim.RMSprop(
            param_groups, lr=lr, momentum=optim_cfg.MOMENTUM, weight_decay=wd, alpha=optim_cfg.RMSPROP_ALPHA
        )
    if name == "radam":
        return torch.optim.RAdam(param_groups, lr=lr, weight_decay=wd, betas=betas)
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=wd, betas=betas)
