"""CoCoOp on OpenAI CLIP, written in CoOp's idiom (spec §3.8) through ``clip.clip``.

The shape of CoCoOp's own ``trainers/cocoop.py`` (a ``PromptLearner`` with a meta-net whose output
shifts every context vector per image, ``CustomCLIP`` returning the loss in training mode), so
CoOp's file can be copied over it; its ``TRAINER.COCOOP.*`` keys are declared by
``cocoop_openclip.py``. The OpenCLIP version is ``CoCoOp_openclip``.

Departures from CoCoOp's file, deliberate: precision follows the device (CPU: fp32, B30); the B·C
image-conditioned prompts of a batch are encoded in one text-tower call instead of a Python loop
over the images (P4; same values); no ``nn.DataParallel`` (B9); ``torch.amp``; checkpoint loading is
the engine's, which keeps the frozen ``token_prefix``/``token_suffix`` of the current class names.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
from torch.nn import functional as F

from clip import clip
from dassl.engine import TRAINER_REGISTRY, TrainerX
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import load_pretrained_weights

from ._openai_clip import TextEncoder, check_backbone, check_precision, load_clip_to_cpu, run_fp32

logger = logging.getLogger(__name__)


class PromptLearner(nn.Module):
    """Generic context ``ctx [n, W]`` plus ``meta_net``: image feature → one shift of every ctx row."""

    def __init__(self, cfg: Any, classnames: List[str], clip_model: nn.Module) -> None:
        super().__init__()
        cocoop = cfg.TRAINER.COCOOP
        n_cls = len(classnames)
        n_ctx = int(cocoop.N_CTX)
        ctx_init = str(cocoop.CTX_INIT)
        dtype = clip_model.dtype
        ctx_dim = clip_model.ln_final.weight.shape[0]
        vis_dim = clip_model.visual.output_dim
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
            ctx_vectors = torch.empty(n_ctx, ctx_dim, dtype=dtype)
            nn.init.normal_(ctx_vectors, std=0.02)
            prompt_prefix = " ".join(["X"] * n_ctx)
        logger.info('Initial context: "%s" (%d context tokens)', prompt_prefix, n_ctx)
        self.ctx = nn.Parameter(ctx_vectors)
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, vis_dim // 16)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(vis_dim // 16, ctx_dim)),
        ]))
        if cocoop.PREC == "fp16" and dtype == torch.float16:
            self.meta_net.half()

        classnames = [name.replace("_", " ") for name in classnames]
        tokenized_prompts = clip.tokenize([f"{prompt_prefix} {name}." for name in classnames])
        with torch.no_grad():
            embedding = clip_model.token_embedding(tokenized_prompts).type(dtype)
        self.register_buffer("token_prefix", embedding[:, :1, :])
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx:, :])
        self.n_cls = n_cls
        self.n_ctx = n_ctx
        self.tokenized_prompts = tokenized_prompts

    def forward(self, im_features: torch.Tensor) -> torch.Tensor:
        """``[B, C, L, W]`` prompts: class ``c``'s prompt with image ``b``'s shifted context."""
        bias = self.meta_net(im_features).unsqueeze(1)  # [B, 1, W]
        ctx = self.ctx.unsqueeze(0) + bias  # [B, n, W]
        b, c = ctx.shape[0], self.n_cls
        prefix = self.token_prefix.unsqueeze(0).expand(b, -1, -1, -1)
        suffix = self.token_suffix.unsqueeze(0).expand(b, -1, -1, -1)
        ctx = ctx.unsqueeze(1).expand(-1, c, -1, -1)
        return torch.cat([prefix, ctx, suffix], dim=2)


class CustomCLIP(nn.Module):
    def __init__(self, cfg: Any, classnames: List[str], clip_model: nn.Module) -> None:
        super().__init__()
        self.prompt_learner = PromptLearner(cfg, classnames, clip_model)
        self.tokenized_prompts = self.prompt_learner.tokenized_prompts
        self.image_encoder = clip_model.visual
        self.text_encoder = TextEncoder(clip_model)
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_model.dtype

    def forward(self, image: torch.Tensor, label: Optional[torch.Tensor] = None) -> torch.Tensor:
        image_features = self.image_encoder(image.type(self.dtype))
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        prompts = self.prompt_learner(image_features)  # [B, C, L, W]
        b, c = prompts.shape[:2]
        tokens = self.tokenized_prompts.to(prompts.device).repeat(b, 1)
        text_features = self.text_encoder(prompts.reshape(b * c, *prompts.shape[2:]), tokens).view(b, c, -1)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        logits = self.logit_scale.exp() * torch.einsum("bd,bcd->bc", image_features, text_features)
        if self.prompt_learner.training:
            return F.cross_entropy(logits, label)
        return logits


@TRAINER_REGISTRY.register()
class CoCoOp(TrainerX):
    """Conditional Context Optimization (CoCoOp; Zhou et al., CVPR 2022) on OpenAI CLIP."""

    def check_cfg(self, cfg: Any) -> None:
        check_precision(cfg.TRAINER.COCOOP.PREC, "TRAINER.COCOOP.PREC")
        check_backbone(cfg)

    def build_model(self) -> None:
        cfg = self.cfg
        classnames = self.dm.dataset.classnames
        logger.info("Loading CLIP (backbone: %s)", cfg.MODEL.BACKBONE.NAME)
        clip_model = load_clip_to_cpu(cfg)
        if run_fp32(cfg.TRAINER.COCOOP.PREC, self.device):
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
        amp = cfg.TRAINER.COCOOP.PREC == "amp" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type) if amp else None

    def forward_backward(self, batch: Dict[str, Any]) -> Dict[str, float]:
        image, label = self.parse_batch_train(batch)
        if self.scaler is not None:
            with torch.autocast(device_type=self.device.type, dtype=torch.float16):
                loss = self.model(image, label)
            self.optim.zero_grad()
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optim)
            self.scaler.update()
        else:
            loss = self.model(image, label)
            self.model_backward_and_update(loss)
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return {"loss": loss.item()}

    def parse_batch_train(self, batch: Dict[str, Any]):
        return batch["img"].to(self.device), batch["label"].to(self.device)
