"""CoCoOp — CoOp's context plus an image-conditioned shift from a small meta-net (spec §3.4).

For image ``b`` every context vector becomes ``ctx_i + π(f_b)``, where ``f_b`` is the L2-normalised
image feature and ``π = Linear(D → D/16) → ReLU → Linear(→ W)``; the class prompts
``[SOT] ctx+π(f_b) name. [EOT]`` are encoded for every (image, class) pair and the logits are
``s · cos(f_b, t_{b,c})``.

How it is built: the C class prompts are embedded once per step with the (unshifted) context
(:class:`clip.PromptBank`, one gather + one scatter). The shift is the same vector at every context
position, so the prompt of pair ``(b, c)`` is that embedding plus ``mask_c ⊗ π(f_b)`` where ``mask_c``
marks the context positions. The classes are grouped by prompt length (at most ``TEXT_BUCKETS``
groups, :func:`clip.text.length_buckets`); a group's B·C_g pairs are flattened, cut after the
group's longest EOT (exact for causal towers: a third of the positions of a padded IP test batch are
padding on Mini-Beyond) and encoded in chunks of whole images, at most ``TRAINER.COCOOP.TEXT_CHUNK``
sequences (but at least one image's C_g) per chunk, each chunk one batched text-tower call (P4: the
reference ran one C-sequence call per image in a Python loop). Memory per call is bounded by the
chunk size.

The first ``1 + n_ctx`` positions -- SOT and the shifted context -- are the same in all C prompts of
one image, and under the causal mask so are their hidden states: they go through the tower once per
image (:meth:`clip.TextEncoder.prefix_states`, with gradient), and each (image, class) pair runs only
its class-name positions against that image's cached keys/values
(:meth:`~clip.TextEncoder.encode_continuations`). On Mini-Beyond's names that is about half of every
prompt's positions (exact up to float rounding; towers of other blocks keep the full prompts).

Differences from the reference, deliberate: B1 batch-first text transformer; the context and
meta-net are fp32 parameters under every precision (the reference made the meta-net fp16 under
``PREC fp16``) and the loss is fp32; checkpoints hold only ``ctx`` and the meta-net (no frozen
prefix/suffix tensors). The context is shared and the meta-net class-agnostic, so an OOP-trained
prompt learner evaluates on IP / All names directly.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Dict

import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from clip import LoadedCLIP, PromptBank, TextEncoder
from clip.text import TEXT_BUCKETS, length_buckets
from dassl.engine import TRAINER_REGISTRY
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import strip_module_prefix

from .base import ClipTrainer
from .coop_openclip import REFERENCE_BUFFERS, class_sequences, init_context

logger = logging.getLogger(__name__)


def add_config(cfg: CN) -> None:
    """``TRAINER.COCOOP.*`` with CoCoOp's defaults, plus the text-batch chunk size."""
    cfg.TRAINER.COCOOP = CN()
    cfg.TRAINER.COCOOP.N_CTX = 16  # ignored when CTX_INIT is set (n_ctx = its token count)
    cfg.TRAINER.COCOOP.CTX_INIT = ""
    cfg.TRAINER.COCOOP.PREC = "fp16"  # fp16 | fp32 | amp | bf16 (CPU: fp32)
    # Most (image, class) prompts per text-tower call, whole images (at least one image's); bounds
    # memory for large B·C (ours, not the reference's).
    cfg.TRAINER.COCOOP.TEXT_CHUNK = 4096


add_cocoop_config = add_config


