"""Streaming detokenization never shows a broken character and adds up to decode()."""

from __future__ import annotations

import pytest

from llmrt.tokenizer import Tokenizer

TEXTS = [
    "😀 👍🏽 👨‍👩‍👧‍👦 naïve café 中文 नमस्ते \x00",
    "private use \ue000\U000f0000 rare \U0001d518",
    "plain ascii text, nothing odd",
]


@pytest.mark.parametrize("model", ["smollm2_tok", "gemma3_tok"])
@pytest.mark.parametrize("text", TEXTS)
def test_stream_matches_decode(model: str, text: str, request: pytest.FixtureRequest) -> None:
    tok: Tokenizer = request.getfixturevalue(model)
    ids = tok.encode(text, add_special=False)
    dec = tok.decoder()
    chunks = [dec.add(i) for i in ids] + [dec.flush()]
    assert "".join(chunks) == text
    assert all("\ufffd" not in c for c in chunks)


def test_byte_tokens_split_a_character(gemma3_tok: Tokenizer) -> None:
    ids = gemma3_tok.encode("\U000f0000", add_special=False)  # no vocab entry: four byte tokens
    assert [gemma3_tok.token_text(i) for i in ids] == ["<0xF3>", "<0xB0>", "<0x80>", "<0x80>"]
    dec = gemma3_tok.decoder()
    assert [dec.add(i) for i in ids] == ["", "", "", "\U000f0000"]


def test_invalid_bytes_become_replacement(gemma3_tok: Tokenizer) -> None:
    lone = gemma3_tok.token_to_id("<0xF3>")
    dec = gemma3_tok.decoder()
    assert dec.add(lone) == ""
    assert dec.add(gemma3_tok.encode("a", add_special=False)[0]) == "\ufffda"
    assert dec.add(lone) + dec.flush() == "\ufffd"
    assert gemma3_tok.decode([lone]) == "\ufffd"


def test_special_tokens_in_stream(smollm2_tok: Tokenizer) -> None:
    ids = smollm2_tok.encode("<|im_start|>hi<|im_end|>", add_special=False, parse_special=True)
    plain = smollm2_tok.decoder()
    shown = smollm2_tok.decoder(special=True)
    assert "".join(plain.add(i) for i in ids) == "hi"
    assert "".join(shown.add(i) for i in ids) == "<|im_start|>hi<|im_end|>"
