"""OpenAI CLIP's ``simple_tokenizer`` module: ``SimpleTokenizer`` and ``default_bpe``.

CoOp-family trainers write ``from clip.simple_tokenizer import SimpleTokenizer as _Tokenizer`` and
use ``encode`` / ``decode`` / ``encoder``. The BPE is open_clip's (same vocabulary file, same merges,
same cleaning, so the ids are OpenAI's); nothing is copied here. The only difference between the
two is the spelling of the special tokens: OpenAI's ``<|startoftext|>`` / ``<|endoftext|>`` are
added as names of the same ids 49406 / 49407 (and ``decode`` prints OpenAI's spelling), so code that
looks them up in ``encoder`` or writes them into a text works.
"""
from __future__ import annotations

import open_clip.tokenizer as oc_tokenizer
import regex as re

__all__ = ["SimpleTokenizer", "default_bpe", "SOT_TEXT", "EOT_TEXT"]

SOT_TEXT = "<|startoftext|>"
EOT_TEXT = "<|endoftext|>"


def default_bpe() -> str:
    """Path of the BPE merges file (open_clip's copy of OpenAI's ``bpe_simple_vocab_16e6.txt.gz``)."""
    return oc_tokenizer.default_bpe()


class SimpleTokenizer(oc_tokenizer.SimpleTokenizer):
    """OpenAI's tokenizer API on open_clip's BPE (``SimpleTokenizer(bpe_path=default_bpe())``)."""

    def __init__(self, bpe_path: str = "") -> None:
        super().__init__(bpe_path or default_bpe())
        for text, token_id in ((SOT_TEXT, self.sot_token_id), (EOT_TEXT, self.eot_token_id)):
            self.encoder[text] = token_id
            self.decoder[token_id] = text
            self.cache[text] = text
        # open_clip's pattern starts with its own special tokens; put OpenAI's spellings in front
        words = self.pat.pattern.split("|", len(self.all_special_ids))[-1]
        specials = "|".join(re.escape(t) for t in (SOT_TEXT, EOT_TEXT))
        self.pat = re.compile(f"{specials}|{self.pat.pattern[:-len(words) - 1]}|{words}", self.pat.flags)
