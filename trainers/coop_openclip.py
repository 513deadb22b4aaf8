"""CoOp — learnable prompt context on a frozen OpenCLIP model (spec §3.3).

The prompt of class ``c`` is ``[SOT] ctx_1 … ctx_n name. [EOT]`` (``end``), ``[SOT] ctx_1 … ctx_⌊n/2⌋ name
ctx_⌊n/2⌋+1 … ctx_n . [EOT]`` (``middle``) or ``[SOT] name ctx_1 … ctx_n . [EOT]`` (``front``). The context
is shared by all classes or class-specific (``CSC``); with ``CTX_INIT`` it starts as the CLIP token rows
of the init phrase, so ``CTX_INIT "a photo of a"`` at step 0 is zero-shot CLIP with ``a photo of a {}.``.

How it is built: every class prompt is tokenised once into an id template whose context positions
are :class:`clip.Slot` s (one slot per context segment, per class when CSC). Each step embeds all C
prompts with one gather + one scatter from the flat ``[rows, W]`` view of the context tensor
(:class:`clip.PromptBank`); there is no per-class Python loop (the reference looped over classes for
``middle`` and ``front``) and the frozen ``token_prefix``/``token_suffix`` tensors of the reference
are never stored in a checkpoint.

Differences from the reference, all deliberate:

* B1 the text transformer runs batch-first (``clip.TextEncoder``);
* ``CTX_INIT`` sets ``n_ctx`` to the number of BPE tokens of the phrase (the reference counted words,
  which differs only for words that split into several tokens, where it silently mis-initialised);
* ``CTX_INIT`` with ``CSC True`` gives class-specific contexts that all start from the phrase (the
  reference silently ignored ``CSC`` when ``CTX_INIT`` was set);
* the context is an fp32 parameter under every precision (the reference kept it in the model dtype,
  i.e. fp16 weights with an fp16 SGD state under ``PREC fp16``); losses are fp32;
* checkpoints hold only ``ctx``; loading maps across label spaces through ``load_state``: a shared
  context applies to any class names (this is how the OOP-trained context is evaluated on IP / All),
  a class-specific one only to its own label space (clear error otherwise; the reference crashed with
  a size mismatch). Checkpoint choice (best, then pointer, then latest epoch) is the engine's generic
  load order, which covers the reference's best→last-epoch fallback.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from clip import LoadedCLIP, PromptBank, Slot, TextEncoder, normalize_name
from clip.prompts import CLASS_TOKEN_POSITIONS, TokenPiece, check_context_options
from clip.text import TEXT_BUCKETS
from dassl.engine import TRAINER_REGISTRY
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import strip_module_prefix

from .base import ClipTrainer

logger = logging.getLogger(__name__)

POSITIONS = CLASS_TOKEN_POSITIONS
#: Keys of the reference's state dict that held frozen token embeddings; ignored on load.
REFERENCE_BUFFERS = ("token_prefix", "token_suffix")


def add_config(cfg: CN) -> None:
    """``TRAINER.COOP.*`` with CoOp's defaults (the LAION scripts override N_CTX/CSC/position)."""
    cfg.TRAINER.COOP = CN()
    cfg.TRAINER.COOP.N_CTX = 16  # ignored when CTX_INIT is set (n_ctx = its token count)
    cfg.TRAINER.COOP.CSC = False  # class-specific context
    cfg.TRAINER.COOP.CTX_INIT = ""  # e.g. "a photo of a"
    cfg.TRAINER.COOP.PREC = "fp16"  # fp16 | fp32 | amp | bf16 (CPU: fp32)
    cfg.TRAINER.COOP.CLASS_TOKEN_POSITION = "end"  # end | middle | front


add_coop_config = add_config


# ---------------------------------------------------------------------------------------- helpers
def token_table(loaded: LoadedCLIP) -> torch.Tensor:
    """The frozen ``[vocab, W]`` token-embedding table of the text tower."""
    return TextEncoder(loaded.model).token_embedding.weight


