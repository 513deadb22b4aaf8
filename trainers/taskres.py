"""TaskRes — task residual tuning (Yu et al., CVPR 2023) as a LAION-Beyond baseline (spec §3.7).

The classifier of class ``c`` is its frozen zero-shot text feature ``t_c`` (dataset template
``a photo of {name}, a type of {hint}.``, projected but not normalised, as in the reference) plus a
learned, class-specific residual ``x_c`` scaled by ``α = TRAINER.TaskRes.RESIDUAL_SCALE``; the sum is
L2-normalised at use and scored against the normalised image feature with CLIP's logit scale::

    logits = s · norm(f) · norm(t + α·x)ᵀ,      x ∈ R^{C×D}, x = 0 at start (step 0 = zero-shot CLIP)

Differences from the reference, all deliberate:

* B28 the base features are computed once on the trainer's device (no hard-coded ``.cuda()``), with
  CLIP loaded once in the requested precision (``TRAINER.TaskRes.PREC``, default fp32 like the paper's
  runs; the reference loaded fp16 through ``COOP.PREC`` and converted afterwards); no exception-driven
  dtype retry in the image path (P6), and no global TF32/cudnn flags set at import;
* class names go through ``clip.normalize_name`` (the one rule of B2) instead of the raw folder names;
* B28 the residual is class-specific, so a checkpoint is keyed by class name: the same classes in
  another order are remapped by name, and another label space (IP / All) is refused with a clear error
  instead of a ``load_state_dict`` size mismatch; cross-subset evaluation is therefore switched off;
* only ``ENHANCED_BASE none`` is supported (the reference scripts never used anything else).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from clip import normalize_name
from dassl.engine import TRAINER_REGISTRY
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import CheckpointError, strip_module_prefix

from .base import ClipTrainer

logger = logging.getLogger(__name__)

RESIDUAL_PREFIX = "residuals."
#: Key of the reference implementation's ``[C, D]`` residual (positional, no class names).
REFERENCE_KEY = "text_feature_residuals"
MAX_LISTED = 8


def add_config(cfg: CN) -> None:
    """``TRAINER.TaskRes.*`` (spec §1.2). N_CTX / CSC / CTX_INIT / CLASS_TOKEN_POSITION are unused
    by TaskRes; they exist so the reference's configs and command lines still merge."""
    cfg.TRAINER.TaskRes = CN()
    cfg.TRAINER.TaskRes.N_CTX = 16
    cfg.TRAINER.TaskRes.CSC = False
    cfg.TRAINER.TaskRes.CTX_INIT = ""
    cfg.TRAINER.TaskRes.PREC = "fp32"
    cfg.TRAINER.TaskRes.CLASS_TOKEN_POSITION = "end"
    cfg.TRAINER.TaskRes.RESIDUAL_SCALE = 1.0
    # Filled from ``train.py --enhanced-base``; only "none" is implemented.
    cfg.TRAINER.TaskRes.ENHANCED_BASE = "none"


add_taskres_config = add_config


class LabelSpaceError(CheckpointError):
    """A class-specific TaskRes residual was asked to serve classes it was not trained on."""


def _listed(names: Sequence[str]) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:MAX_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > MAX_LISTED else "")


