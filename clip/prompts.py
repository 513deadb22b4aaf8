"""Prompts with learned name slots, built once and embedded with one gather + one scatter.

A prompt (or caption) is a sequence of *pieces*: text, or a :class:`Slot` that stands for the learned
rows of one class name. Pieces are BPE-encoded once; :class:`PromptBatch` turns the token-piece
sequences into id tensors plus flat scatter indices, and :meth:`PromptBatch.embed` builds the
``[N, L, W]`` input of :class:`clip.text.TextEncoder` without any per-class Python work (P1/P2).

The learned names live in one ``[R, W]`` *bank*: every class's rows concatenated in class order
(:func:`bank_offsets` gives where each class starts).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

SOT_ID = 49406  # <start_of_text> of the CLIP BPE vocabulary
EOT_ID = 49407  # <end_of_text>
PAD_ID = 0


@dataclass(frozen=True)
class Slot:
    """Insert the learned embedding rows of name/group ``index`` here."""

    index: int


Piece = Union[str, Slot]
TokenPiece = Union[List[int], Slot]
SlotSpan = Tuple[int, int, int]  # (start position, length, name index)


# ---------------------------------------------------------------------------------------- names
def normalize_name(s: str) -> str:
    """Lower-case, ``_`` to space, whitespace collapsed and stripped.

    B2: the reference meant to do this but its second assignment overwrote the first, leaving only
    ``.`` -> space + lower-case. The ``.`` replacement existed because names were ParameterDict keys;
    we index a bank by position, so dots stay and "mr. mime" is still found in captions. The same rule
    is applied to class names, prompts and captions.
    """
    return " ".join(str(s).replace("_", " ").lower().split())


def reference_normalize_name(s: str) -> str:
    """The reference's *effective* class-name normalisation (spec §2.2, B2): ``.`` to space, lower-case.

    Underscores and repeated spaces are kept. Only for ``TRAINER.FSNL.NAME_MATCHING reference``.
    """
    return str(s).replace(".", " ").lower()


def _is_word_char(c: str) -> bool:
    """What ``\\w`` matches in a Python ``str`` pattern: Unicode letters and digits, and ``_``."""
    return c.isalnum() or c == "_"


#: Where CoOp-family prompts put the class name relative to the learned context (CoOp's three options).
CLASS_TOKEN_POSITIONS = ("end", "middle", "front")


def check_context_options(node: Any, key: str) -> None:
    """One check for a CoOp-style ``TRAINER.<key>`` block (``CLASS_TOKEN_POSITION``, ``N_CTX`` without
    ``CTX_INIT``), shared by the OpenCLIP and the OpenAI-CLIP trainers; raises ValueError naming the key."""
    position = node.get("CLASS_TOKEN_POSITION", "end")
    if position not in CLASS_TOKEN_POSITIONS:
        raise ValueError(f"TRAINER.{key}.CLASS_TOKEN_POSITION must be one of {CLASS_TOKEN_POSITIONS}, "
                         f"got {position!r}")
    if not str(node.get("CTX_INIT", "")).strip() and int(node.N_CTX) < 1:
        raise ValueError(f"TRAINER.{key}.N_CTX must be positive without CTX_INIT, got {node.N_CTX}")


def _index_names(names: Sequence[str], normalize: Callable[[str], str]) -> Tuple[List[str], Dict[str, int]]:
    """Normalised names and ``{name: class index}``; an empty or colliding name is a ValueError."""
    normalized = [normalize(n) for n in names]
    index: Dict[str, int] = {}
    for i, n in enumerate(normalized):
        if not n:
            raise ValueError(f"Class name {names[i]!r} is empty after normalisation")
        index.setdefault(n, i)
    if len(index) != len(normalized):
        dupes = sorted({n for n in normalized if normalized.count(n) > 1})
        raise ValueError(f"Class names collide after normalisation: {dupes}")
    return normalized, index


class NameMatcher:
    """Finds class names in text at word boundaries, longest name first.

    B4: the reference matched plain substrings in label order, so "ant" fired inside "plant" and an
    earlier short name could shadow a longer one. Here a name only matches where it is not preceded or
    followed by a word character, and at any position the longest matching name wins ("giant
    anteater" beats "ant"). Names and text are normalised with :func:`normalize_name` first.

    Matching walks a character trie of the names from every position that may start a name, so its
    cost depends on the text and the longest name, not on the number of classes (one regex
    alternation over all names tries every name at every position).
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.names, self._index = _index_names(names, normalize_name)
        # trie node: dict char -> node; the key None holds the index of a name ending here
        self._trie: Dict[Any, Any] = {}
        for n, i in self._index.items():
            node = self._trie
            for c in n:
                node = node.setdefault(c, {})
            node[None] = i

    def _matches(self, text: str) -> Iterable[Tuple[int, int, int]]:
        """``(start, end, index)`` of the non-overlapping matches, left to right."""
        n, s = len(text), 0
        while s < n:
            if s and _is_word_char(text[s - 1]):
                s += 1
                continue
            node, best, k = self._trie, None, s
            while k < n:
                node = node.get(text[k])
                if node is None:
                    break
                k += 1
                if None in node and (k == n or not _is_word_char(text[k])):
                    best = (k, node[None])
            if best is None:
                s += 1
                continue
            yield s, best[0], best[1]
            s = best[0]

    def split(self, text: str) -> List[Piece]:
        """Normalised ``text`` cut into text pieces and :class:`Slot` s (B5: no match, one piece)."""
        text = normalize_name(text)
        pieces: List[Piece] = []
        cursor = 0
        for start, end, index in self._matches(text):
            if start > cursor:
                pieces.append(text[cursor:start])
            pieces.append(Slot(index))
            cursor = end
        if cursor < len(text):
            pieces.append(text[cursor:])
        return pieces

    def find(self, text: str) -> List[int]:
        """Indices of the names occurring in ``text``, in order of occurrence (repeats kept)."""
        return [index for _, _, index in self._matches(normalize_name(text))]


class ReferenceNameMatcher:
    """The reference's matching (spec §2.5 steps 1-2), kept for bit-level parity (B2/B4/B5 on purpose).

    Names are normalised with :func:`reference_normalize_name`, text is only lower-cased. The names
    that occur as plain substrings are joined, in label order, into one regex alternation that splits
    the text; at any position the earliest-listed name wins, even inside a word or a longer name. With
    no name in the text the empty pattern splits it into single characters (B5). Selected by
    ``TRAINER.FSNL.NAME_MATCHING reference``; :class:`NameMatcher` is the fixed default.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.names, self._index = _index_names(names, reference_normalize_name)

    def owner(self, text: str) -> Optional[int]:
        """The reference's ``extract_classname`` (B6): the first name in label order inside the text."""
        low = str(text).lower()
        return next((i for i, n in enumerate(self.names) if n in low), None)

    def split(self, text: str) -> List[Piece]:
        low = str(text).lower()
        matched = [n for n in self.names if n in low]
        if not matched:
            return [c for c in low]  # re.split on the empty pattern (B5)
        pattern = "|".join(f"({re.escape(n)})" for n in matched)
        pieces: List[Piece] = []
        for k, part in enumerate(re.split(pattern, low)):
            if not part:
                continue
            # re.split yields text, then one entry per group of the alternation (the matched name in
            # its group, None in the others), so a captured piece sits at a position k % (G+1) != 0
            pieces.append(Slot(self._index[part]) if k % (len(matched) + 1) else part)
        return pieces

    def find(self, text: str) -> List[int]:
        return [p.index for p in self.split(text) if isinstance(p, Slot)]


# ---------------------------------------------------------------------------------------- tokens
def tokenize_pieces(tokenizer: Any, pieces: Sequence[Union[Piece, List[int]]],
                    cache: Optional[Dict[str, List[int]]] = None) -> List[TokenPiece]:
    """BPE-encode the text pieces (Slots and already-encoded pieces pass through unchanged).

    Each piece is encoded on its own, as the reference does (spec §2.5 step 3). That equals encoding the
    whole string where pieces meet at spaces; a name that begins or ends with punctuation ("bear
    (black)" before ", a type of") can merge with its neighbour into one BPE token in the whole string
    ("),") and is two tokens here. A whitespace-only piece encodes to ``[]``.
    ``cache`` lets repeated template texts be encoded once.
    """
    out: List[TokenPiece] = []
    for piece in pieces:
        if isinstance(piece, Slot):
            out.append(piece)
        elif isinstance(piece, str):
            if cache is not None and piece in cache:
                out.append(list(cache[piece]))
                continue
            ids = list(tokenizer.encode(piece)) if piece.strip() else []
            if cache is not None:
                cache[piece] = ids
            out.append(list(ids))
        else:
            out.append([int(t) for t in piece])
    return out


def name_slot_ids(tokenizer: Any, names: Sequence[str], n_ctx: Optional[int] = None
                  ) -> Tuple[List[int], List[List[int]]]:
    """``(slot_lengths, slot_token_ids)`` for the names.

    Variable-length slots (``n_ctx`` None, FSNL FLE=False) use each name's own BPE ids; fixed-length
    slots (FLE=True) use ``n_ctx`` copies of the id of "X", as the reference's id sequences do (the ids
    only matter for the EOT position and are overwritten by the learned rows).
    """
    if n_ctx is None:
        ids = [list(tokenizer.encode(normalize_name(n))) for n in names]
        empty = [n for n, t in zip(names, ids) if not t]
        if empty:
            raise ValueError(f"Names without any BPE token: {empty}")
        return [len(t) for t in ids], ids
    if n_ctx < 1:
        raise ValueError(f"n_ctx must be positive, got {n_ctx}")
    x_id = tokenizer.encode("X")[0]
    return [int(n_ctx)] * len(names), [[x_id] * int(n_ctx) for _ in names]


def bank_offsets(slot_lengths: Sequence[int]) -> torch.Tensor:
    """Row where each name starts in the concatenated bank (``[C]`` long)."""
    lengths = torch.as_tensor(list(slot_lengths), dtype=torch.long)
    return torch.cumsum(lengths, 0) - lengths


def assemble(pieces: Sequence[TokenPiece], slot_lengths: Sequence[int], slot_token_ids: Sequence[Sequence[int]],
             context_length: int, sot_id: int = SOT_ID, eot_id: int = EOT_ID
             ) -> Tuple[List[int], List[SlotSpan]]:
    """Unpadded ids ``SOT + pieces + EOT`` and the ``(start, length, index)`` span of every slot.

    Over-long sequences follow the reference (spec §2.5 step 4): with a budget of
    ``context_length - 2``, while the planned length exceeds it the last piece is popped; a slot is
    dropped whole, a text piece is cut to the room left (kept if any room is left).
    """
    budget = context_length - 2
    plan: List[TokenPiece] = list(pieces)
    sizes = [slot_lengths[p.index] if isinstance(p, Slot) else len(p) for p in plan]
    total = sum(sizes)
    while total > budget:
        piece = plan.pop()
        total -= sizes.pop()
        if isinstance(piece, Slot):
            continue
        room = budget - total
        if room > 0:
            plan.append(piece[:room])
            sizes.append(room)
            total += room
    ids = [sot_id]
    spans: List[SlotSpan] = []
    for piece in plan:
        if isinstance(piece, Slot):
            tokens = slot_token_ids[piece.index]
            length = slot_lengths[piece.index]
            if len(tokens) != length:
                raise ValueError(f"Slot {piece.index}: {len(tokens)} token ids for a {length}-row slot")
            spans.append((len(ids), length, piece.index))
            ids.extend(int(t) for t in tokens)
        else:
            ids.extend(piece)
    ids.append(eot_id)
    return ids, spans


# ---------------------------------------------------------------------------------------- batches
def scatter_names(base: torch.Tensor, bank: torch.Tensor, slot_dst: torch.Tensor, slot_src: torch.Tensor,
                  identity_src: bool = False) -> torch.Tensor:
    """``base`` ``[N, L, W]`` with the bank rows ``slot_src`` written at flat positions ``slot_dst``.

    Out of place (``base`` may be a frozen buffer) and differentiable with respect to ``bank``.
    """
    n, length, width = base.shape
    flat = base.reshape(n * length, width)
    if slot_dst.numel():
        # identity_src: one slot per bank row, in bank order (class prompts), so no gather is needed.
        rows = bank if identity_src else bank[slot_src]
        flat = flat.index_put((slot_dst,), rows.to(flat.dtype))
    return flat.view(n, length, width)


@dataclass
class PromptBatch:
    """Id templates of N sequences and where the learned name rows go.

    ``ids [N, L]`` (0-padded), ``eot_idx [N]``, ``slot_dst [M]`` (flat ``row * L + col`` positions) and
    ``slot_src [M]`` (rows of the name bank).
    """

    ids: torch.Tensor
    eot_idx: torch.Tensor
    slot_dst: torch.Tensor
    slot_src: torch.Tensor

    @classmethod
    def build(cls, token_piece_sequences: Sequence[Sequence[TokenPiece]], slot_lengths: Sequence[int],
              slot_token_ids: Sequence[Sequence[int]], context_length: int,
              sot_id: int = SOT_ID, eot_id: int = EOT_ID) -> PromptBatch:
        lengths = [int(v) for v in slot_lengths]
        if any(v < 1 for v in lengths):
            raise ValueError("Every slot needs at least one row")
        offsets = bank_offsets(lengths).tolist()
        n = len(token_piece_sequences)
        ids = torch.full((n, context_length), PAD_ID, dtype=torch.long)
        eot = torch.empty(n, dtype=torch.long)
        dst: List[int] = []
        src: List[int] = []
        for row, pieces in enumerate(token_piece_sequences):
            seq, spans = assemble(pieces, lengths, slot_token_ids, context_length, sot_id, eot_id)
            ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            eot[row] = len(seq) - 1
            base = row * context_length
            for start, length, index in spans:
                dst.extend(range(base + start, base + start + length))
                src.extend(range(offsets[index], offsets[index] + length))
        return cls(ids, eot, torch.tensor(dst, dtype=torch.long), torch.tensor(src, dtype=torch.long))

    def trimmed(self) -> PromptBatch:
        """The same prompts cut after the longest EOT (``[N, max(eot)+1]``).

        The causal text tower never reads past the pooled EOT token, so features are unchanged,
        while every later copy of the embeddings (the per-step scatter) shrinks from L to the prompt
        length.
        """
        old_len = self.ids.shape[1]
        new_len = int(self.eot_idx.max()) + 1 if self.eot_idx.numel() else old_len
        if new_len >= old_len:
            return self
        rows, cols = self.slot_dst // old_len, self.slot_dst % old_len
        return PromptBatch(self.ids[:, :new_len].contiguous(), self.eot_idx, rows * new_len + cols, self.slot_src)

    def shared_prefix(self) -> int:
        """Leading positions with the same id in every row and no name slot (constant under the causal mask).

        What :class:`clip.TextEncoder` may compute once and reuse (``shared_prefix``): at least the
        SOT position; for class prompts "SOT a photo of".
        """
        n, length = self.ids.shape
        if n == 0 or length == 0:
            return 0
        same = (self.ids == self.ids[:1]).all(dim=0).long()
        p = int(same.cumprod(0).sum())
        if self.slot_dst.numel():
            p = min(p, int((self.slot_dst % length).min()))
        return min(p, int(self.eot_idx.min()))

    def common_prefix(self) -> int:
        """Leading positions whose embedding is the same in every row *whatever the bank holds*: the
        same token id and the same slot row (or no slot) in every row -- e.g. CoOp's "SOT ctx_1 …
        ctx_n" with a shared context. Under the causal mask their hidden states are the same in every
        row too, so they can be run once, with gradient (:meth:`clip.TextEncoder.prefix_states`).
        Capped before the first pooled position."""
        n, length = self.ids.shape
        if n == 0 or length == 0:
            return 0
        source = torch.full((n * length,), -1, dtype=torch.long, device=self.ids.device)
        if self.slot_dst.numel():
            source[self.slot_dst.long()] = self.slot_src.long().to(source.device)
        source = source.view(n, length)
        same = ((self.ids == self.ids[:1]) & (source == source[:1])).all(dim=0).long()
        return min(int(same.cumprod(0).sum()), int(self.eot_idx.min()))

    def to(self, device: Union[str, torch.device]) -> PromptBatch:
        return PromptBatch(self.ids.to(device), self.eot_idx.to(device), self.slot_dst.to(device),
                           self.slot_src.to(device))

    def base_embeddings(self, token_embedding_weight: torch.Tensor) -> torch.Tensor:
        """Frozen token rows of the id templates (no graph to the token table)."""
        with torch.no_grad():
            return token_embedding_weight.detach()[self.ids.to(token_embedding_weight.device)]

    def embed(self, token_embedding_weight: Optional[torch.Tensor], bank: torch.Tensor,
              base: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[N, L, W]`` prompt embeddings with the bank's rows in the slots."""
        if base is None:
            if token_embedding_weight is None:
                raise ValueError("Give the token embedding table or a precomputed base")
            base = self.base_embeddings(token_embedding_weight)
        return scatter_names(base, bank, self.slot_dst.to(base.device), self.slot_src.to(base.device))


def _token_weight(token_embedding: Union[nn.Embedding, torch.Tensor]) -> torch.Tensor:
    return token_embedding.weight if isinstance(token_embedding, nn.Embedding) else token_embedding


class PromptBank(nn.Module):
    """A fixed set of prompts (e.g. one per class), prepared once; ``forward(bank)`` splices names in.

    The ids, scatter indices and frozen base embeddings are non-persistent buffers: they follow
    ``.to(device)`` but never enter a checkpoint. ``trim`` keeps only the positions up to the longest
    EOT (what :class:`clip.TextEncoder` reads). ``sequences`` hold token lists or :class:`Slot` s;
    text pieces are allowed too when a ``tokenizer`` is given.
    """

    def __init__(self, sequences: Sequence[Sequence[Union[Piece, List[int]]]], slot_lengths: Sequence[int],
                 slot_token_ids: Sequence[Sequence[int]], token_embedding: Union[nn.Embedding, torch.Tensor],
                 context_length: int, tokenizer: Any = None, trim: bool = False) -> None:
        super().__init__()
        cache: Dict[str, List[int]] = {}
        token_sequences = []
        for seq in sequences:
            if tokenizer is None and any(isinstance(p, str) for p in seq):
                raise ValueError("PromptBank got text pieces but no tokenizer")
            token_sequences.append(tokenize_pieces(tokenizer, seq, cache))
        batch = PromptBatch.build(token_sequences, slot_lengths, slot_token_ids, context_length)
        if trim:  # see PromptBatch.trimmed: exact for the text encoder, less to copy every step
            batch = batch.trimmed()
        weight = _token_weight(token_embedding)
        self.context_length = int(context_length)
        self.slot_lengths = [int(v) for v in slot_lengths]
        self.register_buffer("ids", batch.ids.to(weight.device), persistent=False)
        self.register_buffer("eot_idx", batch.eot_idx.to(weight.device), persistent=False)
        self.register_buffer("slot_dst", batch.slot_dst.to(weight.device), persistent=False)
        self.register_buffer("slot_src", batch.slot_src.to(weight.device), persistent=False)
        self.register_buffer("base", batch.base_embeddings(weight), persistent=False)
        self.shared_prefix = batch.shared_prefix()
        self.common_prefix = batch.common_prefix()
        src = batch.slot_src
        self.identity_src = bool(torch.equal(src, torch.arange(src.numel()))) and src.numel() == sum(
            self.slot_lengths)

    @property
    def batch(self) -> PromptBatch:
        return PromptBatch(self.ids, self.eot_idx, self.slot_dst, self.slot_src)

    def forward(self, bank: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        identity = self.identity_src and bank.shape[0] == self.slot_src.numel()
        return scatter_names(self.base, bank, self.slot_dst, self.slot_src, identity), self.eot_idx


def class_prompt_pieces(template: str, n_classes: int) -> List[List[Piece]]:
    """One piece sequence per class from a template with ``{name}`` (or ``{}``) placeholders.

    The template's own text (including a filled-in hint such as "folk art") is never scanned for
    names, so a class called "art" is only inserted where the placeholder is (B4).
    """
    placeholder = "{name}" if "{name}" in template else "{}"
    parts = template.split(placeholder)
    if len(parts) < 2:
        raise ValueError(f"Template {template!r} has no '{{name}}' or '{{}}' placeholder")
    if "{hint}" in template:
        raise ValueError(f"Template {template!r} still has an unfilled '{{hint}}'")
    out: List[List[Piece]] = []
    for c in range(n_classes):
        pieces: List[Piece] = []
        for i, text in enumerate(parts):
            if i:
                pieces.append(Slot(c))
            if text:
                pieces.append(text)
        out.append(pieces)
    return out