def init_context(loaded: LoadedCLIP, ctx_init: str, n_ctx: int, n_sets: Optional[int] = None
                 ) -> Tuple[torch.Tensor, List[int]]:
    """Initial context (``[n, W]``, or ``[n_sets, n, W]`` class-specific) and its placeholder ids.

    With an init phrase the rows are the phrase's CLIP token rows and the ids are its BPE ids; else
    the rows are N(0, 0.02) and the ids are ``n`` copies of "X", as in CoOp's id sequences (the ids
    only fix the template; the learned rows replace their embeddings).
    """
    weight = token_table(loaded)
    phrase = " ".join(str(ctx_init).replace("_", " ").split())
    if phrase:
        ids = [int(t) for t in loaded.tokenizer.encode(phrase)]
        if not ids:
            raise ValueError(f"CTX_INIT {ctx_init!r} has no BPE token")
        rows = weight.detach()[torch.tensor(ids, device=weight.device)].float().cpu().clone()
        if n_sets is not None:
            rows = rows.unsqueeze(0).repeat(n_sets, 1, 1)
        return rows, ids
    n = int(n_ctx)
    if n < 1:
        raise ValueError(f"N_CTX must be positive without CTX_INIT, got {n}")
    shape = (n, weight.shape[1]) if n_sets is None else (n_sets, n, weight.shape[1])
    x_id = int(loaded.tokenizer.encode("X")[0])
    return torch.empty(shape).normal_(0.0, 0.02), [x_id] * n


def context_segments(n_ctx: int, position: str) -> List[Tuple[int, int]]:
    """``(start, end)`` row ranges of the context pieces around the name (empty ranges kept)."""
    if position == "middle":
        half = n_ctx // 2
        return [(0, half), (half, n_ctx)]
    return [(0, n_ctx)]


def split_name_tokens(tokenizer: Any, name: str) -> Tuple[List[int], List[int]]:
    """BPE ids of ``name`` and of what follows it in ``name + "."``.

    The reference tokenised the whole prompt and cut its suffix after ``len(encode(name))`` tokens;
    encoding ``name + "."`` and cutting at the same place reproduces that exactly, including names
    that end in punctuation (where BPE merges the final ".").
    """
    joint = [int(t) for t in tokenizer.encode(name + ".")]
    n = len(tokenizer.encode(name))
    return joint[:n], joint[n:]


def class_sequences(tokenizer: Any, names: Sequence[str], placeholder_ids: Sequence[int], position: str,
                    class_specific: bool) -> Tuple[List[List[TokenPiece]], List[int], List[List[int]]]:
    """Token-piece sequences (one per class) plus ``slot_lengths`` and ``slot_token_ids``.

    Slots are numbered so that slot ``k``'s rows follow slot ``k-1``'s in the flat context view:
    shared context → the segments of the single ``[n, W]`` tensor; class-specific → class ``c``'s
    segments come ``c``-th in ``[C, n, W]``. Empty segments (``middle`` with ``n_ctx`` 1) get no slot.
    """
    if position not in POSITIONS:
        raise ValueError(f"CLASS_TOKEN_POSITION must be one of {POSITIONS}, got {position!r}")
    segments = context_segments(len(placeholder_ids), position)
    slot_lengths: List[int] = []
    slot_ids: List[List[int]] = []
    shared_slots: Optional[List[Optional[Slot]]] = None
    sequences: List[List[TokenPiece]] = []
    for name in names:
        if class_specific or shared_slots is None:
            slots: List[Optional[Slot]] = []
            for a, b in segments:
                if b > a:
                    slots.append(Slot(len(slot_lengths)))
                    slot_lengths.append(b - a)
                    slot_ids.append(list(placeholder_ids[a:b]))
                else:
                    slots.append(None)
            if not class_specific:
                shared_slots = slots
        else:
            slots = shared_slots
        name_ids, rest = split_name_tokens(tokenizer, name)
        if position == "end":
            pieces: List[Any] = [slots[0], name_ids + rest]
        elif position == "front":
            pieces = [name_ids, slots[0], rest]
        else:
            pieces = [slots[0], name_ids, slots[1], rest]
        sequences.append([p for p in pieces if p is not None])
    return sequences, slot_lengths, slot_ids


