"""clip.text.TextEncoder equals open_clip's own encode_text on several tower variants."""
from __future__ import annotations

import json

import open_clip
import pytest
import torch
from torch import nn

from clip import TextEncoder, register_repo_configs
from clip import text as text_module
from clip.pretrained import REPO_ROOT

PROMPTS = [
    "a photo of an ant, a type of insect or spider.",
    "x",
    "",
    "a photo of mr. mime, a type of pokemon.",
    " ".join(["a very long caption"] * 30),  # truncated by the tokenizer, EOT at position 76
]


def tiny_cfg(**text_overrides) -> dict:
    with open(REPO_ROOT / "clip" / "model_configs" / "test-tiny.json") as f:
        cfg = json.load(f)
    cfg["text_cfg"].update(text_overrides)
    return cfg


def build(cls=open_clip.CLIP, seed: int = 0, **text_overrides) -> nn.Module:
    torch.manual_seed(seed)
    model = cls(**tiny_cfg(**text_overrides)).eval()
    return model.requires_grad_(False)


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return open_clip.tokenizer.SimpleTokenizer(context_length=77)(PROMPTS)


def check_equal(model: nn.Module, ids: torch.Tensor) -> None:
    enc = TextEncoder(model)
    expected = model.encode_text(ids)
    for truncate in (True, False):
        torch.testing.assert_close(enc.encode_ids(ids, truncate=truncate), expected, atol=1e-5, rtol=0)
    embeds = enc.token_embedding(ids)
    got = enc(embeds, enc.eot_positions(ids), truncate=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_clip_parameter_projection(ids):
    model = build()
    assert isinstance(model.text_projection, nn.Parameter)
    check_equal(model, ids)
    assert ids.argmax(-1).max() == 76  # the long prompt exercises the full-length path


def test_clip_linear_projection(ids):
    model = build(proj_bias=True)
    assert isinstance(model.text_projection, nn.Linear)
    check_equal(model, ids)


def test_custom_text_clip(ids):
    model = build(open_clip.CustomTextCLIP)
    assert not hasattr(model, "transformer")
    check_equal(model, ids)


def test_custom_text_clip_linear_projection(ids):
    model = build(open_clip.CustomTextCLIP, proj_bias=True)
    assert isinstance(model.text.text_projection, nn.Linear)
    check_equal(model, ids)


def test_custom_text_via_factory(ids):
    register_repo_configs()
    model = open_clip.create_model("test-tiny", force_custom_text=True).eval()
    assert isinstance(model, open_clip.CustomTextCLIP)
    check_equal(model, ids)


def test_eos_pooling(ids):
    model = build(pool_type="eos", eos_id=49407)
    enc = TextEncoder(model)
    assert enc.can_truncate
    check_equal(model, ids)


def test_bidirectional_tower_uses_full_length(ids):
    model = build(open_clip.CustomTextCLIP, no_causal_mask=True)
    enc = TextEncoder(model)
    assert not enc.can_truncate
    check_equal(model, ids)


def test_no_projection(ids):
    model = build(proj_type="none")
    assert model.text_projection is None
    check_equal(model, ids)


def test_truncation_is_exact_not_trivial(ids):
    """Truncating to max(eot)+1 must change nothing, while a shorter cut does change the result."""
    model = build()
    enc = TextEncoder(model)
    short = ids[:2]  # eot positions 11 and 2
    embeds = enc.token_embedding(short)
    eot = short.argmax(-1)
    full = enc(embeds, eot, truncate=False)
    cut = enc(embeds[:, : int(eot.max()) + 1], eot, truncate=False)
    torch.testing.assert_close(cut, full, atol=1e-5, rtol=0)
    wrong = enc(embeds, eot.clamp(max=1), truncate=True)
    assert not torch.allclose(wrong[0], full[0], atol=1e-3)


class LegacyTransformer(nn.Module):
    """A sequence-first transformer like old open_clip's (no ``batch_first`` attribute)."""

    def __init__(self, inner: nn.Module, batch: int) -> None:
        super().__init__()
        self.inner = inner
        self.batch = batch

    def get_cast_dtype(self) -> torch.dtype:
        return self.inner.get_cast_dtype()

    def forward(self, x: torch.Tensor, attn_mask=None) -> torch.Tensor:
        assert x.shape[1] == self.batch, "expects (L, N, W)"
        return self.inner(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)


def test_sequence_first_transformer_is_permuted(ids):
    """B1: the permutation happens only for a legacy (sequence-first) transformer."""
    model = build()
    expected = model.encode_text(ids)
    model.transformer = LegacyTransformer(model.transformer, ids.shape[0])
    assert not hasattr(model.transformer, "batch_first")
    got = TextEncoder(model).encode_ids(ids)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_encoder_owns_no_state():
    """B8: the 49408×W token table (and the rest of the frozen tower) never enters the encoder's state."""
    model = build()
    enc = TextEncoder(model)
    assert list(enc.state_dict()) == []
    assert list(enc.parameters()) == []
    assert enc.token_embedding is model.token_embedding
    assert enc.context_length == 77
    holder = nn.Module()
    holder.text_encoder = enc
    assert list(holder.state_dict()) == []


def test_gradient_reaches_embeddings(ids):
    model = build()
    enc = TextEncoder(model)
    embeds = enc.token_embedding(ids[:2]).clone().requires_grad_(True)
    enc(embeds, ids[:2].argmax(-1)).sum().backward()
    assert embeds.grad is not None and embeds.grad[0, 1].abs().sum() > 0
    assert embeds.grad[0, 20:].abs().sum() == 0  # after the EOT nothing is used


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_low_precision_weights(ids, precision):
    """open_clip's manual mixed precision: the encoder casts to the tower's dtype as encode_text does."""
    register_repo_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("test-tiny", precision=precision).eval()
    enc = TextEncoder(model)
    assert enc.cast_dtype == open_clip.get_cast_dtype(precision)
    expected = model.encode_text(ids)
    full = enc.encode_ids(ids, truncate=False)
    assert full.dtype == expected.dtype
    assert torch.equal(full, expected)
    # a shorter run may pick other kernels: equal up to the format's rounding
    torch.testing.assert_close(enc.encode_ids(ids).float(), expected.float(), atol=0.05, rtol=0.02)


def _shared_prefix_batch(width: int, n: int = 9, p: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(1, 77, width, generator=g).expand(n, -1, -1).clone()
    embeds[:, p:] = torch.randn(n, 77 - p, width, generator=g)
    eot = torch.tensor([5, 6, 9, 12, 20, 7, 30, 8, 76][:n])
    return embeds, eot


@pytest.mark.parametrize("shared_prefix,buckets", [(1, 1), (3, 1), (5, 1), (0, 3), (5, 4), (40, 4), (5, 9)])
def test_prefix_reuse_and_buckets_equal_the_full_path(shared_prefix, buckets):
    """Cached prefix keys/values and length buckets: the full 77-position features and gradients (1e-5)."""
    model = build()
    enc = TextEncoder(model)
    assert enc.can_reuse_prefix
    embeds, eot = _shared_prefix_batch(model.token_embedding.weight.shape[1])
    leaf = embeds.clone().requires_grad_(True)
    full = enc(leaf, eot, truncate=False)
    (g_full,) = torch.autograd.grad(full.square().sum(), leaf)
    got = enc(leaf, eot, shared_prefix=shared_prefix, buckets=buckets)
    (g_got,) = torch.autograd.grad(got.square().sum(), leaf)
    torch.testing.assert_close(got, full, atol=1e-5, rtol=0)
    p = min(shared_prefix, int(eot.min()))
    # No gradient is sent to the shared (constant) prefix; everything after it matches.
    torch.testing.assert_close(g_got[:, p:], g_full[:, p:], atol=1e-5, rtol=1e-4)
    if p:
        assert bool((g_got[:, :p] == 0).all())


def assert_equal_with_gradients(got: torch.Tensor, full: torch.Tensor, inputs, g: torch.Generator) -> None:
    """Features equal (1e-5) and so are the gradients of one random projection of them to ``inputs``."""
    torch.testing.assert_close(got, full, atol=1e-5, rtol=0)
    weights = torch.randn(full.shape, generator=g)
    g_full = torch.autograd.grad((full * weights).sum(), inputs)
    g_got = torch.autograd.grad((got * weights).sum(), inputs)
    for a, b in zip(g_got, g_full):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_continuations_of_several_prefixes_equal_the_full_rows():
    """``prefix_states`` + ``encode_continuations`` (G prefixes run once each, N rows continuing them,
    CoCoOp's per-image context) against the same rows run in full by open_clip's blocks: features
    and gradients for prefixes and suffixes (1e-5)."""
    model = build()
    enc = TextEncoder(model)
    width, g, p = model.token_embedding.weight.shape[1], torch.Generator().manual_seed(1), 5
    prefixes = torch.randn(3, p, width, generator=g).requires_grad_(True)
    suffixes = torch.randn(10, 30, width, generator=g).requires_grad_(True)
    rows = torch.tensor([0, 2, 2, 1, 0, 1, 2, 0, 1, 1])
    eot = torch.tensor([5, 6, 9, 12, 20, 7, 34, 8, 5, 11])
    full_rows = torch.cat([prefixes[rows], suffixes], dim=1)
    full = enc(full_rows, eot, truncate=False)  # open_clip's Transformer.forward, 35 positions
    got = enc.encode_continuations(enc.prefix_states(prefixes), suffixes, rows, eot)
    assert_equal_with_gradients(got, full, (prefixes, suffixes), g)
    with pytest.raises(ValueError, match="inside the 5-position prefix"):
        enc.encode_continuations(enc.prefix_states(prefixes), suffixes, rows, eot - 1)
    # one prefix for every row (CoOp): prefix_rows None broadcasts it, same as the full rows
    one = enc.encode_continuations(enc.prefix_states(prefixes[:1]), suffixes, None, eot)
    full_one = enc(torch.cat([prefixes[:1].expand(10, -1, -1), suffixes], dim=1), eot, truncate=False)
    torch.testing.assert_close(one, full_one, atol=1e-5, rtol=0)


#: layout -> (G prefixes, prefix_rows); rows None come prefix by prefix, 9 / G each
ROW_LAYOUTS = {
    "one prefix (CoOp)": (1, None),
    "prefix by prefix (CoCoOp)": (3, None),
    "prefix by prefix, as an index": (3, [0, 0, 0, 1, 1, 1, 2, 2, 2]),
    "any order": (3, [0, 2, 2, 1, 0, 1, 2, 0, 1]),
    "one row per prefix": (3, [0, 1, 2]),
}


@pytest.mark.parametrize("heads", [1, 4])
@pytest.mark.parametrize("layout", sorted(ROW_LAYOUTS))
@pytest.mark.parametrize("in_place", [True, False, None])
def test_prefix_attended_in_place_or_copied_equals_the_full_rows(layout, in_place, heads, monkeypatch):
    """Rows continuing cached prefixes, attended in place (no per-row copy of the prefix) or through
    the prefix copied per row and one fused kernel, against the same rows run in full by open_clip's
    blocks: features and the gradients to prefixes and suffixes (1e-5), for every row layout. The
    CPU's default (None): in place for several prefixes, copied for one."""
    model = build(heads=heads)
    enc = TextEncoder(model, prefix_in_place=in_place)
    width, g = model.token_embedding.weight.shape[1], torch.Generator().manual_seed(2)
    count, rows = ROW_LAYOUTS[layout]
    n = 9 if rows is None else len(rows)
    prefixes = torch.randn(count, 5, width, generator=g).requires_grad_(True)
    suffixes = torch.randn(n, 12, width, generator=g).requires_grad_(True)
    eot = torch.tensor([5, 6, 9, 12, 16, 7, 10, 8, 5][:n])
    index = torch.arange(count).repeat_interleave(n // count) if rows is None else torch.tensor(rows)
    full = enc(torch.cat([prefixes[index], suffixes], dim=1), eot, truncate=False)
    seen = []
    real = text_module._prefix_attention
    monkeypatch.setattr(text_module, "_prefix_attention",
                        lambda q, kv, pre, *a: seen.append(pre.shape[0]) or real(q, kv, pre, *a))
    got = enc.encode_continuations(enc.prefix_states(prefixes), suffixes, None if rows is None else index, eot)
    assert_equal_with_gradients(got, full, (prefixes, suffixes), g)
    blocks = len(model.transformer.resblocks)
    if in_place is False or (in_place is None and count == 1):
        assert seen == []
    elif rows is None:  # each prefix once per block, never copied per row
        assert seen == [count] * blocks
    else:  # an index gathers the prefixes row by row
        assert seen == [n] * blocks


def test_rows_without_an_index_must_come_prefix_by_prefix_in_one_group():
    model = build()
    enc = TextEncoder(model)
    width = model.token_embedding.weight.shape[1]
    states = enc.prefix_states(torch.randn(3, 5, width))
    suffixes, eot = torch.randn(8, 4, width), torch.full((8,), 7)
    with pytest.raises(ValueError, match="8 rows cannot come prefix by prefix for 3 prefixes"):
        enc.encode_continuations(states, suffixes, None, eot)
    with pytest.raises(ValueError, match="in one length group; pass prefix_rows"):
        enc.encode_continuations(states, suffixes[:6], None, eot[:6], buckets=2)


def test_prefix_reuse_refuses_rows_that_differ():
    model = build()
    enc = TextEncoder(model)
    embeds, eot = _shared_prefix_batch(model.token_embedding.weight.shape[1], p=2)
    with pytest.raises(ValueError, match="differ between rows"):
        enc(embeds, eot, shared_prefix=4)


def test_length_buckets_minimise_padding():
    from clip.text import length_buckets

    lengths = [16, 12, 12, 26, 13, 26, 12, 20]
    groups = length_buckets(lengths, 3)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    cost = sum(len(g) * max(lengths[i] for i in g) for g in groups)
    # brute force over all ways of cutting the sorted distinct lengths into <= 3 runs
    import itertools

    distinct = sorted(set(lengths))
    best = min(
        sum(sum(1 for v in lengths if lo < v <= hi) * hi
            for lo, hi in zip((0,) + cuts, cuts + (distinct[-1],)))
        for k in range(3) for cuts in itertools.combinations(distinct[:-1], k))
    assert cost == best
    assert length_buckets(lengths, 1) == [sorted(range(len(lengths)), key=lambda i: (lengths[i], i))]
    assert length_buckets([], 4) == []

    # a fixed cost per group: the brute force's cost plus that much per run, minimised over the runs
    for group_cost in (0.0, 5.0, 20.0, 1000.0):
        groups = length_buckets(lengths, 4, group_cost)
        got = sum(len(g) * max(lengths[i] for i in g) for g in groups) + group_cost * len(groups)
        best = min(
            sum(sum(1 for v in lengths if lo < v <= hi) * hi
                for lo, hi in zip((0,) + cuts, cuts + (distinct[-1],))) + group_cost * (k + 1)
            for k in range(4) for cuts in itertools.combinations(distinct[:-1], k))
        assert got == best, group_cost
    assert len(length_buckets(lengths, 4, 0.0)) == 4 and len(length_buckets(lengths, 4, 1000.0)) == 1


def test_text_encoder_groups_only_where_a_group_pays_for_itself():
    """The encoder charges each extra length group ``GROUP_OVERHEAD / width²`` positions: a few short
    rows stay in one call, many rows of very different lengths are split (counted by calls)."""
    from clip import text

    model = build()
    enc = TextEncoder(model)
    width = model.token_embedding.weight.shape[1]
    charge = text.GROUP_OVERHEAD / width ** 2
    calls = []
    real = enc._forward_rows

    def counting(embeds, *args, **kwargs):
        calls.append(embeds.shape[0])
        return real(embeds, *args, **kwargs)

    enc._forward_rows = counting
    g = torch.Generator().manual_seed(0)
    for rows, expect_split in ((4, False), (int(4 * charge) + 64, True)):
        calls.clear()
        eot = torch.tensor([5 + 60 * (i % 2) for i in range(rows)])
        embeds = torch.randn(rows, 77, width, generator=g)
        out = enc(embeds, eot, buckets=4)
        # splitting saves (rows / 2) * 60 padded positions against one extra group's charge
        assert (len(calls) > 1) == expect_split == (rows / 2 * 60 > charge), (rows, calls)
        torch.testing.assert_close(out, enc(embeds, eot), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shared_prefix,buckets", [(0, 1), (3, 1), (0, 3), (5, 4)])
@pytest.mark.parametrize("pooled_only", [True, False])
def test_written_out_blocks_equal_open_clips_blocks(shared_prefix, buckets, pooled_only):
    """The encoder's own block loop (with and without the pooled-only last block) gives open_clip's
    features and embedding gradients, with the prefix cache and buckets on or off."""
    model = build()
    enc = TextEncoder(model)
    embeds, eot = _shared_prefix_batch(model.token_embedding.weight.shape[1])
    leaf = embeds.clone().requires_grad_(True)
    full = enc(leaf, eot, truncate=False)  # open_clip's Transformer.forward on all 77 positions
    (g_full,) = torch.autograd.grad(full.square().sum(), leaf)
    got = enc(leaf, eot, shared_prefix=shared_prefix, buckets=buckets, pooled_only=pooled_only)
    (g_got,) = torch.autograd.grad(got.square().sum(), leaf)
    torch.testing.assert_close(got, full, atol=1e-5, rtol=0)
    p = min(shared_prefix, int(eot.min()))
    torch.testing.assert_close(g_got[:, p:], g_full[:, p:], atol=1e-5, rtol=1e-4)


def test_pooled_only_last_block_does_less_work():
    """The saving is real: fewer matrix-product FLOPs than the full last block, same features."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build()
    enc = TextEncoder(model)
    embeds, eot = _shared_prefix_batch(model.token_embedding.weight.shape[1])
    counts = {}
    for pooled_only in (False, True):
        with FlopCounterMode(display=False) as counter:
            out = enc(embeds, eot, pooled_only=pooled_only)
        counts[pooled_only] = (counter.get_total_flops(), out)
    torch.testing.assert_close(counts[True][1], counts[False][1], atol=1e-5, rtol=0)
    blocks = len(model.transformer.resblocks)
    # the last block keeps only its key/value projections for the non-pooled positions
    assert counts[True][0] < counts[False][0] * (1 - 0.5 / blocks)


@pytest.mark.parametrize("cross", [False, True])
def test_attention_equals_multihead_attention(cross):
    """clip.text._attention against nn.MultiheadAttention itself: self-attention under the causal
    mask, and one query row per sequence against all keys under a per-row mask."""
    from clip.text import _attention, plain_attention

    torch.manual_seed(0)
    attn = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    assert plain_attention(attn)
    x = torch.randn(5, 7, 32)
    if cross:
        q = torch.randn(5, 1, 32)
        allowed = torch.arange(7).unsqueeze(0) <= torch.tensor([0, 3, 6, 2, 5]).unsqueeze(1)
        mask = torch.zeros(5, 7).masked_fill(~allowed, float("-inf"))
        expected = attn(q, x, x, need_weights=False,
                        attn_mask=mask.unsqueeze(1).repeat_interleave(4, dim=0))[0]
        got = _attention(attn, q, x, mask[:, None, None, :])
    else:
        mask = torch.full((7, 7), float("-inf")).triu(1)
        expected = attn(x, x, x, need_weights=False, attn_mask=mask)[0]
        got = _attention(attn, x, x, mask)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_other_attention_modules_use_open_clips_blocks(ids):
    """Attention the written-out path does not reproduce (dropout, key bias) falls back to open_clip."""
    from clip.text import plain_attention

    assert not plain_attention(nn.MultiheadAttention(32, 4, batch_first=True, dropout=0.1))
    assert not plain_attention(nn.MultiheadAttention(32, 4, batch_first=True, add_bias_kv=True))
    assert not plain_attention(nn.MultiheadAttention(32, 4, batch_first=False))
    model = build()
    for block in model.transformer.resblocks:
        block.attn.dropout = 0.1  # eval mode: no effect on the values, but not the plain module any more
    enc = TextEncoder(model)
    assert not enc.can_reuse_prefix
    torch.testing.assert_close(enc.encode_ids(ids), model.encode_text(ids), atol=1e-5, rtol=0)
