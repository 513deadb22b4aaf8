"""CLIP's text tower run on token *embeddings*, so learned rows can be spliced into a prompt."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

TRUNCATABLE_POOLS = ("argmax", "eos")
#: Length groups the trainers run their prompts in (``TextEncoder`` ``buckets``, CoCoOp's class
#: groups): exact, and each group is cut at its own longest prompt instead of the batch's.
TEXT_BUCKETS = 4
#: What one more length group costs (one more pass of every block's kernels), in row-positions times
#: the tower's width squared: a group is split off only when it saves more padded positions than
#: ``GROUP_OVERHEAD / width²`` (40 on the mini CLIP's width 128, 2.5 on ViT-B-16's 512). Measured on a
#: 2-core CPU, where a small tower is bound by per-call overhead: with a free extra group, FSNL's
#: training step on MiniPlants (9 classes, 36 captions) took 66 ms against 50 ms in one group.
GROUP_OVERHEAD = 40 * 128 ** 2
#: Devices on which rows continuing one of several cached prefixes (CoCoOp: one per image) attend
#: to them in place (:func:`_prefix_attention`) by default, instead of through one fused kernel over
#: the prefix copied in front of every row: the CPU's fused kernel is tiled for long sequences, and
#: the copy is a tenth of a CoCoOp evaluation there. One CoCoOp step's text work (16 images × 41
#: classes) ran 6% faster in place; with a single prefix for every row (CoOp, FSNL), where the copy is
#: a broadcast, the fused kernel's fewer calls won (CoOp's step 1.17× against 1.01× over no reuse,
#: paired; ``benchmarks.prompt_prefix``). On a GPU the fused kernel is kept (not measured: no GPU was
#: lent to this project); ``TextEncoder(prefix_in_place=…)`` overrides both rules.
PREFIX_IN_PLACE_DEVICES = ("cpu",)


def length_buckets(lengths: Sequence[int], max_buckets: int, group_cost: float = 0.0) -> List[List[int]]:
    """Rows grouped into at most ``max_buckets`` groups of similar length, minimising padded positions.

    Every group is run cut at its own longest row, so the cost is ``Σ_g |g| · max_len(g)``, plus
    ``group_cost`` positions per group (the fixed cost of one more call); the optimum over contiguous
    runs of the sorted lengths is found by dynamic programming over the distinct lengths (at most
    the context length of them). Groups are returned shortest first.
    """
    n = len(lengths)
    if n == 0:
        return []
    order = sorted(range(n), key=lambda i: (lengths[i], i))
    distinct = sorted(set(int(v) for v in lengths))
    count = [0] * len(distinct)
    pos = {v: k for k, v in enumerate(distinct)}
    for v in lengths:
        count[pos[int(v)]] += 1
    cum = [0]
    for c in count:
        cum.append(cum[-1] + c)
    d = len(distinct)
    k_max = max(1, min(int(max_buckets), d))
    inf = float("inf")
    # best[k][j]: minimal cost of covering distinct lengths [0, j) with k groups; cut[k][j]: last cut
    best = [[inf] * (d + 1) for _ in range(k_max + 1)]
    cut = [[0] * (d + 1) for _ in range(k_max + 1)]
    best[0][0] = 0.0
    for k in range(1, k_max + 1):
        for j in range(1, d + 1):
            for i in range(j):
                if best[k - 1][i] == inf:
                    continue
                cost = best[k - 1][i] + (cum[j] - cum[i]) * distinct[j - 1]
                if cost < best[k][j]:
                    best[k][j], cut[k][j] = cost, i
    k = min(range(1, k_max + 1), key=lambda kk: (best[kk][d] + kk * float(group_cost), kk))
    bounds, j = [], d
    while k:
        i = cut[k][j]
        bounds.append((cum[i], cum[j]))
        j, k = i, k - 1
    return [order[a:b] for a, b in reversed(bounds)]


def _rows(t: Optional[torch.Tensor], index: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``t``'s rows ``index`` (all of ``t`` for None), ``index`` moved to ``t``'s device; None stays None."""
    return t if index is None or t is None else t.index_select(0, index.to(t.device))