class CoCoOpPromptLearner(nn.Module):
    """Shared context ``ctx [n, W]`` and the meta-net; these are all the learned weights."""

    def __init__(self, init: torch.Tensor, vis_dim: int) -> None:
        super().__init__()
        width = init.shape[-1]
        hidden = max(1, vis_dim // 16)
        self.ctx = nn.Parameter(init)
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, hidden)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(hidden, width)),
        ]))

    @property
    def n_ctx(self) -> int:
        return int(self.ctx.shape[0])

    def load_state_dict(self, state_dict: Dict[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Strict load that also accepts the reference's checkpoints (``module.``, frozen buffers)."""
        state = strip_module_prefix(state_dict)
        state = {k: v for k, v in state.items() if k not in REFERENCE_BUFFERS}
        ctx = state.get("ctx")
        if ctx is not None and tuple(ctx.shape) != tuple(self.ctx.shape):
            raise ValueError(
                f"The checkpoint's context has shape {tuple(ctx.shape)}, this trainer expects "
                f"{tuple(self.ctx.shape)} (check N_CTX / CTX_INIT and the backbone)"
            )
        return super().load_state_dict(state, strict=strict, assign=assign)


class CoCoOpModel(nn.Module):
    """Prompt learner + frozen class templates; maps image features to cosine logits ``[B, C]``."""

    def __init__(self, loaded: LoadedCLIP, classnames: Any, ctx_init: str, n_ctx: int, text_chunk: int) -> None:
        super().__init__()
        self.classnames = list(classnames)
        init, placeholder = init_context(loaded, ctx_init, n_ctx)
        self.prompt_learner = CoCoOpPromptLearner(init, loaded.embed_dim)
        sequences, lengths, slot_ids = class_sequences(loaded.tokenizer, self.classnames, placeholder, "end", False)
        self.text_encoder = TextEncoder(loaded.model)
        self.prompt_bank = PromptBank(sequences, lengths, slot_ids, self.text_encoder.token_embedding,
                                      loaded.context_length, trim=True)
        bank = self.prompt_bank
        mask = torch.zeros(bank.ids.numel(), dtype=torch.bool, device=bank.ids.device)
        mask[bank.slot_dst] = True
        # [C, L]: where the (shifted) context rows sit in each class prompt
        self.register_buffer("ctx_mask", mask.view_as(bank.ids), persistent=False)
        self.text_chunk = max(1, int(text_chunk))
        # classes grouped by prompt length; each group's pairs are cut at the group's longest prompt.
        # group_order lists the classes group by group; group g is group_order[start:end], cut at length
        lengths = [int(v) + 1 for v in bank.eot_idx.tolist()]
        truncate = self.text_encoder.can_truncate
        # no per-group charge (clip.text.GROUP_OVERHEAD) here: a class group runs B·C_g prompts per call,
        # so one more group costs a fraction of a position per prompt
        groups = length_buckets(lengths, TEXT_BUCKETS) if truncate else [list(range(len(lengths)))]
        order = [c for g in groups for c in g]
        self.register_buffer("group_order", torch.tensor(order, dtype=torch.long), persistent=False)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
        self.register_buffer("group_inverse", inverse, persistent=False)
        bounds = [0]
        for g in groups:
            bounds.append(bounds[-1] + len(g))
        self.length_groups = [(a, b, max(lengths[i] for i in g) if truncate else None)
                              for a, b, g in zip(bounds, bounds[1:], groups)]
        # positions 0..P-1 (SOT and the context) are the same in every class prompt of an image, so
        # under the causal mask their states are too: run once per image, not once per (image, class)
        # (the image shift then touches no later position, so the rest of each prompt is its frozen rows)
        p = bank.common_prefix
        self.prefix_len = p if (self.text_encoder.can_reuse_prefix and p > 1
                                and not bool(self.ctx_mask[:, p:].any())) else 0

    def forward(self, image_feats: torch.Tensor) -> torch.Tensor:
        """Cosine similarities ``[B, C]`` of normalised image features with their own class prompts."""
        learner = self.prompt_learner
        feats = image_feats.float()
        bias = learner.meta_net(feats)  # [B, W]
        embeds, eot = self.prompt_bank(learner.ctx)  # [C, L, W]
        bias = bias.to(embeds.dtype)
        weight = self.ctx_mask.to(embeds.dtype).unsqueeze(-1)  # [C, L, 1]
        n_img = feats.shape[0]
        p = self.prefix_len
        states = None
        if p:  # each image's prefix [SOT, ctx + π(f_b)] through the tower once
            states = self.text_encoder.prefix_states(embeds[:1, :p] + weight[:1, :p] * bias.unsqueeze(1))
        sims = []
        for start, end, length in self.length_groups:
            classes = self.group_order[start:end]
            group, group_w = embeds.index_select(0, classes)[:, :length], weight.index_select(0, classes)[:, :length]
            group_eot = eot.index_select(0, classes.to(eot.device))
            n_cls = end - start
            per_call = max(1, self.text_chunk // n_cls)  # whole images: their prompts share one prefix
            parts = []
            for first in range(0, n_img, per_call):
                last = min(n_img, first + per_call)
                img = torch.arange(first, last, device=feats.device).repeat_interleave(n_cls)
                cls = torch.arange(n_cls, device=feats.device).repeat(last - first)
                if states is not None:  # these images' prefixes, each continued by its n_cls prompts in turn
                    text = self.text_encoder.encode_continuations([s[first:last] for s in states],
                                                                  group[cls, p:].detach(), None, group_eot[cls])
                else:
                    text = self.text_encoder(group[cls] + group_w[cls] * bias[img].unsqueeze(1), group_eot[cls])
                text = F.normalize(text.float(), dim=-1)
                parts.append((feats[img] * text).sum(dim=-1))
            sims.append(torch.cat(parts).view(n_img, n_cls))
        return torch.cat(sims, dim=1).index_select(1, self.group_inverse)


@TRAINER_REGISTRY.register()
class CoCoOp_openclip(ClipTrainer):
    """CoCoOp on an OpenCLIP backbone chosen by ``MODEL.BACKBONE.{NAME,WEIGHTS}``."""

    PREC_KEY = "COCOOP"

    def check_cfg(self, cfg: CN) -> None:
        super().check_cfg(cfg)
        cocoop = cfg.TRAINER.COCOOP
        if not str(cocoop.CTX_INIT).strip() and int(cocoop.N_CTX) < 1:
            raise ValueError(f"TRAINER.COCOOP.N_CTX must be positive without CTX_INIT, got {cocoop.N_CTX}")
        if int(cocoop.TEXT_CHUNK) < 1:
            raise ValueError(f"TRAINER.COCOOP.TEXT_CHUNK must be positive, got {cocoop.TEXT_CHUNK}")

    def build_model(self) -> None:
        cfg = self.cfg
        cocoop = cfg.TRAINER.COCOOP
        self.load_clip()
        names = self.display_names(self.classnames)
        self.model = CoCoOpModel(self.clip, names, str(cocoop.CTX_INIT), int(cocoop.N_CTX),
                                 int(cocoop.TEXT_CHUNK)).to(self.device)
        self.prompt_learner = self.model.prompt_learner
        self.optim = build_optimizer(self.prompt_learner, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("prompt_learner", self.prompt_learner, self.optim, self.sched)
        self.scaler = self.build_scaler()
        logger.info("CoCoOp: %d classes, %d context vectors (init %r), meta-net %d→%d→%d, text chunk %d",
                    len(names), self.prompt_learner.n_ctx, str(cocoop.CTX_INIT) or "random", self.clip.embed_dim,
                    self.prompt_learner.meta_net.linear1.out_features, self.prompt_learner.ctx.shape[-1],
                    self.model.text_chunk)

    def checkpoint_meta(self) -> Dict[str, Any]:
        meta = super().checkpoint_meta()
        meta.update(n_ctx=self.prompt_learner.n_ctx)
        return meta

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            sims = self.model(feats)
        return self.logit_scale * sims.float()

    def forward_backward(self, batch: Dict[str, Any]) -> Dict[str, float]:
        labels = batch["label"].to(self.device)
        logits = self.logits(self.batch_features(batch))
        loss = F.cross_entropy(logits, labels)
        self.optimize(loss)
        self.maybe_update_lr()
        return {"loss": loss.item(), "acc": compute_accuracy(logits.detach(), labels)[0].item()}

    def model_inference(self, input: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` or cached unnormalised features ``[B, D]`` to logits.

        The prompts depend on the image, so there are no class text features to cache per test.
        """
        feats = F.normalize(input.float(), dim=-1) if input.dim() == 2 else self.encode_images(input)
        return self.logits(feats)