# ---------------------------------------------------------------------------------------- modules
class PromptLearner(nn.Module):
    """The learned context and nothing else: its state dict is ``{"ctx": [n, W] or [C, n, W]}``."""

    def __init__(self, init: torch.Tensor) -> None:
        super().__init__()
        self.ctx = nn.Parameter(init)

    @property
    def class_specific(self) -> bool:
        return self.ctx.dim() == 3

    @property
    def n_ctx(self) -> int:
        return int(self.ctx.shape[-2])

    def rows(self) -> torch.Tensor:
        """The flat ``[rows, W]`` view whose row order matches the prompt slots."""
        return self.ctx.reshape(-1, self.ctx.shape[-1])

    def load_context(self, state_dict: Dict[str, torch.Tensor], meta: Dict[str, Any],
                     classnames: Sequence[str], sub_classes: Optional[str] = None) -> None:
        """Copy a checkpoint's context here, checking it fits this label space.

        Accepts our checkpoints and the reference's (``module.`` prefixes and the frozen
        ``token_prefix``/``token_suffix`` buffers are dropped).
        """
        state = strip_module_prefix(state_dict)
        unknown = sorted(k for k in state if k != "ctx" and k not in REFERENCE_BUFFERS)
        if unknown:
            logger.warning("Ignoring unknown keys in the context checkpoint: %s", unknown)
        if "ctx" not in state:
            raise KeyError(f"The checkpoint has no 'ctx' (keys: {sorted(state)})")
        ctx = state["ctx"]
        own = self.ctx
        if ctx.dim() != own.dim():
            kind = {2: "shared", 3: "class-specific"}
            raise ValueError(
                f"The checkpoint's context is {kind.get(ctx.dim(), ctx.dim())} {tuple(ctx.shape)} but this "
                f"trainer's is {kind.get(own.dim(), own.dim())} {tuple(own.shape)}; set TRAINER.COOP.CSC "
                f"to match the training run"
            )
        if own.dim() == 3:
            theirs = meta.get("classnames")
            same_names = theirs is None or [normalize_name(c) for c in theirs] == [normalize_name(c) for c in classnames]
            if ctx.shape[0] != own.shape[0] or not same_names:
                where = f" ({meta['sub_classes']})" if meta.get("sub_classes") else ""
                here = f" ({sub_classes})" if sub_classes else ""
                raise ValueError(
                    f"A class-specific context (CSC) trained on a label space of {ctx.shape[0]} classes{where} "
                    f"cannot be applied to this label space of {own.shape[0]} classes{here}: its vectors "
                    "belong to the training classes. Evaluate on the training label space, or train a "
                    "shared context (TRAINER.COOP.CSC False) for cross-label-space evaluation."
                )
        if tuple(ctx.shape[-2:]) != tuple(own.shape[-2:]):
            raise ValueError(
                f"The checkpoint's context has {ctx.shape[-2]} vectors of width {ctx.shape[-1]}, this trainer "
                f"expects {own.shape[-2]} of width {own.shape[-1]} (check N_CTX / CTX_INIT and the backbone)"
            )
        with torch.no_grad():
            own.copy_(ctx.to(own))


class CoOpModel(nn.Module):
    """The learned context plus the frozen prompt templates and text tower that turn it into features."""

    def __init__(self, loaded: LoadedCLIP, classnames: Sequence[str], ctx_init: str, n_ctx: int,
                 class_specific: bool, position: str) -> None:
        super().__init__()
        self.classnames = list(classnames)
        init, placeholder = init_context(loaded, ctx_init, n_ctx, len(self.classnames) if class_specific else None)
        self.prompt_learner = PromptLearner(init)
        sequences, lengths, slot_ids = class_sequences(loaded.tokenizer, self.classnames, placeholder, position,
                                                       class_specific)
        self.text_encoder = TextEncoder(loaded.model)
        self.prompt_bank = PromptBank(sequences, lengths, slot_ids, self.text_encoder.token_embedding,
                                      loaded.context_length, trim=True)
        self.position = position

    def class_text_features(self) -> torch.Tensor:
        """Normalised fp32 ``[C, D]`` features of the C class prompts with the current context.

        With a shared context before the name (``end``, ``middle``), "SOT ctx…" is the same in every
        class prompt and so are its hidden states under the causal mask: it runs once, with gradient,
        and the C prompts run only their remaining positions against its cached keys/values, in
        length groups (``clip.TextEncoder.encode_continuations``; exact up to float rounding)."""
        embeds, eot = self.prompt_bank(self.prompt_learner.rows())
        p = self.prompt_bank.common_prefix
        if p > 1 and self.text_encoder.can_reuse_prefix:
            states = self.text_encoder.prefix_states(embeds[:1, :p])
            text = self.text_encoder.encode_continuations(states, embeds[:, p:], None, eot, buckets=TEXT_BUCKETS)
        else:
            text = self.text_encoder(embeds, eot)
        return F.normalize(text.float(), dim=-1)


