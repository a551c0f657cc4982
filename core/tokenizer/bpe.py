"""Byte-pair merging by rank within one pre-tokenized word (llama.cpp's llm_tokenizer_bpe).

The lowest-ranked adjacent pair is merged first, the leftmost among equal pairs, until no pair has
a rank. Results are cached per word: running text repeats its words, so most never reach here.
"""

from __future__ import annotations

from llmrt.tokenizer.merge import merge_pairs


def bpe_merge(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Split an encoded word into the pieces that BPE merging leaves."""
    get = ranks.get
    return merge_pairs(word, lambda a, m, b: get((word[a:m], word[m:b])))
