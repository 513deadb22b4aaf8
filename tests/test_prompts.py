"""clip.prompts: name normalisation/matching, slot assembly, and the vectorised prompt bank.

The vectorised construction is checked against a straightforward per-string construction written
here (spec §2.5, with word-boundary/longest-first matching), row for row with ``torch.equal``.
"""
from __future__ import annotations

import json
from typing import List, Optional, Sequence, Tuple

import open_clip
import pytest
import torch

from clip import (
    NameMatcher,
    PromptBank,
    PromptBatch,
    Slot,
    TextEncoder,
    assemble,
    bank_offsets,
    class_prompt_pieces,
    name_slot_ids,
    normalize_name,
    templates,
    tokenize_pieces,
)
from clip.pretrained import REPO_ROOT

CTX = 77
SOT, EOT = 49406, 49407
RAW_NAMES = ["ant", "Giant_Anteater", "plant", "Mr._Mime", "folk art", "art", "red  panda"]
NAMES = [normalize_name(n) for n in RAW_NAMES]
HINT = "folk art"
TEMPLATE = templates.fill_hint(templates.FSNL_TEMPLATE, HINT)
CAPTIONS = [
    "A giant anteater next to an ant and a plant.",
    "Mr. Mime poses; mr. mime again, then ANT.",
    "pants, giants and plants but no names here",  # B5: nothing matches
    "folk art about art and an ant",
    "an elephant",
    "",
    # over-long: names near the end fall outside the 75-token budget
    "the " * 60 + "red panda chases an ant " + "very " * 10 + "giant anteater at the end",
    "word " * 70 + "ant " + "x " * 3,
]


@pytest.fixture(scope="module")
def tokenizer():
    return open_clip.tokenizer.SimpleTokenizer(context_length=CTX)


@pytest.fixture(scope="module")
def model():
    with open(REPO_ROOT / "clip" / "model_configs" / "test-tiny.json") as f:
        cfg = json.load(f)
    torch.manual_seed(0)
    return open_clip.CLIP(**cfg).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def table(model) -> torch.Tensor:
    return model.token_embedding.weight