def _kv_projection(attn: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """Keys and values of ``x [N, S, W]`` as ``[N, S, 2W]`` (the packed in-projection's k, v rows)."""
    width = x.shape[-1]
    bias = attn.in_proj_bias
    return F.linear(x, attn.in_proj_weight[width:], None if bias is None else bias[width:])


def _attention(attn: nn.MultiheadAttention, q_x: torch.Tensor, kv_x: torch.Tensor,
               mask: Optional[torch.Tensor], kv_prefix: Optional[torch.Tensor] = None,
               prefix_in_place: Optional[bool] = None) -> torch.Tensor:
    """``attn(q_x, kv_x, kv_x, attn_mask=mask, need_weights=False)[0]`` for batch-first inputs.

    The same math as ``nn.MultiheadAttention`` (packed in-projection, scaled dot-product attention,
    out-projection), written on contiguous ``[N·S, W]`` matrices: the module's general path
    transposes to sequence-first and back, copies q/k/v out of the packed projection and sends their
    gradients back through full-size zero tensors -- together about a third of a small tower's time
    (``benchmarks.text_tower``). ``mask`` is additive, ``[S_q, S_k]`` or one per row ``[N, S_q, S_k]``.

    ``kv_prefix [G, P, 2W]`` (:func:`_kv_projection` of P earlier positions, e.g. a cached prompt
    prefix) goes in front of ``kv_x``'s keys/values: the N = G·R rows come prefix by prefix, row
    ``n`` continuing prefix ``n // R`` (G = 1: one prefix for every row). A prefix shared by many rows
    is so projected once, not once per row; with ``prefix_in_place`` (None: for G > 1 on the devices
    of ``PREFIX_IN_PLACE_DEVICES``) it is not copied per row either (:func:`_prefix_attention`).
    ``mask`` counts the prefix among its keys. Only for modules
    :func:`plain_attention` accepts.
    """
    n, s_q, width = q_x.shape
    heads = attn.num_heads
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    if q_x is kv_x and kv_prefix is None:
        qkv = F.linear(q_x, weight, bias).view(n, s_q, 3, heads, width // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    else:
        if q_x is kv_x:  # one packed projection, split
            qkv = F.linear(q_x, weight, bias)
            q, kv = qkv[..., :width], qkv[..., width:]
        else:
            q = F.linear(q_x, weight[:width], None if bias is None else bias[:width])
            kv = _kv_projection(attn, kv_x)
        if kv_prefix is not None:
            kv_prefix = kv_prefix.to(kv.dtype)
            if prefix_in_place is None:
                prefix_in_place = q.device.type in PREFIX_IN_PLACE_DEVICES and kv_prefix.shape[0] > 1
            if prefix_in_place:
                return attn.out_proj(_prefix_attention(q, kv, kv_prefix, heads, mask))
            # elsewhere one fused kernel over the prefix copied in front of every row's own keys/values
            g, p = kv_prefix.shape[:2]
            per_row = kv_prefix.unsqueeze(1).expand(g, n // g, p, kv.shape[-1]).reshape(n, p, kv.shape[-1])
            kv = torch.cat([per_row, kv], dim=1)
        s_k = kv.shape[1]
        q = q.reshape(n, s_q, heads, width // heads).transpose(1, 2)
        k, v = kv.reshape(n, s_k, 2, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
    if mask is not None:
        mask = mask.to(q.dtype)
        if mask.dim() == 3:  # one mask per row, the same for every head
            mask = mask.unsqueeze(1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attn.out_proj(out.transpose(1, 2).reshape(n, s_q, width))


def _prefix_attention(q: torch.Tensor, kv: torch.Tensor, kv_prefix: torch.Tensor, heads: int,
                      mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Attention of queries ``q [N, S_q, W]`` over a shared prefix ``kv_prefix [G, P, 2W]`` (row
    ``n`` continues prefix ``n // R``, N = G·R) and the row's own keys/values ``kv [N, S, 2W]``:
    ``[N, S_q, W]``, before the out-projection.

    Equal to scaled dot-product attention over the prefix rows copied in front of every row's own,
    up to float rounding, but without that copy (N·(P+S)·2W values: 12% of a CoCoOp evaluation's
    time in a profile on Mini-Beyond) and without the CPU's fused kernel, whose tiling is for long
    sequences, not ~10 positions: the scores against the prefix are one matrix product per (prefix,
    head) for all R·S_q queries that continue it, those against the row's own positions a batched
    S_q×S one, and the softmax runs over both parts without joining them (shifted by their common
    maximum, held constant: softmax does not depend on it). ``mask [S_q, P+S]`` or
    ``[N, S_q, P+S]`` is applied to the row's own keys only: the prefix precedes every query, so a
    causal mask never hides it. Timed in ``benchmarks.prompt_prefix`` (README, Performance).
    """
    n, s_q, width = q.shape
    g, p = kv_prefix.shape[:2]
    r, s, hd = n // g, kv.shape[1], width // heads
    scale = hd ** -0.5  # applied to the scores, which are smaller than the queries
    q = q.view(g, r, s_q, heads, hd).permute(0, 3, 1, 2, 4).contiguous()  # [G, H, R, S_q, d]
    k, v = kv.view(g, r, s, 2, heads, hd).permute(3, 0, 4, 1, 2, 5).unbind(0)  # [G, H, R, S, d]
    k_pre, v_pre = kv_prefix.view(g, p, 2, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)  # [G, H, P, d]
    score_pre = torch.matmul(q.view(g, heads, r * s_q, hd), k_pre.transpose(-1, -2)).float() * scale
    score_pre = score_pre.view(g, heads, r, s_q, p)
    score_own = torch.matmul(q, k.transpose(-1, -2)).float() * scale  # [G, H, R, S_q, S]
    if mask is not None:
        own = mask[..., p:].float()
        score_own = score_own + (own.view(g, 1, r, s_q, s) if own.dim() == 3 else own)
    with torch.no_grad():
        top = torch.maximum(score_pre.amax(-1), score_own.amax(-1)).unsqueeze(-1)
    w_pre, w_own = torch.exp(score_pre - top), torch.exp(score_own - top)
    total = w_pre.sum(-1, keepdim=True) + w_own.sum(-1, keepdim=True)
    out = torch.matmul(w_pre.to(v.dtype).view(g, heads, r * s_q, p), v_pre).view(g, heads, r, s_q, hd)
    out = (out + torch.matmul(w_own.to(v.dtype), v)) / total.to(v.dtype)
    return out.permute(0, 2, 3, 1, 4).reshape(n, s_q, width)


def plain_attention(attn: nn.Module) -> bool:
    """An ``nn.MultiheadAttention`` whose forward is exactly what :func:`_attention` computes."""
    return (isinstance(attn, nn.MultiheadAttention) and attn._qkv_same_embed_dim and attn.batch_first
            and attn.bias_k is None and attn.bias_v is None and not attn.add_zero_attn
            and float(attn.dropout) == 0.0 and type(attn.out_proj) in (nn.Linear, NonDynamicallyQuantizableLinear))


class TextEncoder(nn.Module):
    """A parameter-free view onto the text tower of a loaded open_clip model.

    It registers no sub-module, parameter or buffer: the frozen tower (and its 49408×W token table,
    B8) stays owned by the CLIP model, so this encoder can sit inside any trainer module without its
    weights entering an optimiser or a checkpoint. The model must already be on its device.

    Works for ``CLIP`` (text tower flattened onto the model) and ``CustomTextCLIP`` (tower at
    ``model.text``, e.g. the EVA configs). HF text towers and CoCa-style class tokens are not
    supported because they do not run from token embeddings the same way.

    ``prefix_in_place``: how rows continuing a cached prefix attend to it (:func:`_attention`); None
    chooses by device and prefix count, True / False force one way (they agree up to float rounding).
    """

    def __init__(self, model: nn.Module, prefix_in_place: Optional[bool] = None) -> None:
        super().__init__()
        if hasattr(model, "transformer") and hasattr(model, "token_embedding"):
            tower = model
            pool_type = getattr(model, "text_pool_type", "argmax")
            eos_id = getattr(model, "text_eos_id", None)
        else:
            tower = getattr(model, "text", None)
            if tower is None or not hasattr(tower, "transformer") or not hasattr(tower, "token_embedding"):
                raise NotImplementedError(
                    f"{type(model).__name__}: text tower {type(tower).__name__} cannot run from token "
                    "embeddings (HF text towers are not supported)"
                )
            if getattr(tower, "cls_emb", None) is not None or getattr(tower, "use_pad_mask", False):
                raise NotImplementedError("Text towers with a class token or padding mask are not supported")
            pool_type = getattr(tower, "pool_type", "argmax")
            eos_id = getattr(tower, "eos_id", None)
        if pool_type == "none":
            raise NotImplementedError("pool_type 'none' returns token features, not one vector per text")
        # object.__setattr__ keeps the tower out of nn.Module's registries (see class docstring)
        object.__setattr__(self, "_tower", tower)
        self.pool_type = pool_type
        self.eos_id = eos_id
        self.context_length = int(model.context_length)
        self.prefix_in_place = prefix_in_place

    # ------------------------------------------------------------------ views onto the tower
    @property
    def token_embedding(self) -> nn.Embedding:
        return self._tower.token_embedding

    @property
    def transformer(self) -> nn.Module:
        return self._tower.transformer

    @property
    def attn_mask(self) -> Optional[torch.Tensor]:
        return getattr(self._tower, "attn_mask", None)

    @property
    def cast_dtype(self) -> torch.dtype:
        transformer = self.transformer
        if hasattr(transformer, "get_cast_dtype"):
            return transformer.get_cast_dtype()
        return next(transformer.parameters()).dtype

    @property
    def can_truncate(self) -> bool:
        """Cutting the sequence after the pooled token is exact only for causal, EOT-pooled towers."""
        return self.attn_mask is not None and self.pool_type in TRUNCATABLE_POOLS

    # ------------------------------------------------------------------ forward
    def _run_transformer(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
        transformer = self.transformer
        # B1: the reference permuted to sequence-first unconditionally. Current open_clip transformers
        # take batch-first input and carry a `batch_first` attribute (when it is False they transpose
        # internally, so the input is still batch-first); only legacy versions without the attribute
        # expect (L, N, W).
        if getattr(transformer, "batch_first", None) is None:
            return transformer(x.permute(1, 0, 2), attn_mask=attn_mask).permute(1, 0, 2)
        return transformer(x, attn_mask=attn_mask)

    @property
    def can_reuse_prefix(self) -> bool:
        """Prefix reuse and the pooled-only last block need a causal, batch-first tower of plain
        open_clip blocks (their math is known, :meth:`_run_blocks` writes it out)."""
        transformer = self.transformer
        blocks = getattr(transformer, "resblocks", None)
        return (self.can_truncate and getattr(transformer, "batch_first", None) is True
                and not getattr(transformer, "grad_checkpointing", False) and blocks is not None
                and all(type(b) is ResidualAttentionBlock and not hasattr(b, "ln_1_kv")
                        and plain_attention(b.attn) for b in blocks))

    def _run_blocks(self, x: torch.Tensor, states: Optional[Sequence[torch.Tensor]], mask: torch.Tensor,
                    pool_idx: Optional[torch.Tensor] = None,
                    prefix_rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The plain open_clip blocks on ``x [N, S, W]`` (positions P..P+S-1), written out.

        ``states`` (or None, P = 0) are cached ``ln_1`` prefix states of :meth:`prefix_states`,
        ``[G, P, W]`` per block: row ``n`` continues prefix ``prefix_rows[n]`` (None: prefix by
        prefix, ``n // (N / G)``; G = 1, the one prefix). Each block projects its prefix keys/values once per
        prefix and puts them in front of the rows' own; ``mask`` is the causal mask rows P..P+S-1,
        columns 0..P+S-1. Each block computes exactly ``ResidualAttentionBlock.forward`` for these
        positions. Returns ``[N, S, W]``, or with ``pool_idx [N]`` (row positions, relative to P)
        only the pooled rows ``[N, W]``: the last block then runs its query, attention output and MLP
        on the pooled position alone -- nothing else of the last block reaches the pooled feature,
        while its keys and values still come from every position up to the pooled one.
        """
        n = x.shape[0]
        blocks = list(self.transformer.resblocks)

        def prefix_kv(k: int) -> Optional[torch.Tensor]:  # block k's prefix keys/values, [G', P, 2W]
            if states is None:
                return None
            kv = _kv_projection(blocks[k].attn, states[k].to(x.dtype))
            return kv if prefix_rows is None else kv.index_select(0, prefix_rows)

        last = len(blocks) - 1 if pool_idx is not None else len(blocks)
        for k, block in enumerate(blocks[:last]):
            h = block.ln_1(x)
            x = x + block.ls_1(_attention(block.attn, h, h, mask, prefix_kv(k), self.prefix_in_place))
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
        if pool_idx is None:
            return x
        block = blocks[-1]
        rows = torch.arange(n, device=x.device)
        pool_idx = pool_idx.to(x.device)
        h = block.ln_1(x)
        prefix = 0 if states is None else int(states[-1].shape[1])
        # row n's pooled query sees keys 0..P+pool_idx[n] (its causal row)
        keys = torch.arange(prefix + x.shape[1], device=x.device)
        allowed = keys.unsqueeze(0) <= (pool_idx + prefix).unsqueeze(1)
        row_mask = torch.zeros(allowed.shape, dtype=mask.dtype, device=x.device)
        row_mask.masked_fill_(~allowed, float("-inf"))
        xq = x[rows, pool_idx].unsqueeze(1)
        xq = xq + block.ls_1(_attention(block.attn, h[rows, pool_idx].unsqueeze(1), h, row_mask[:, None, :],
                                        prefix_kv(len(blocks) - 1), self.prefix_in_place))
        xq = xq + block.ls_2(block.mlp(block.ln_2(xq)))
        return xq[:, 0]

    def forward(self, embeds: torch.Tensor, eot_idx: torch.Tensor, truncate: bool = True,
                shared_prefix: int = 0, buckets: int = 1, pooled_only: bool = True) -> torch.Tensor:
        """``[N, L, W]`` token embeddings and ``[N]`` pooling positions to ``[N, D]`` text features.

        With ``truncate`` only the first ``max(eot_idx) + 1`` positions are run; later positions
        cannot influence earlier ones under the causal mask, so the result is unchanged while the
        attention cost drops from 77² to (prompt length)².

        Three further exact savings for causal towers of plain open_clip blocks (equal to the plain
        path up to float rounding; ``tests/test_text_encoder.py``), all only with ``truncate``:

        * ``pooled_only`` (default on): the last block computes its query, attention output, MLP and
          ``ln_final`` at the pooled position only (its keys/values still at every position). The
          other positions' last-block outputs are discarded by the pooling anyway; this skips about
          four fifths of the last block, ~20% of a 4-block tower (``benchmarks.text_tower``).

        * ``shared_prefix`` P: the caller promises that positions ``< P`` are identical in every row
          and carry no learned content (no gradient is sent to them). Their hidden states are
          computed once, on one row, without a graph, and serve as cached keys/values for the rest.
        * ``buckets`` k > 1: rows are grouped by pooling position into at most k groups
          (:func:`length_buckets`) and each group is cut at its own longest row instead of the
          batch's, so short prompts are not padded to the longest.
        """
        if not (truncate and self.can_truncate):
            return self._forward_rows(embeds, eot_idx, truncate)
        p = self._usable_prefix(embeds, eot_idx, shared_prefix)
        states = self._prefix_states(embeds, p) if p else None
        return self._in_length_groups(
            eot_idx, buckets,
            lambda idx: self._forward_rows(_rows(embeds, idx), _rows(eot_idx, idx), True, p, states, pooled_only))

    def _in_length_groups(self, eot_idx: torch.Tensor, buckets: int,
                          run: Callable[[Optional[torch.Tensor]], torch.Tensor]) -> torch.Tensor:
        """``run(None)`` on all rows, or with ``buckets`` k > 1 ``run(index)`` on each of at most k
        groups of rows of similar pooling position (:func:`length_buckets`, each group charged
        ``GROUP_OVERHEAD / width²`` positions), each cut at its own longest row, put back in row order."""
        width = int(self.token_embedding.weight.shape[1])
        groups = length_buckets((eot_idx + 1).tolist(), buckets, GROUP_OVERHEAD / width ** 2) if buckets > 1 else []
        if len(groups) < 2:
            return run(None)
        device = eot_idx.device
        parts = [run(torch.tensor(rows, dtype=torch.long, device=device)) for rows in groups]
        order = torch.tensor([r for rows in groups for r in rows], dtype=torch.long)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order))
        out = torch.cat(parts, dim=0)
        return out.index_select(0, inverse.to(out.device))

    def _usable_prefix(self, embeds: torch.Tensor, eot_idx: torch.Tensor, shared_prefix: int) -> int:
        """``shared_prefix`` capped so that every pooled position lies after it; 0 where not applicable."""
        if shared_prefix <= 0 or not self.can_reuse_prefix or embeds.shape[0] == 0:
            return 0
        p = min(int(shared_prefix), int(eot_idx.min()), embeds.shape[1])
        head = embeds[:, :p].detach()
        if not torch.equal(head, head[:1].expand_as(head)):
            raise ValueError(f"shared_prefix={shared_prefix}: the first {p} positions differ between rows")
        return p

    def _prefix_states(self, embeds: torch.Tensor, p: int) -> List[torch.Tensor]:
        """``ln_1`` of the shared prefix's hidden state at every block (what its keys/values are made of).

        Under the causal mask the prefix positions never attend to later ones, so their hidden
        states are the same in every row and need no gradient: run once, on one row, without a graph.
        """
        with torch.no_grad():
            return self.prefix_states(embeds[:1, :p].detach())

    def prefix_states(self, prefixes: torch.Tensor) -> List[torch.Tensor]:
        """``ln_1`` of the hidden states of ``prefixes [G, P, W]`` (token embeddings of positions
        0..P-1) at every block, ``[G, P, W]`` each, for :meth:`encode_continuations`; differentiable
        (CoCoOp's prefix carries the learned, image-conditioned context). Under the causal mask these
        positions never see later ones, so one run per prefix serves every row that continues it.
        Needs :attr:`can_reuse_prefix`."""
        cast = self.cast_dtype
        p = prefixes.shape[1]
        mask = self.attn_mask[:p, :p]
        blocks = list(self.transformer.resblocks)
        x = prefixes.to(cast) + self._tower.positional_embedding[:p].to(cast)
        states = []
        for k, block in enumerate(blocks):
            states.append(block.ln_1(x))
            if k < len(blocks) - 1:  # the last block's prefix outputs reach nothing
                x = block(x, attn_mask=mask)
        return states

    def encode_continuations(self, states: Sequence[torch.Tensor], suffixes: torch.Tensor,
                             prefix_rows: Optional[torch.Tensor], eot_idx: torch.Tensor, buckets: int = 1) -> torch.Tensor:
        """Text features ``[N, D]`` of rows that start with one of G prefixes: row ``n`` is prefix
        ``prefix_rows[n]`` (its :meth:`prefix_states`) followed by ``suffixes[n] [S, W]`` at positions
        P..P+S-1, pooled at ``eot_idx[n]`` (absolute, >= P). ``prefix_rows`` None: the rows come
        prefix by prefix, N / G each, row ``n`` continuing prefix ``n // (N / G)`` (G = 1: every row
        the one prefix); each prefix's keys/values are then used as they are, never copied per row
        (CoCoOp: an image's C_g class prompts together). Equal to :meth:`forward` on the
        concatenated rows, up to float rounding (``tests/test_text_encoder.py``), with the prefix
        positions run once per prefix instead of once per row -- for CoCoOp, whose SOT and
        image-shifted context are shared by the C class prompts of one image, that is 5 of ~10
        positions per prompt. ``buckets`` as in :meth:`forward` (with ``prefix_rows`` or one
        prefix). Needs :attr:`can_reuse_prefix`; pooled only."""
        p, g = int(states[0].shape[1]), int(states[0].shape[0])
        if int(eot_idx.min()) < p:
            raise ValueError(f"encode_continuations: a pooled position lies inside the {p}-position prefix")
        if prefix_rows is None and g > 1 and (len(eot_idx) % g or buckets > 1):
            raise ValueError(f"encode_continuations: {len(eot_idx)} rows cannot come prefix by prefix for {g} "
                             "prefixes in equal runs, in one length group; pass prefix_rows")
        return self._in_length_groups(
            eot_idx, buckets,
            lambda idx: self._continue_rows(states, _rows(suffixes, idx), _rows(prefix_rows, idx), _rows(eot_idx, idx)))

    def _continue_rows(self, states: Sequence[torch.Tensor], suffixes: torch.Tensor,
                       prefix_rows: Optional[torch.Tensor], eot_idx: torch.Tensor) -> torch.Tensor:
        """:meth:`encode_continuations` of one length group, cut at its longest row."""
        p = int(states[0].shape[1])
        tower = self._tower
        cast = self.cast_dtype
        length = min(p + suffixes.shape[1], int(eot_idx.max()) + 1)
        x = suffixes[:, :length - p].to(cast) + tower.positional_embedding[p:length].to(cast)
        x = self._run_blocks(x, states, self.attn_mask[p:length, :length], eot_idx - p,
                             None if prefix_rows is None else prefix_rows.to(x.device))
        return self._project(tower.ln_final(x))

    def _forward_rows(self, embeds: torch.Tensor, eot_idx: torch.Tensor, truncate: bool, p: int = 0,
                      states: Optional[List[torch.Tensor]] = None, pooled_only: bool = False) -> torch.Tensor:
        tower = self._tower
        cast = self.cast_dtype
        length = embeds.shape[1]
        if truncate and self.can_truncate:
            length = min(length, int(eot_idx.max()) + 1)
        mask = self.attn_mask
        own_blocks = truncate and self.can_reuse_prefix
        if own_blocks:
            use_prefix = bool(p) and states is not None
            start = p if use_prefix else 0
            x = embeds[:, start:length].to(cast) + tower.positional_embedding[start:length].to(cast)
            eot_idx = eot_idx - start
            x = self._run_blocks(x, states if use_prefix else None, mask[start:length, :length],
                                 eot_idx if pooled_only else None)
        else:
            x = embeds[:, :length].to(cast) + tower.positional_embedding[:length].to(cast)
            if mask is not None:
                mask = mask[:length, :length]
            x = self._run_transformer(x, mask)
        if own_blocks and pooled_only:
            pooled = tower.ln_final(x)
        else:
            x = tower.ln_final(x)
            if self.pool_type == "first":
                pooled = x[:, 0]
            elif self.pool_type == "last":
                pooled = x[:, -1]
            else:
                pooled = x[torch.arange(x.shape[0], device=x.device), eot_idx.to(x.device)]
        return self._project(pooled)

    def _project(self, pooled: torch.Tensor) -> torch.Tensor:
        proj = self._tower.text_projection
        if proj is None:
            return pooled
        if isinstance(proj, nn.Linear):
            return proj(pooled)
        return pooled @ proj

    def eot_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Pooling positions of token-id rows, with open_clip's rule for this tower."""
        if self.pool_type == "eos" and self.eos_id is not None:
            return (ids == self.eos_id).int().argmax(dim=-1)
        return ids.argmax(dim=-1)

    def encode_ids(self, ids: torch.Tensor, truncate: bool = True) -> torch.Tensor:
        """The same as ``model.encode_text(ids)`` (unnormalised), via :meth:`forward`."""
        embeds = self.token_embedding(ids)
        return self(embeds, self.eot_positions(ids), truncate=truncate)