# ---------------------------------------------------------------------------------------- trainer
@TRAINER_REGISTRY.register()
class CoOp_openclip(ClipTrainer):
    """CoOp on an OpenCLIP backbone chosen by ``MODEL.BACKBONE.{NAME,WEIGHTS}``."""

    PREC_KEY = "COOP"

    def check_cfg(self, cfg: CN) -> None:
        super().check_cfg(cfg)
        check_context_options(cfg.TRAINER.COOP, "COOP")

    def build_model(self) -> None:
        cfg = self.cfg
        coop = cfg.TRAINER.COOP
        self.load_clip()
        names = self.display_names(self.classnames)
        self.model = CoOpModel(self.clip, names, str(coop.CTX_INIT), int(coop.N_CTX), bool(coop.CSC),
                               str(coop.CLASS_TOKEN_POSITION)).to(self.device)
        self.prompt_learner = self.model.prompt_learner
        self.optim = build_optimizer(self.prompt_learner, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("prompt_learner", self.prompt_learner, self.optim, self.sched)
        self.scaler = self.build_scaler()
        if str(coop.CTX_INIT).strip() and self.prompt_learner.n_ctx != int(coop.N_CTX):
            logger.info("CTX_INIT %r sets n_ctx = %d (TRAINER.COOP.N_CTX %d is not used)", coop.CTX_INIT,
                        self.prompt_learner.n_ctx, coop.N_CTX)
        logger.info("CoOp: %d classes, %s context of %d vectors (init %r), class token %s",
                    len(names), "class-specific" if coop.CSC else "shared", self.prompt_learner.n_ctx,
                    str(coop.CTX_INIT) or "random", coop.CLASS_TOKEN_POSITION)

    def checkpoint_meta(self) -> Dict[str, Any]:
        meta = super().checkpoint_meta()
        meta.update(csc=self.prompt_learner.class_specific, n_ctx=self.prompt_learner.n_ctx,
                    class_token_position=self.model.position)
        return meta

    def load_state(self, name: str, state_dict: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> None:
        if name != "prompt_learner":
            return super().load_state(name, state_dict, meta)
        self.prompt_learner.load_context(state_dict, meta, self.classnames,
                                         str(self.cfg.DATASET.get("SUB_CLASSES", "")) or None)

    def cross_eval_subsets(self) -> List[str]:
        """A class-specific context belongs to its label space: no cross-subset evaluation with CSC."""
        subsets = super().cross_eval_subsets()
        if subsets and self.prompt_learner.class_specific:
            logger.warning("TRAINER.COOP.CSC True: class-specific contexts cannot be evaluated on other "
                           "label spaces; skipping the cross-evaluation on %s", subsets)
            return []
        return subsets

    # ----------------------------------------------------------- training
    def forward_backward(self, batch: Dict[str, Any]) -> Dict[str, float]:
        feats = self.batch_features(batch)
        labels = batch["label"].to(self.device)
        with self.autocast():
            text = self.model.class_text_features()
        logits = self.logit_scale * feats @ text.float().t()
        loss = F.cross_entropy(logits, labels)
        self.optimize(loss)
        self.maybe_update_lr()
        return {"loss": loss.item(), "acc": compute_accuracy(logits.detach(), labels)[0].item()}

    # ----------------------------------------------------------- evaluation
    def compute_text_features(self) -> torch.Tensor:
        with self.autocast():
            return self.model.class_text_features().float()
