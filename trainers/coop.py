"""CoOp on OpenAI CLIP, written in CoOp's idiom (spec §3.8) through ``clip.clip``.

This file has the shape of CoOp's own ``trainers/coop.py`` -- ``load_clip_to_cpu`` /
``TextEncoder`` / ``PromptLearner`` / ``CustomCLIP`` / ``CoOp(TrainerX)`` on ``from clip import
clip`` -- so it doubles as the worked example of a CoOp-family trainer running here, and CoOp's
file can be copied over it. Its ``TRAINER.COOP.*`` keys are declared by ``coop_openclip.py``, not
here, so they survive that copy. The OpenCLIP version with the LAION-Beyond conveniences is
``CoOp_openclip`` (``coop_openclip.py``).

Where this file departs from CoOp's, deliberately:

* precision follows the device: on CPU the model runs fp32 whatever ``PREC`` says (B30);
* the ``middle`` / ``front`` prompts are one precomputed gather instead of a Python loop over
  classes, and ``end`` is one concatenation (same values as CoOp's construction);
* the class text features are encoded once per ``test()`` call, not once per test batch (P1);
* no ``nn.DataParallel`` (B9), ``torch.amp`` instead of the deprecated ``torch.cuda.amp``;
* checkpoints are loaded by the engine (best, pointer, latest epoch); its ``load_state`` keeps the
  frozen ``token_prefix``/``token_suffix`` of the current class names, so a context trained on one
  label space evaluates on another (CoOp's ``load_model`` deleted them for the same reason).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
from torch.nn import functional as F

from clip import clip
from clip.prompts import CLASS_TOKEN_POSITIONS, check_context_options
from clip.simple_tokenizer import SimpleTokenizer as _Tokenizer
from dassl.engine import TRAINER_REGISTRY, TrainerX
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import load_pretrained_weights

# load_clip_to_cpu is also this module's API: CoOp's zsclip.py imports it from .coop
from ._openai_clip import (
    TextEncoder,
    check_backbone,
    check_precision,
    load_clip_to_cpu,
    run_fp32,
)

logger = logging.getLogger(__name__)

POSITIONS = CLASS_TOKEN_POSITIONS

_tokenizer = _Tokenizer()


def prompt_order(name_lens: List[int], n_ctx: int, length: int, position: str) -> torch.Tensor:
    """``[C, L]`` positions into the ``[SOT] ctx name . [EOT] pad`` layout giving each class's prompt.

    ``middle``: ``[SOT] ctx[:n/2] name ctx[n/2:] . …``; ``front``: ``[SOT] name ctx . …``.
    """
    rows = []
    for name_len in name_lens:
        sot, ctx = [0], list(range(1, 1 + n_ctx))
        name = list(range(1 + n_ctx, 1 + n_ctx + name_len))
        rest = list(range(1 + n_ctx + name_len, length))
        if position == "middle":
            half = n_ctx // 2
            rows.append(sot + ctx[:half] + name + ctx[half:] + rest)
        elif position == "front":
            rows.append(sot + name + ctx + rest)
        else:
            rows.append(sot + ctx + name + rest)
    return torch.tensor(rows, dtype=torch.long)


class PromptLearner(nn.Module):
    """The learned context ``ctx`` plus the frozen SOT / class-name embeddings around it."""

    def __init__(self, cfg: Any, classnames: List[str], clip_model: nn.Module) -> None:
        super().__init__()
        coop = cfg.TRAINER.COOP
        n_cls = len(classnames)
        n_ctx = int(coop.N_CTX)
        ctx_init = str(coop.CTX_INIT)
        dtype = clip_model.dtype
        ctx_dim = clip_model.ln_final.weight.shape[0]
        clip_imsize = clip_model.visual.input_resolution
        cfg_imsize = cfg.INPUT.SIZE[0]
        if cfg_imsize != clip_imsize:
            raise ValueError(f"INPUT.SIZE {cfg_imsize} must equal the CLIP image size {clip_imsize}")

        if ctx_init:
            ctx_init = ctx_init.replace("_", " ")
            n_ctx = len(ctx_init.split(" "))
            with torch.no_grad():
                embedding = clip_model.token_embedding(clip.tokenize(ctx_init)).type(dtype)
            ctx_vectors = embedding[0, 1:1 + n_ctx, :]
            prompt_prefix = ctx_init
        else:
            shape = (n_cls, n_ctx, ctx_dim) if coop.CSC else (n_ctx, ctx_dim)
            ctx_vectors = torch.empty(*shape, dtype=dtype)
            nn.init.normal_(ctx_vectors, std=0.02)
            prompt_prefix = " ".join(["X"] * n_ctx)
        logger.info('Initial context: "%s" (%d context tokens, %s)', prompt_prefix, n_ctx,
                    "class-specific" if ctx_vectors.dim() == 3 else "generic")
        self.ctx = nn.Parameter(ctx_vectors)

        classnames = [name.replace("_", " ") for name in classnames]
        name_lens = [len(_tokenizer.encode(name)) for name in classnames]
        tokenized_prompts = clip.tokenize([f"{prompt_prefix} {name}." for name in classnames])
        with torch.no_grad():
            embedding = clip_model.token_embedding(tokenized_prompts).type(dtype)
        # saved with the model (CoOp's layout); the engine never loads them across label spaces
        self.register_buffer("token_prefix", embedding[:, :1, :])
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx:, :])
        position = str(coop.CLASS_TOKEN_POSITION)
        if position not in POSITIONS:
            raise ValueError(f"TRAINER.COOP.CLASS_TOKEN_POSITION must be one of {POSITIONS}, got {position!r}")
        order = prompt_order(name_lens, n_ctx, tokenized_prompts.shape[1], position)
        self.register_buffer("order", order, persistent=False)
        self.n_cls = n_cls
        self.n_ctx = n_ctx
        self.tokenized_prompts = tokenized_prompts
        self.name_lens = name_lens
        self.class_token_position = position

    def forward(self) -> torch.Tensor:
        ctx = self.ctx
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        prompts = torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)
        if self.class_token_position == "end":
            return prompts
        rows = torch.arange(self.n_cls, device=prompts.device).unsqueeze(1)
        return prompts[rows, self.order]


class CustomCLIP(nn.Module):
    def __init__(self, cfg: Any, classnames: List[str], clip_model: nn.Module) -> None:
        super().__init__()
        self.prompt_learner = PromptLearner(cfg, classnames, clip_model)
        self.tokenized_prompts = self.prompt_learner.tokenized_prompts
        self.image_encoder = clip_model.visual
        self.text_encoder = TextEncoder(clip_model)
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_model.dtype

    def text_features(self) -> torch.Tensor:
        """Normalised class text features with the current context."""
        feats = self.text_encoder(self.prompt_learner(), self.tokenized_prompts.to(self.logit_scale.device))
        return feats / feats.norm(dim=-1, keepdim=True)

    def forward(self, image: torch.Tensor, text_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits; ``text_features`` (from :meth:`text_features`) skips re-encoding the prompts."""
        image_features = self.image_encoder(image.type(self.dtype))
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        if text_features is None:
            text_features = self.text_features()
        return self.logit_scale.exp() * image_features @ text_features.t()


