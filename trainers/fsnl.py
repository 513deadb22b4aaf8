"""FSNL — Few-Shot Name Learning (CVPR 2025).

Both CLIP encoders stay frozen. Each class gets a small learned tensor that *replaces its name*
wherever the name appears in a text: in the class prompt ``a photo of {name}, a type of {hint}.``
and in image captions. With ``FLE False, CIFC True`` the tensor starts as the CLIP token rows of the
name, so step 0 is exactly zero-shot CLIP with the FSNL template (token for token, except for a name
that begins or ends with punctuation: it is encoded on its own, as in the reference, see
``clip.tokenize_pieces``).

Loss (spec §2.7): the bidirectional *same-label* contrastive loss between the batch images and the C
class prompts ("base double"), averaged with the same loss between images and their captions after
*template swapping* (a caption of another class with this item's learned name put in).

Differences from the reference implementation, all deliberate (see README):

* B1 the text transformer runs batch-first (``clip.TextEncoder``);
* B2 one name normalisation (``clip.normalize_name``) for names, prompts and captions;
* B3/B5/B6 the caption path never crashes: a caption without its own class name, an empty caption,
  or a batch with a single class falls back to the class's base prompt, and the own class of a caption
  is its dataset label, not the first name that happens to be a substring;
* B4 names are matched on word boundaries, longest first; prompts are built from pieces, so the hint
  ("folk art") is never scanned for a class name ("art");
* B7 losses are computed in fp32 under every precision; ``ABSENT_CLASSES present`` averages the
  text→image term over the classes present in the batch (``reference`` keeps the original constant);
* B8 the CLIP token table is never a parameter and never saved; checkpoints hold the name tensors
  keyed by class name (kilobytes);
* B9 no DataParallel wrapping.

Performance: class prompts are tokenised once into id templates with name slots; every step builds
the ``[C, L, W]`` prompt embeddings with one gather/scatter (no per-class loop, regex or BPE), and
captions are tokenised and split into (text pieces, name slots) once per dataset.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from clip import (
    BackboneError,
    NameMatcher,
    PromptBank,
    PromptBatch,
    ReferenceNameMatcher,
    Slot,
    TextEncoder,
    normalize_name,
    reference_normalize_name,
)
from clip.prompts import class_prompt_pieces, tokenize_pieces
from clip.text import TEXT_BUCKETS
from dassl.engine import TRAINER_REGISTRY
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import CheckpointError, derive_seed, strip_module_prefix

from .base import ClipTrainer

logger = logging.getLogger(__name__)

EPS = 1e-10
LOSSES = ("full", "caption", "base", "clip_caption")
Piece = Union[List[int], Slot]
#: Marks "this caption's own class name" inside a cached caption template.
OWN = Slot(-1)
#: The placeholder of a reference-mode caption template (no class name or caption holds a NUL).
REFERENCE_PLACEHOLDER = "\x00"
def add_config(cfg: CN) -> None:
    """``TRAINER.FSNL.*`` with the reference defaults (spec §1.2), plus our documented options."""
    cfg.TRAINER.FSNL = CN()
    cfg.TRAINER.FSNL.FLE = False  # fixed-length name embeddings (N_CTX rows) instead of BPE length
    cfg.TRAINER.FSNL.N_CTX = 4
    cfg.TRAINER.FSNL.PREC = "fp32"
    cfg.TRAINER.FSNL.CIFC = True  # initialise names from their CLIP token rows
    cfg.TRAINER.FSNL.LOAD_DIR = ""  # kept for config compatibility; unused, as in the reference
    cfg.TRAINER.FSNL.USE_CAPTION = True
    cfg.TRAINER.FSNL.TEMPLATE = "a photo of {name}, a type of {hint}."
    # full: ½(L_cap + L_base); caption: L_cap only when USE_CAPTION (Ablation1); base: L_base only
    # (Ablation2); clip_caption: plain CLIP InfoNCE with the unswapped captions (Ablation3).
    cfg.TRAINER.FSNL.LOSS = "full"
    # reference: a class absent from the batch adds -log(1e-10) to the text→image mean (original);
    # present: the text→image term averages over the classes present in the batch.
    cfg.TRAINER.FSNL.ABSENT_CLASSES = "reference"
    # fixed: one normalisation, word-boundary longest-first matching, the hint never scanned (B2/B4
    # fixed); reference: the original's '.'->' ' + lower-case names, plain-substring label-order
    # matching of whole prompt strings and first-substring caption owners (B2/B4/B5/B6 kept), for
    # parity with the published numbers.
    cfg.TRAINER.FSNL.NAME_MATCHING = "fixed"


add_fsnl_config = add_config


def same_label_loss(
    logits: torch.Tensor, row_labels: torch.Tensor, col_labels: torch.Tensor, only_present: bool = False
) -> torch.Tensor:
    """``mean_r -log(Σ_k [a_r = b_k] softmax_k(Z_r)_k + ε)`` in fp32 (spec §2.7).

    With ``only_present`` rows without any positive column are left out of the mean instead of
    contributing the constant ``-log ε``.
    """
    probs = logits.float().softmax(dim=1)
    positive = row_labels[:, None] == col_labels[None, :]
    per_row = -torch.log((probs * positive).sum(dim=1) + EPS)
    if only_present:
        has_pos = positive.any(dim=1)
        return per_row[has_pos].mean() if bool(has_pos.any()) else per_row.sum() * 0.0
    return per_row.mean()


def swap_partners(labels: torch.Tensor, valid: torch.Tensor, generator: Optional[torch.Generator] = None,
                  draws: Optional[torch.Tensor] = None) -> torch.Tensor:
    """For every item ``i``, a uniformly drawn ``j`` with ``valid[j]`` and ``labels[j] != labels[i]``; -1 if none.

    The distribution of the reference's template swapping (spec §2.7: uniform over the batch items of
    another class), in O(B log B) instead of a dense ``[B, B]`` weight matrix: the valid items are
    sorted by label, so those of ``i``'s own label form one block ``[start, start + own)``; a draw
    ``u`` uniform in ``[0, n_valid - own)`` skips that block (``u`` or ``u + own``). ``draws``
    (``[B]`` floats in ``[0, 1)``, default: drawn from ``generator``) fix the randomness, for tests.
    """
    y = labels.reshape(-1).cpu().long()
    valid = valid.reshape(-1).cpu().bool()
    b = y.numel()
    cand = torch.nonzero(valid).squeeze(1)
    if cand.numel() == 0:
        return torch.full((b,), -1, dtype=torch.long)
    cand = cand[torch.argsort(y[cand], stable=True)]
    sorted_y = y[cand]
    start = torch.searchsorted(sorted_y, y, side="left")
    own = torch.searchsorted(sorted_y, y, side="right") - start
    allowed = cand.numel() - own
    if draws is None:
        draws = torch.rand(b, dtype=torch.float64, generator=generator)
    u = torch.floor(draws.double() * allowed.double()).long()
    u = torch.minimum(u, (allowed - 1).clamp(min=0))
    k = torch.where(u < start, u, u + own).clamp(max=cand.numel() - 1)
    return torch.where(allowed > 0, cand[k], torch.full_like(k, -1))


class NameLearner(nn.Module):
    """One learned tensor per class, stored as a single ``[Σ len_c, W]`` bank.

    A single parameter (instead of a ParameterDict with one entry per class) lets every step gather
    all names with one indexing op. The state dict is still keyed by class name
    (``name_embeddings.<name>``, the reference's key format), so checkpoints load across label
    spaces and the reference's own checkpoints load too.
    """

    def __init__(
        self,
        classnames: Sequence[str],
        name_token_ids: Sequence[Sequence[int]],
        token_weight: torch.Tensor,
        fle: bool = False,
        n_ctx: int = 4,
        cifc: bool = True,
    ) -> None:
        super().__init__()
        names = list(classnames)
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"Class names collide after normalisation: {dupes}")
        empty = [n for n, ids in zip(names, name_token_ids) if not ids]
        if empty and not fle:  # a control character, a BOM: a ValueError traceback at model build
            raise BackboneError(f"class name(s) {empty} encode to no token with this backbone's tokenizer, so FSNL "
                                "has nothing to learn for them; fix the classname in the split file, or set "
                                "TRAINER.FSNL.FLE True")
        self.classnames = names
        self.fle = bool(fle)
        self.lengths = [int(n_ctx)] * len(names) if fle else [len(ids) for ids in name_token_ids]
        width = token_weight.shape[1]
        if not fle and cifc:
            flat = [t for ids in name_token_ids for t in ids]
            init = token_weight.detach()[torch.tensor(flat, dtype=torch.long, device=token_weight.device)]
            init = init.float().cpu().clone()
        else:
            init = torch.empty(sum(self.lengths), width).normal_(0.0, 0.02)
        self.bank = nn.Parameter(init)
        offsets = torch.zeros(len(names) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(torch.tensor(self.lengths, dtype=torch.long), 0)
        self.offsets = offsets.tolist()
        self.index = {n: i for i, n in enumerate(names)}
        self._loose_index: Dict[str, int] = {}
        for i, n in enumerate(names):
            self._loose_index.setdefault(normalize_name(n), i)

    def name_tensor(self, i: int) -> torch.Tensor:
        return self.bank[self.offsets[i]:self.offsets[i + 1]]

    def state_dict(self, *args: Any, destination: Optional[dict] = None, prefix: str = "",
                   keep_vars: bool = False) -> Dict[str, torch.Tensor]:
        out = destination if destination is not None else {}
        for i, name in enumerate(self.classnames):
            t = self.name_tensor(i)
            out[f"{prefix}name_embeddings.{name}"] = t if keep_vars else t.detach().clone()
        return out

    def load_names(self, state_dict: Dict[str, torch.Tensor],
                   misfits: Optional[List[str]] = None) -> Tuple[int, int]:
        """Copy every checkpoint name that exists here with the same shape; return (matched, total).

        Keys are normalised before matching, so reference checkpoints (whose keys keep ``_``) and
        ours agree. The reference's ``clip_model_token_embedding.weight`` is ignored (B8). A name of
        another shape is skipped with a warning, or listed in ``misfits`` for the caller to judge.
        """
        incoming = {}
        for key, value in strip_module_prefix(state_dict).items():
            if key.startswith("name_embeddings."):
                incoming[key[len("name_embeddings."):]] = value
        matched = 0
        with torch.no_grad():
            for name, value in incoming.items():
                i = self.index.get(name, self._loose_index.get(normalize_name(name)))
                if i is None:
                    continue
                if tuple(value.shape) != (self.lengths[i], self.bank.shape[1]):
                    why = f"name {name!r}: checkpoint shape {tuple(value.shape)} != {(self.lengths[i], self.bank.shape[1])}"
                    if misfits is None:
                        logger.warning("Skipping %s", why)
                    else:
                        misfits.append(why)
                    continue
                self.bank[self.offsets[i]:self.offsets[i + 1]] = value.to(self.bank)
                matched += 1
        return matched, len(incoming)

    def load_state_dict(self, state_dict: Dict[str, torch.Tensor], strict: bool = True, assign: bool = False):
        matched, _ = self.load_names(state_dict)
        if strict and matched != len(self.classnames):
            raise RuntimeError(
                f"Checkpoint provides {matched} of the {len(self.classnames)} names of this label space"
            )
        return nn.modules.module._IncompatibleKeys([], [])


class FSNLModel(nn.Module):
    """The frozen CLIP text path plus the learned names; builds prompts and caption texts."""

    def __init__(self, trainer: FSNL_openclip) -> None:
        super().__init__()
        cfg = trainer.cfg.TRAINER.FSNL
        loaded = trainer.clip
        tokenizer = loaded.tokenizer
        self.reference_matching = cfg.NAME_MATCHING == "reference"
        if self.reference_matching:
            self.classnames = [reference_normalize_name(c) for c in trainer.classnames]
        else:
            self.classnames = trainer.display_names(trainer.classnames)
        token_weight = loaded.model.token_embedding.weight if hasattr(loaded.model, "token_embedding") \
            else loaded.model.text.token_embedding.weight
        name_ids = [tokenizer.encode(n) for n in self.classnames]
        self.name_learner = NameLearner(self.classnames, name_ids, token_weight, cfg.FLE, cfg.N_CTX, cfg.CIFC)
        if cfg.FLE:
            x_id = tokenizer.encode("X")[0]
            self.slot_token_ids = [[x_id] * int(cfg.N_CTX)] * len(self.classnames)
        else:
            self.slot_token_ids = name_ids
        self.context_length = loaded.context_length
        self.tokenizer = tokenizer
        # reference-mode swapped captions, tokenised once per (template, name) and their text pieces' ids
        self._filled: Dict[Tuple[str, int], List[Piece]] = {}
        self._piece_ids: Dict[str, List[int]] = {}
        # The text encoder only holds references to frozen CLIP modules; it is not registered.
        object.__setattr__(self, "text_encoder", TextEncoder(loaded.model))
        object.__setattr__(self, "token_weight", token_weight)
        hint = trainer.hint or "object"
        template = str(cfg.TEMPLATE).replace("{hint}", hint)
        if self.reference_matching:
            self.matcher: Union[NameMatcher, ReferenceNameMatcher] = ReferenceNameMatcher(self.classnames)
            # the reference scans the whole prompt string, hint included (B4: "art" in "folk art")
            prompts = [template.replace("{name}", n).replace("{}", n) for n in self.classnames]
            self.class_pieces = [tokenize_pieces(tokenizer, self.matcher.split(p)) for p in prompts]
        else:
            self.matcher = NameMatcher(self.classnames)
            self.class_pieces = [tokenize_pieces(tokenizer, p)
                                 for p in class_prompt_pieces(template, len(self.classnames))]
        self._check_prompts_fit(cfg)
        self.prompt_bank = PromptBank(
            self.class_pieces, self.name_learner.lengths, self.slot_token_ids, token_weight,
            self.context_length, trim=True,
        )

    def _check_prompts_fit(self, cfg: CN) -> None:
        """Every class prompt, its learned name included, within the text context: the context cut a long
        name (or ``FLE`` with a large ``N_CTX``) out of its prompt, so its tensor never got a gradient and
        was saved and scored untrained (exit 0), or, with no slot left, training ended in a traceback."""
        lengths = self.name_learner.lengths
        for c, pieces in enumerate(self.class_pieces):
            need = 2 + sum(lengths[p.index] if isinstance(p, Slot) else len(p) for p in pieces)  # + SOT, EOT
            if need > self.context_length:
                fix = (f"lower TRAINER.FSNL.N_CTX (now {cfg.N_CTX})" if cfg.FLE
                       else "shorten the classname in the split file, or set TRAINER.FSNL.FLE True")
                raise BackboneError(f"the prompt of class {self.classnames[c]!r} needs {need} tokens with its learned "
                                    f"name, more than the text context of {self.context_length}: its name would "
                                    f"never be learned; {fix}")

    # ----------------------------------------------------------- class prompts
    def class_text_features(self) -> torch.Tensor:
        embeds, eot = self.prompt_bank(self.name_learner.bank)
        return F.normalize(self.text_encoder(embeds, eot, shared_prefix=self.prompt_bank.shared_prefix,
                                             buckets=TEXT_BUCKETS).float(), dim=-1)

    # ----------------------------------------------------------- captions
    def caption_owner(self, caption: str, label: int) -> Optional[int]:
        """The class a caption is about: its dataset label (B6 fixed), or under ``NAME_MATCHING
        reference`` the first class name in label order that is a substring of it (None: no name)."""
        if self.reference_matching:
            return self.matcher.owner(caption)
        return int(label)

    def caption_template(self, caption: str, label: int) -> Optional[Union[List[Piece], str]]:
        """Tokenised caption with its own class name as ``OWN``; None if the name is absent (B6).

        Under ``NAME_MATCHING reference`` the template is the reference's own (spec §2.7): the lower-cased
        caption with *every* substring occurrence of the extracted name replaced by a placeholder, also
        inside other words and names ("pl<ant>", "eleph<ant> shrew": the swapped caption then reads
        "eleph<name> shrew"), kept as text and split by :meth:`fill` once it is filled. Splitting the
        caption first marked only the occurrences the name alternation matched: swapped captions differed
        from the reference's wherever a name hides inside another word or name."""
        owner = self.caption_owner(caption, label)
        if owner is None:
            return None
        label = owner
        if self.reference_matching:
            return str(caption).lower().replace(self.classnames[label], REFERENCE_PLACEHOLDER)
        pieces = self.matcher.split(normalize_name(caption))
        if not any(isinstance(p, Slot) and p.index == label for p in pieces):
            return None
        marked = [OWN if isinstance(p, Slot) and p.index == label else p for p in pieces]
        return tokenize_pieces(self.tokenizer, marked)

    def fill(self, template: Optional[Union[List[Piece], str]], label: int) -> List[Piece]:
        if template is None:
            return self.class_pieces[label]
        if isinstance(template, str):  # the reference's text template: fill, then split the filled text
            key = (template, int(label))
            if key not in self._filled:
                text = template.replace(REFERENCE_PLACEHOLDER, self.classnames[label])
                self._filled[key] = tokenize_pieces(self.tokenizer, self.matcher.split(text), self._piece_ids)
            return self._filled[key]
        own = Slot(label)
        return [own if p is OWN or (isinstance(p, Slot) and p.index == -1) else p for p in template]

    def text_features_for(self, sequences: Sequence[Sequence[Piece]]) -> torch.Tensor:
        device = self.name_learner.bank.device
        batch = PromptBatch.build(sequences, self.name_learner.lengths, self.slot_token_ids,
                                  self.context_length).trimmed().to(device)
        embeds = batch.embed(self.token_weight, self.name_learner.bank)
        return F.normalize(self.text_encoder(embeds, batch.eot_idx, shared_prefix=batch.shared_prefix(),
                                             buckets=TEXT_BUCKETS).float(), dim=-1)


@TRAINER_REGISTRY.register()
class FSNL_openclip(ClipTrainer):
    """FSNL on an OpenCLIP backbone chosen by ``MODEL.BACKBONE.{NAME,WEIGHTS}``."""

    PREC_KEY = "FSNL"
    #: Forced loss for the ablation aliases (None: read ``TRAINER.FSNL.LOSS``).
    LOSS_PRESET: Optional[str] = None

    def check_cfg(self, cfg: CN) -> None:
        super().check_cfg(cfg)
        loss = self.LOSS_PRESET or cfg.TRAINER.FSNL.LOSS
        if loss not in LOSSES:
            raise ValueError(f"TRAINER.FSNL.LOSS must be one of {LOSSES}, got {loss!r}")
        if cfg.TRAINER.FSNL.ABSENT_CLASSES not in ("reference", "present"):
            raise ValueError("TRAINER.FSNL.ABSENT_CLASSES must be 'reference' or 'present'")
        n_ctx = cfg.TRAINER.FSNL.N_CTX
        if cfg.TRAINER.FSNL.FLE and (not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or n_ctx < 1):
            raise ValueError(f"TRAINER.FSNL.N_CTX must be an integer >= 1 with TRAINER.FSNL.FLE True (the "
                             f"name-embedding rows per class), got {n_ctx!r}")
        if cfg.TRAINER.FSNL.NAME_MATCHING not in ("fixed", "reference"):
            raise ValueError(f"TRAINER.FSNL.NAME_MATCHING must be 'fixed' or 'reference', got "
                             f"{cfg.TRAINER.FSNL.NAME_MATCHING!r}")

    @property
    def loss_name(self) -> str:
        return self.LOSS_PRESET or self.cfg.TRAINER.FSNL.LOSS

    def build_model(self) -> None:
        cfg = self.cfg
        self.load_clip()
        self.model = FSNLModel(self).to(self.device)
        self.name_learner = self.model.name_learner
        self.optim = build_optimizer(self.name_learner, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("name_learner", self.name_learner, self.optim, self.sched)
        self.scaler = self.build_scaler()
        self.rng = torch.Generator().manual_seed(max(int(cfg.SEED), 0))
        self.caption_templates: List[Optional[List[Piece]]] = []
        self.caption_owners: List[Optional[int]] = []
        if self.uses_captions and not self.eval_only:  # an evaluation-only trainer never reads a caption
            train_x = self.dm.dataset.train_x
            self.caption_templates = [self.model.caption_template(d.caption, d.label) for d in train_x]
            self.caption_owners = [self.model.caption_owner(d.caption, d.label) for d in train_x]
            missing = sum(t is None for t in self.caption_templates)
            if missing:
                logger.info("%d of %d training captions lack their class name; they use the base prompt",
                            missing, len(self.caption_templates))
        logger.info("FSNL: %d classes, %d learned rows (%s), loss=%s, captions=%s", len(self.model.classnames),
                    self.name_learner.bank.shape[0], "FLE" if cfg.TRAINER.FSNL.FLE else "BPE length",
                    self.loss_name, self.uses_captions)

    def before_epoch(self) -> None:
        super().before_epoch()
        # Template swapping draws from its own generator, reseeded per epoch so that a resumed run
        # makes the same draws as an uninterrupted one.
        seed = max(int(self.cfg.SEED), 0)
        self.rng.manual_seed(derive_seed(seed, int(self.epoch), 13))

    @property
    def uses_captions(self) -> bool:
        if self.loss_name == "base":
            return False
        return bool(self.cfg.TRAINER.FSNL.USE_CAPTION) or self.loss_name == "clip_caption"

    def checkpoint_meta(self) -> Dict[str, Any]:
        meta = super().checkpoint_meta()
        meta.update(fle=bool(self.cfg.TRAINER.FSNL.FLE), n_ctx=int(self.cfg.TRAINER.FSNL.N_CTX))
        return meta

    def load_state(self, name: str, state_dict: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> None:
        if name != "name_learner":
            return super().load_state(name, state_dict, meta)
        misfits: List[str] = []
        matched, total = self.name_learner.load_names(state_dict, misfits)
        if not total:
            # Not a name learner's state at all (e.g. a CoOp context saved under name_learner/): it loaded
            # "0 of 5 names" and the untrained names were evaluated and filed as the trained model.
            keys = sorted(str(k) for k in state_dict)[:3]
            raise ValueError(f"it holds no learned name (its keys: {keys or 'none'}); it is not an FSNL checkpoint")
        own = len(self.name_learner.classnames)
        theirs = meta.get("classnames")
        if misfits and isinstance(theirs, (list, tuple)) and [str(c) for c in theirs] == self.label_space():
            # Its own label space, yet names that do not fit: the checkpoint was written by code that
            # tokenised them differently (or edited). Keeping those names at their initial value went on
            # silently, e.g. a resume trained on from a half-loaded state; the engine makes this one line.
            raise ValueError(f"{len(misfits)} of the {own} learned names of its own label space have another "
                             f"shape here, e.g. {misfits[0]} (written by another version of the code?)")
        if matched < own and isinstance(theirs, (list, tuple)) and [str(c) for c in theirs] == self.label_space():
            # its own label space, yet some names are not in it: a damaged or edited file, loaded
            # partially before (the missing names kept their initial value; a note in log.txt only)
            raise ValueError(f"{own - matched} of the {own} learned names of its own label space are missing "
                             "from it (a damaged or edited checkpoint)")
        for why in misfits:
            logger.warning("Skipping %s", why)
        if total and not matched and not meta.get("classnames") and self.load_info is not None:
            # A checkpoint without meta (the reference's) names its classes only through its keys.
            raise CheckpointError(
                f"--model-dir {self.load_info.get('model_dir')}: none of its {total} learned names is a class "
                f"of this label space ({own} classes); point --model-dir at a run of this dataset"
            )
        logger.info("Loaded %d of %d names from the checkpoint (%d in the checkpoint); the other %d keep "
                    "their initialisation", matched, own, total, own - matched)
        if self.load_info is not None:  # an evaluation's load_model: results.json records the match
            self.load_info["names_loaded"] = f"{matched}/{own}"

    # ----------------------------------------------------------- training

    def swapped_sequences(self, indices: Sequence[int], labels: torch.Tensor) -> List[List[Piece]]:
        """Template swapping (spec §2.7): a caption of *another* class, with this item's name in it."""
        templates = [self.caption_templates[int(i)] for i in indices]
        y = labels.cpu()
        if self.model.reference_matching:
            # the reference swaps by the classes it extracted from the captions (B6), not by label
            owners = [self.caption_owners[int(i)] for i in indices]
            y = torch.tensor([o if o is not None else int(v) for o, v in zip(owners, y.tolist())])
        valid = torch.tensor([t is not None for t in templates], dtype=torch.bool)
        pick = swap_partners(y, valid, self.rng).tolist()
        return [self.model.fill(templates[j] if j >= 0 else None, label) for j, label in zip(pick, y.tolist())]

    def own_sequences(self, indices: Sequence[int], labels: torch.Tensor) -> List[List[Piece]]:
        return [self.model.fill(self.caption_templates[int(i)], int(y)) for i, y in zip(indices, labels.tolist())]

    def compute_loss(self, feats: torch.Tensor, labels: torch.Tensor, indices: Sequence[int]):
        scale = self.logit_scale
        loss_name = self.loss_name
        present_only = self.cfg.TRAINER.FSNL.ABSENT_CLASSES == "present"
        logits = None
        loss_base = loss_cap = None
        with self.autocast():
            text = self.model.class_text_features()
        logits = scale * feats @ text.float().t()
        classes = torch.arange(logits.shape[1], device=logits.device)
        if loss_name in ("full", "base") or (loss_name == "caption" and not self.uses_captions):
            loss_base = 0.5 * (same_label_loss(logits, labels, classes)
                               + same_label_loss(logits.t(), classes, labels, only_present=present_only))
        if loss_name == "clip_caption":
            with self.autocast():
                h = self.model.text_features_for(self.own_sequences(indices, labels))
            m = scale * feats @ h.float().t()
            target = torch.arange(m.shape[0], device=m.device)
            return 0.5 * (F.cross_entropy(m, target) + F.cross_entropy(m.t(), target)), logits
        if self.uses_captions and loss_name in ("full", "caption"):
            with self.autocast():
                h = self.model.text_features_for(self.swapped_sequences(indices, labels))
            m = scale * feats @ h.float().t()
            loss_cap = 0.5 * (same_label_loss(m, labels, labels) + same_label_loss(m.t(), labels, labels))
        if loss_base is not None and loss_cap is not None:
            return 0.5 * (loss_cap + loss_base), logits
        return (loss_cap if loss_cap is not None else loss_base), logits

    def forward_backward(self, batch: Dict[str, Any]) -> Dict[str, float]:
        feats = self.batch_features(batch)
        labels = batch["label"].to(self.device)
        indices = batch["index"]
        loss, logits = self.compute_loss(feats, labels, indices.tolist() if torch.is_tensor(indices) else indices)
        self.optimize(loss)
        self.maybe_update_lr()
        return {"loss": loss.item(), "acc": compute_accuracy(logits.detach(), labels)[0].item()}

    # ----------------------------------------------------------- evaluation
    def compute_text_features(self) -> torch.Tensor:
        with self.autocast():
            return self.model.class_text_features().float()


# ---------------------------------------------------------------- variants (spec §3.1-3.2)
@TRAINER_REGISTRY.register()
class FSNL_openclip_400M_L14(FSNL_openclip):
    """FSNL on OpenCLIP ViT-L-14 trained on LAION-400M."""

    BACKBONE_PRESET = ("ViT-L-14", "laion400m_e32")


@TRAINER_REGISTRY.register()
class FSNL_openclip_2B(FSNL_openclip):
    """FSNL on OpenCLIP ViT-g-14 trained on LAION-2B (the reference README calls it EVA-CLIP; it is not)."""

    BACKBONE_PRESET = ("ViT-g-14", "laion2b_s12b_b42k")


@TRAINER_REGISTRY.register()
class OpenAI_FSNL(FSNL_openclip):
    """FSNL on OpenAI's ViT-B/16 weights, loaded through open_clip (QuickGELU)."""

    BACKBONE_PRESET = ("ViT-B-16", "openai", "true")


@TRAINER_REGISTRY.register()
class EVA_FSNL_400M(FSNL_openclip):
    """FSNL on EVA01-CLIP g/14 (LAION-400M), open_clip's ``EVA01-g-14`` / ``laion400m_s11b_b41k``."""

    BACKBONE_PRESET = ("EVA01-g-14", "laion400m_s11b_b41k")


@TRAINER_REGISTRY.register()
class EVA_FSNL_2B(FSNL_openclip):
    """FSNL on EVA02-CLIP E/14+ (LAION-2B), open_clip's ``EVA02-E-14-plus`` / ``laion2b_s9b_b144k``."""

    BACKBONE_PRESET = ("EVA02-E-14-plus", "laion2b_s9b_b144k")


@TRAINER_REGISTRY.register()
class FSNL_openclip_Ablation1(FSNL_openclip):
    """Caption loss only when USE_CAPTION, else the base-double loss."""

    LOSS_PRESET = "caption"


@TRAINER_REGISTRY.register()
class FSNL_openclip_Ablation2(FSNL_openclip):
    """Base-double loss only."""

    LOSS_PRESET = "base"


@TRAINER_REGISTRY.register()
class FSNL_openclip_Ablation3(FSNL_openclip):
    """Plain CLIP InfoNCE between the batch images and their own (unswapped) captions."""

    LOSS_PRESET = "clip_caption"