def random_bank(lengths: Sequence[int], width: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(sum(lengths), width, generator=g)


def per_class(bank: torch.Tensor, lengths: Sequence[int]) -> List[torch.Tensor]:
    return list(torch.split(bank, list(lengths)))


# ------------------------------------------------------------------------------------------ reference
def scan_names(text: str, names: Sequence[str]) -> List[Tuple[int, int, int]]:
    """Independent word-boundary, longest-first scan: (start, end, index) of every match."""
    def is_word(ch: str) -> bool:
        return ch.isalnum() or ch == "_"

    order = sorted(range(len(names)), key=lambda i: -len(names[i]))
    out, i = [], 0
    while i < len(text):
        hit = None
        if i == 0 or not is_word(text[i - 1]):
            for k in order:
                end = i + len(names[k])
                if text.startswith(names[k], i) and (end == len(text) or not is_word(text[end])):
                    hit = (i, end, k)
                    break
        if hit:
            out.append(hit)
            i = hit[1]
        else:
            i += 1
    return out


def reference_caption(tokenizer, table, text: str, names, learned: List[torch.Tensor],
                      n_ctx: Optional[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Spec §2.5, one string at a time: split, encode pieces, truncate, splice, pad."""
    text = normalize_name(text)
    pieces, cursor = [], 0
    for start, end, k in scan_names(text, names):
        if start > cursor:
            pieces.append(("text", text[cursor:start]))
        pieces.append(("name", k))
        cursor = end
    if cursor < len(text):
        pieces.append(("text", text[cursor:]))
    encoded = [(kind, tokenizer.encode(names[v]) if kind == "name" else tokenizer.encode(v), v)
               for kind, v in pieces]
    planned = [n_ctx if (kind == "name" and n_ctx) else len(toks) for kind, toks, _ in encoded]
    while sum(planned) > CTX - 2:
        kind, toks, v = encoded.pop()
        planned.pop()
        room = CTX - 2 - sum(planned)
        if kind == "text" and room > 0:
            encoded.append((kind, toks[:room], v))
            planned.append(room)
    x_id = tokenizer.encode("X")[0]
    ids, rows = [SOT], [table[SOT]]
    for kind, toks, v in encoded:
        if kind == "name":
            ids += [x_id] * n_ctx if n_ctx else toks
            rows += list(learned[v])
        else:
            ids += toks
            rows += [table[t] for t in toks]
    ids.append(EOT)
    rows.append(table[EOT])
    while len(ids) < CTX:
        ids.append(0)
        rows.append(table[0])
    return torch.tensor(ids), torch.stack(rows)


def reference_class_prompt(tokenizer, table, name_index: int, learned, n_ctx: Optional[int]):
    """Build the prompt string, tokenise it whole, find the name's span, replace its rows."""
    name = NAMES[name_index]
    prefix = TEMPLATE.split("{name}")[0]
    prompt = TEMPLATE.format(name=name)
    ids = tokenizer([prompt])[0]
    name_ids = tokenizer.encode(name)
    start = 1 + len(tokenizer.encode(prefix))
    end = start + len(name_ids)
    assert ids[start:end].tolist() == name_ids
    eot = int(ids.argmax())
    if n_ctx is None:
        rows = table[ids].clone()
        rows[start:end] = learned[name_index]
        return ids, rows
    x_id = tokenizer.encode("X")[0]
    new_ids = ids[:start].tolist() + [x_id] * n_ctx + ids[end:eot + 1].tolist()
    rows = [table[ids[:start]], learned[name_index], table[ids[end:eot + 1]]]
    pad = CTX - len(new_ids)
    rows.append(table[0].expand(pad, -1))
    return torch.tensor(new_ids + [0] * pad), torch.cat(rows)


# ------------------------------------------------------------------------------------------ names
def test_normalize_name_consistent():
    assert normalize_name("Mr._Mime") == normalize_name("mr. mime") == "mr. mime"
    assert normalize_name("  Red \t Panda\n") == "red panda"
    assert normalize_name("Giant_Anteater") == "giant anteater"


def test_matcher_word_boundaries_and_longest_first():
    m = NameMatcher(RAW_NAMES)
    ant, anteater, plant, mime, folk, art = 0, 1, 2, 3, 4, 5
    assert m.find("a plant") == [plant]
    assert m.find("a giant anteater") == [anteater]
    assert m.find("an ant on a plant") == [ant, plant]
    assert m.find("pants, giants, elephants, antelope") == []
    assert m.find("folk art and art") == [folk, art]
    assert m.find("artful party") == []
    assert m.find("MR._MIME, Mr. Mime.") == [mime, mime]
    assert m.find("ant-eater") == [ant]  # a hyphen is a word boundary


def test_matcher_split_pieces():
    m = NameMatcher(RAW_NAMES)
    assert m.split("An ANT near a Plant!") == ["an ", Slot(0), " near a ", Slot(2), "!"]
    assert m.split("no names at all") == ["no names at all"]  # B5
    assert m.split("") == []
    assert m.split("giant anteater") == [Slot(1)]


def _regex_matches(names, text):
    """The previous matcher, kept as the oracle: one alternation, longest first, word boundaries."""
    import re

    index = {}
    for i, n in enumerate(normalize_name(n) for n in names):
        index.setdefault(n, i)
    alternation = "|".join(re.escape(n) for n in sorted(index, key=lambda n: (-len(n), n)))
    pattern = re.compile(rf"(?<!\w)(?:{alternation})(?!\w)")
    return [(m.start(), m.end(), index[m.group(0)]) for m in pattern.finditer(normalize_name(text))]


def test_trie_matcher_equals_the_regex_alternation_on_random_captions():
    """The trie matcher (cost independent of C) finds exactly what one regex alternation finds."""
    import random

    rng = random.Random(0)
    words = ["ant", "plant", "giant", "anteater", "art", "folk", "mr.", "mime", "red", "panda", "pants",
             "artful", "the", "a", "ant-eater", "_ant", "ant_", "é", "antà", "2ant", "(ant)", "x", "folkart"]
    names = RAW_NAMES + ["anteater", "mime", "folk", "ant-eater", "red panda bear", "c++", "x"]
    matcher = NameMatcher(names)
    seps = [" ", "  ", ", ", ".", "-", "_", "", "\t", "!"]
    for _ in range(3000):
        text = "".join(rng.choice(words) + rng.choice(seps) for _ in range(rng.randint(0, 12)))
        if rng.random() < 0.3:
            text = text.upper()
        expected = _regex_matches(names, text)
        assert list(matcher._matches(normalize_name(text))) == expected, text
        assert matcher.find(text) == [i for _, _, i in expected]


def test_reference_matcher_reproduces_b2_b4_b5():
    """NAME_MATCHING reference: '.'->' ' + lower only (B2), plain substrings in label order (B4), B5."""
    from clip import ReferenceNameMatcher, reference_normalize_name

    assert reference_normalize_name("Mr._Mime") == "mr _mime"
    assert reference_normalize_name("Red  Panda") == "red  panda"
    m = ReferenceNameMatcher(RAW_NAMES)
    ant, _, plant, mime, folk, art, _ = range(7)
    # plain substrings: "ant" fires inside words; the key "giant_anteater" (B2 kept "_") never matches
    assert m.split("pants") == ["p", Slot(ant), "s"]
    assert m.split("a plant") == ["a ", Slot(plant)]  # leftmost position first
    assert m.split("a giant anteater") == ["a gi", Slot(ant), " ", Slot(ant), "eater"]
    assert ReferenceNameMatcher(["ant", "anteater"]).split("anteater") == [Slot(0), "eater"]  # label order
    assert ReferenceNameMatcher(["anteater", "ant"]).split("anteater") == [Slot(0)]
    # the hint of a FolkArt prompt is scanned too: "folk art" (label 4) and "art" both match
    assert m.find("a photo of art, a type of folk art.") == [art, folk]
    assert m.find("artful party") == [art, art]
    # B2: the normalised key "mr _mime" is no longer found in a caption that keeps the underscore-free name
    assert m.find("mr. mime waves") == []
    assert m.find("MR _MIME waves") == [mime]
    assert m.split("no name") == list("no name")  # B5: the empty pattern splits between characters
    assert m.owner("a plant and an ant") == ant  # B6: first name in label order
    assert m.owner("nothing") is None


def test_matcher_rejects_colliding_names():
    with pytest.raises(ValueError, match="mr. mime"):
        NameMatcher(["Mr._Mime", "mr. mime"])


def test_class_prompt_pieces_never_scan_the_hint():
    pieces = class_prompt_pieces(TEMPLATE, 2)
    assert pieces == [["a photo of ", Slot(0), ", a type of folk art."],
                      ["a photo of ", Slot(1), ", a type of folk art."]]
    # matching the whole prompt would have put "art"/"folk art" into the hint
    assert NameMatcher(RAW_NAMES).find(TEMPLATE.format(name="ant")) == [0, 4]
    assert class_prompt_pieces("{} and {}", 1) == [[Slot(0), " and ", Slot(0)]]
    with pytest.raises(ValueError):
        class_prompt_pieces("no placeholder", 3)


def test_templates_immutable():
    a = templates.ensemble_templates("pokemon")
    b = templates.ensemble_templates("animal")
    assert len(templates.IMAGENET_ENSEMBLE) == 7 and isinstance(templates.IMAGENET_ENSEMBLE, tuple)
    assert a[-1] == "a photo of {}, a type of pokemon." and b[-1] == "a photo of {}, a type of animal."
    assert a[:7] == b[:7] == templates.IMAGENET_ENSEMBLE  # B26: nothing accumulates
    assert templates.hint_for("FolkArt59_27") == "folk art"
    with pytest.raises(KeyError, match="FolkArt59_27"):
        templates.hint_for("FolkArt59_72")


# ------------------------------------------------------------------------------------------ assembly
def test_assemble_truncation_rule():
    lengths, slot_ids = [2, 3], [[7, 8], [9, 9, 9]]
    # budget 8: [1,2,3] + slot0 (2) + [4,5,6,7] -> text cut to 3
    ids, spans = assemble([[1, 2, 3], Slot(0), [4, 5, 6, 7]], lengths, slot_ids, 10)
    assert ids == [SOT, 1, 2, 3, 7, 8, 4, 5, 6, EOT] and spans == [(4, 2, 0)]
    # a trailing slot that does not fit is dropped whole
    ids, spans = assemble([[1, 2, 3, 4, 5, 6], Slot(1)], lengths, slot_ids, 10)
    assert ids == [SOT, 1, 2, 3, 4, 5, 6, EOT] and spans == []
    # dropping the slot is not enough: the text before it is cut too
    ids, spans = assemble([[1, 2, 3, 4, 5, 6, 7, 8, 9], Slot(1)], lengths, slot_ids, 10)
    assert ids == [SOT, 1, 2, 3, 4, 5, 6, 7, 8, EOT] and spans == []
    # a text piece with no room left disappears, the slot before it stays
    ids, spans = assemble([[1, 2, 3, 4, 5], Slot(1), [6]], lengths, slot_ids, 10)
    assert ids == [SOT, 1, 2, 3, 4, 5, 9, 9, 9, EOT] and spans == [(6, 3, 1)]
    with pytest.raises(ValueError):
        assemble([Slot(0)], [3], [[1, 2]], 10)


def test_bank_offsets():
    assert bank_offsets([2, 1, 3]).tolist() == [0, 2, 3]
    batch = PromptBatch.build([[[5], Slot(2), [6], Slot(0)]], [2, 1, 3], [[1, 1], [2], [3, 3, 3]], 12)
    assert batch.slot_src.tolist() == [3, 4, 5, 0, 1]
    assert batch.slot_dst.tolist() == [2, 3, 4, 6, 7]
    assert batch.ids[0].tolist()[:9] == [SOT, 5, 3, 3, 3, 6, 1, 1, EOT]
    assert batch.eot_idx.tolist() == [8]


# ------------------------------------------------------------------------------------------ bank vs reference
@pytest.mark.parametrize("n_ctx", [None, 4])
def test_class_prompts_match_reference(tokenizer, table, n_ctx):
    lengths, slot_ids = name_slot_ids(tokenizer, RAW_NAMES, n_ctx)
    bank = random_bank(lengths, table.shape[1])
    learned = per_class(bank, lengths)
    seqs = [tokenize_pieces(tokenizer, p) for p in class_prompt_pieces(TEMPLATE, len(NAMES))]
    pb = PromptBank(seqs, lengths, slot_ids, table, CTX)
    embeds, eot = pb(bank)
    for c in range(len(NAMES)):
        ids, rows = reference_class_prompt(tokenizer, table, c, learned, n_ctx)
        assert torch.equal(pb.ids[c], ids)
        assert int(eot[c]) == int(ids.argmax())
        assert torch.equal(embeds[c], rows), NAMES[c]


@pytest.mark.parametrize("n_ctx", [None, 4])
def test_captions_match_reference(tokenizer, table, n_ctx):
    lengths, slot_ids = name_slot_ids(tokenizer, RAW_NAMES, n_ctx)
    bank = random_bank(lengths, table.shape[1], seed=2)
    learned = per_class(bank, lengths)
    matcher = NameMatcher(RAW_NAMES)
    seqs = [tokenize_pieces(tokenizer, matcher.split(c)) for c in CAPTIONS]
    batch = PromptBatch.build(seqs, lengths, slot_ids, CTX)
    embeds = batch.embed(table, bank)
    assert int(batch.eot_idx.max()) == CTX - 1  # the long captions were truncated
    for i, caption in enumerate(CAPTIONS):
        ids, rows = reference_caption(tokenizer, table, caption, NAMES, learned, n_ctx)
        assert torch.equal(batch.ids[i], ids), caption
        assert int(batch.eot_idx[i]) == int(ids.argmax())
        assert torch.equal(embeds[i], rows), caption
    # PromptBank with the same (token) sequences gives the same tensors
    pb_embeds, pb_eot = PromptBank(seqs, lengths, slot_ids, table, CTX)(bank)
    assert torch.equal(pb_embeds, embeds) and torch.equal(pb_eot, batch.eot_idx)


def test_truncation_drops_late_names(tokenizer, table):
    """In the over-long caption the trailing "giant anteater" is cut, the earlier names survive."""
    lengths, slot_ids = name_slot_ids(tokenizer, RAW_NAMES)
    matcher = NameMatcher(RAW_NAMES)
    pieces = matcher.split(CAPTIONS[6])
    assert [p.index for p in pieces if isinstance(p, Slot)] == [6, 0, 1]
    batch = PromptBatch.build([tokenize_pieces(tokenizer, pieces)], lengths, slot_ids, CTX)
    offsets = bank_offsets(lengths)
    used = set(batch.slot_src.tolist())
    assert offsets[6].item() in used and offsets[0].item() in used and offsets[1].item() not in used


def test_zero_shot_equivalence(tokenizer, model, table):
    """Names initialised from their own token rows reproduce plain CLIP prompts exactly."""
    lengths, slot_ids = name_slot_ids(tokenizer, RAW_NAMES)
    bank = torch.cat([table[torch.tensor(ids)] for ids in slot_ids])
    pb = PromptBank(class_prompt_pieces(TEMPLATE, len(NAMES)), lengths, slot_ids, table, CTX,
                    tokenizer=tokenizer)
    prompts = [TEMPLATE.format(name=n) for n in NAMES]
    expected_ids = tokenizer(prompts)
    assert torch.equal(pb.ids, expected_ids)
    embeds, eot = pb(bank)
    assert torch.equal(embeds, table[expected_ids])
    enc = TextEncoder(model)
    torch.testing.assert_close(enc(embeds, eot), model.encode_text(expected_ids), atol=1e-5, rtol=0)
    # and for captions with several names
    matcher = NameMatcher(RAW_NAMES)
    caps = CAPTIONS[:5]
    batch = PromptBatch.build([tokenize_pieces(tokenizer, matcher.split(c)) for c in caps], lengths,
                              slot_ids, CTX)
    cap_ids = tokenizer([normalize_name(c) for c in caps])
    assert torch.equal(batch.ids, cap_ids)
    torch.testing.assert_close(enc(batch.embed(table, bank), batch.eot_idx), model.encode_text(cap_ids),
                               atol=1e-5, rtol=0)


def test_prompt_bank_state_and_gradients(tokenizer, table):
    lengths, slot_ids = name_slot_ids(tokenizer, RAW_NAMES)
    seqs = class_prompt_pieces(TEMPLATE, len(NAMES))
    pb = PromptBank(seqs, lengths, slot_ids, table, CTX, tokenizer=tokenizer)
    assert list(pb.state_dict()) == [] and list(pb.parameters()) == []
    assert {name for name, _ in pb.named_buffers()} == {"ids", "eot_idx", "slot_dst", "slot_src", "base"}
    bank = random_bank(lengths, table.shape[1]).requires_grad_(True)
    base_before = pb.base.clone()
    embeds, eot = pb(bank)
    (embeds * torch.randn_like(embeds)).sum().backward()
    assert torch.equal(pb.base, base_before)  # the frozen buffer is never written
    assert bank.grad is not None and (bank.grad.abs().sum(dim=1) > 0).all()  # every name row is used once
    assert not table.requires_grad
    # fp16 bank rows are cast to the table's dtype
    half, _ = pb(bank.detach().half())
    assert half.dtype == table.dtype


def test_prompt_bank_requires_tokenizer_for_text(table):
    with pytest.raises(ValueError, match="tokenizer"):
        PromptBank([["a photo of ", Slot(0)]], [1], [[320]], table, CTX)