@TRAINER_REGISTRY.register()
class CoOp(TrainerX):
    """Context Optimization (CoOp; Zhou et al., IJCV 2022) on OpenAI CLIP."""

    def check_cfg(self, cfg: Any) -> None:
        # the prompt checks CoOp_openclip makes up front (here they failed in the constructor, after
        # the data was built, as a traceback)
        check_precision(cfg.TRAINER.COOP.PREC, "TRAINER.COOP.PREC")
        check_backbone(cfg)
        check_context_options(cfg.TRAINER.COOP, "COOP")

    def build_model(self) -> None:
        cfg = self.cfg
        classnames = self.dm.dataset.classnames
        logger.info("Loading CLIP (backbone: %s)", cfg.MODEL.BACKBONE.NAME)
        clip_model = load_clip_to_cpu(cfg)
        if run_fp32(cfg.TRAINER.COOP.PREC, self.device):
            clip_model.float()

        self.model = CustomCLIP(cfg, classnames, clip_model)
        for name, param in self.model.named_parameters():
            param.requires_grad_("prompt_learner" in name)
        if cfg.MODEL.INIT_WEIGHTS:
            load_pretrained_weights(self.model.prompt_learner, cfg.MODEL.INIT_WEIGHTS)
        self.model.to(self.device)
        self.optim = build_optimizer(self.model.prompt_learner, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("prompt_learner", self.model.prompt_learner, self.optim, self.sched)
        amp = cfg.TRAINER.COOP.PREC == "amp" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type) if amp else None

    def forward_backward(self, batch: Dict[str, Any]) -> Dict[str, float]:
        image, label = self.parse_batch_train(batch)
        if self.scaler is not None:
            with torch.autocast(device_type=self.device.type, dtype=torch.float16):
                output = self.model(image)
                loss = F.cross_entropy(output, label)
            self.optim.zero_grad()
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optim)
            self.scaler.update()
        else:
            output = self.model(image)
            loss = F.cross_entropy(output, label)
            self.model_backward_and_update(loss)
        summary = {"loss": loss.item(), "acc": compute_accuracy(output, label)[0].item()}
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return summary

    def parse_batch_train(self, batch: Dict[str, Any]):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def before_test(self) -> None:
        """The class prompts do not change during a test: encode them once, not once per batch (P1)."""
        self._test_text_features = self.model.text_features()

    def after_test(self) -> None:
        self._test_text_features = None

    def model_inference(self, input: torch.Tensor) -> torch.Tensor:
        return self.model(input, getattr(self, "_test_text_features", None))