class TaskResLearner(nn.Module):
    """Frozen base classifier ``t`` (non-persistent buffer) plus the learned residual ``x``.

    The state dict is keyed by class name (``residuals.<name>`` → ``[D]``), so a checkpoint states
    which classes it serves and loads by name whatever the label order.
    """

    def __init__(self, classnames: Sequence[str], base_text_features: torch.Tensor, alpha: float) -> None:
        super().__init__()
        names = list(classnames)
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"Class names collide after normalisation: {dupes}")
        if base_text_features.shape[0] != len(names):
            raise ValueError(f"{base_text_features.shape[0]} base features for {len(names)} classes")
        self.classnames = names
        self.index = {n: i for i, n in enumerate(names)}
        self.alpha = float(alpha)
        self.register_buffer("base_text_features", base_text_features.detach().float().clone(), persistent=False)
        self.text_feature_residuals = nn.Parameter(torch.zeros_like(self.base_text_features))

    def forward(self) -> torch.Tensor:
        """Normalised ``[C, D]`` classifier ``norm(t + α·x)`` in fp32."""
        return F.normalize(self.base_text_features + self.alpha * self.text_feature_residuals, dim=-1)

    def state_dict(self, *args: Any, destination: Optional[dict] = None, prefix: str = "",
                   keep_vars: bool = False) -> Dict[str, torch.Tensor]:
        out = destination if destination is not None else {}
        rows = self.text_feature_residuals if keep_vars else self.text_feature_residuals.detach()
        for i, name in enumerate(self.classnames):
            out[f"{prefix}{RESIDUAL_PREFIX}{name}"] = rows[i] if keep_vars else rows[i].clone()
        return out

    def load_state_dict(self, state_dict: Dict[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Load residuals by class name; refuse any checkpoint that does not cover exactly these classes.

        A reference checkpoint (one positional ``text_feature_residuals`` tensor) loads only when its
        shape matches, with a warning that the class order cannot be verified.
        """
        state = strip_module_prefix(state_dict)
        width = self.text_feature_residuals.shape[1]
        if REFERENCE_KEY in state and not any(k.startswith(RESIDUAL_PREFIX) for k in state):
            value = state[REFERENCE_KEY]
            if tuple(value.shape) != tuple(self.text_feature_residuals.shape):
                raise LabelSpaceError(
                    f"TaskRes checkpoint holds residuals for {value.shape[0]} classes (width {value.shape[1]}); "
                    f"this label space has {len(self.classnames)} classes (width {width}). TaskRes residuals are "
                    "class-specific and cannot be evaluated on another label space (IP / All)."
                )
            logger.warning("Loading a reference TaskRes checkpoint: residual rows are assumed to follow this "
                           "label order, which the checkpoint cannot confirm")
            with torch.no_grad():
                self.text_feature_residuals.copy_(value.to(self.text_feature_residuals))
            return nn.modules.module._IncompatibleKeys([], [])

        incoming = {normalize_name(k[len(RESIDUAL_PREFIX):]): v for k, v in state.items()
                    if k.startswith(RESIDUAL_PREFIX)}
        missing = [n for n in self.classnames if n not in incoming]
        extra = [n for n in incoming if n not in self.index]
        if missing or extra:
            raise LabelSpaceError(
                "TaskRes learns one residual per class, so it can only be evaluated on the classes it was "
                f"trained on. The checkpoint has {len(incoming)} classes, this label space "
                f"{len(self.classnames)}; missing from the checkpoint: [{_listed(missing)}]; not in this label "
                f"space: [{_listed(extra)}]. Evaluate TaskRes on the SUB_CLASSES it was trained on."
            )
        bad = [n for n, v in incoming.items() if tuple(v.shape) != (width,)]
        if bad:
            raise ValueError(f"TaskRes residuals of width {width} expected; wrong shape for [{_listed(bad)}]")
        order = torch.stack([incoming[n] for n in self.classnames])
        with torch.no_grad():
            self.text_feature_residuals.copy_(order.to(self.text_feature_residuals))
        return nn.modules.module._IncompatibleKeys([], [])


@TRAINER_REGISTRY.register()
class TaskRes(ClipTrainer):
    """TaskRes on an OpenCLIP backbone (``MODEL.BACKBONE.{NAME,WEIGHTS}``)."""

    PREC_KEY = "TaskRes"

    def check_cfg(self, cfg: CN) -> None:
        super().check_cfg(cfg)
        base = str(cfg.TRAINER.TaskRes.ENHANCED_BASE)
        if base.lower() != "none":
            raise ValueError(
                f"TRAINER.TaskRes.ENHANCED_BASE / --enhanced-base {base!r} is not supported: only 'none' "
                "(the zero-shot text classifier, as in every reference script) is implemented"
            )

    def build_model(self) -> None:
        cfg = self.cfg
        self.load_clip()
        names = self.display_names(self.classnames)
        base = self.encode_class_texts(self.class_template(), names, normalize=False)
        self.model = TaskResLearner(names, base, cfg.TRAINER.TaskRes.RESIDUAL_SCALE).to(self.device)
        self.optim = build_optimizer(self.model, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("prompt_learner", self.model, self.optim, self.sched)
        self.scaler = self.build_scaler()
        logger.info("TaskRes: %d classes, D=%d, residual scale α=%.3g", len(names), base.shape[1],
                    self.model.alpha)

    def load_state(self, name: str, state_dict: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> None:
        if name != "prompt_learner":
            return super().load_state(name, state_dict, meta)
        self.model.load_state_dict(state_dict)
        logger.info("Loaded the TaskRes residuals of %d classes by name", len(self.model.classnames))
        if self.load_info is not None:
            n = len(self.model.classnames)
            self.load_info["names_loaded"] = f"{n}/{n}"

    def cross_eval_subsets(self) -> List[str]:
        """None: the residual is class-specific, so OOP weights say nothing about IP / All classes.

        ``TEST.CROSS_EVAL auto`` is skipped quietly (as the reference paper's tables did); explicit
        subsets are skipped with a warning so a finished training run still writes its results.
        """
        others = super().cross_eval_subsets()
        requested = self.cfg.TEST.get("CROSS_EVAL", ())
        explicit = [s for s in others if s in ((requested,) if isinstance(requested, str) else tuple(requested))]
        if explicit:
            logger.warning("TaskRes residuals are class-specific: skipping cross-evaluation on %s", explicit)
        return []

    def forward_backward(self, batch: Dict[str, Any]) -> Dict[str, float]:
        labels = batch["label"].to(self.device)
        logits = self.logit_scale * self.batch_features(batch) @ self.model().t()
        loss = F.cross_entropy(logits, labels)
        self.optimize(loss)
        self.maybe_update_lr()
        return {"loss": loss.item(), "acc": compute_accuracy(logits.detach(), labels)[0].item()}

    def compute_text_features(self) -> torch.Tensor:
        return self.model()
