"""Pieces of the tokenizer on small made-up vocabularies (no model file needed)."""

from __future__ import annotations

import numpy as np
import pytest

from llmrt.tokenizer import Tokenizer, TokenizerError
from llmrt.tokenizer.pretokenize import BYTE_TO_UNICODE, byte_encode, pre_tokenizer_for

REQUIRED = ["llama-bpe", "llama3", "gpt-2", "smollm", "qwen2", "deepseek-llm", "deepseek-coder",
            "falcon", "starcoder", "command-r", "olmo", "default"]  # fmt: skip


@pytest.mark.parametrize("name", REQUIRED)
def test_required_pre_tokenizers(name: str) -> None:
    pre = pre_tokenizer_for(name)
    assert pre is not None
    text = "Hello world's 12345  x\n\n\ty 中文 😀!"
    assert "".join(pre.split(text)) == text  # a split never loses or adds text


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("gpt-2", "Hello world's  x", ["Hello", " world", "'s", " ", " x"]),
        ("llama-bpe", "1234567 it'S\n\n  a", ["123", "456", "7", " it", "'S", "\n\n", " ", " a"]),
        ("smollm", "abc 123", ["abc", " ", "1", "2", "3"]),
        ("qwen2", "x123", ["x", "1", "2", "3"]),
        # llama.cpp treats non-ASCII whitespace as \s only, even inside explicit ranges
        ("deepseek-llm", "a\u3000b", ["a", "\u3000b"]),
    ],
)
def test_splits(name: str, text: str, words: list[str]) -> None:
    assert pre_tokenizer_for(name).split(text) == words


def _bpe_metadata(pre: str = "gpt-2", **extra: object) -> dict:
    chars = [BYTE_TO_UNICODE[b] for b in range(256)]
    merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o"]
    tokens = chars + ["he", "ll", "hell", "hello", "Ġw", "Ġwo", "<|endoftext|>", "<x>"]
    types = np.array([1] * (len(tokens) - 2) + [3, 4], dtype=np.int32)
    md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre,
          "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
          "tokenizer.ggml.merges": merges, "tokenizer.ggml.bos_token_id": len(tokens) - 2,
          "tokenizer.ggml.eos_token_id": len(tokens) - 2}  # fmt: skip
    md.update(extra)
    return md


def test_bpe_merges_and_specials() -> None:
    tok = Tokenizer.from_metadata(_bpe_metadata())
    t2i = tok.vocab.token_to_id
    assert tok.encode("hello wo") == [t2i["hello"], t2i["Ġwo"]]
    # user-defined tokens split the text even without special parsing; control ones do not
    assert tok.encode("a<x>b") == [t2i["a"], t2i["<x>"], t2i["b"]]
    assert t2i["<|endoftext|>"] not in tok.encode("<|endoftext|>")
    assert tok.encode("<|endoftext|>", parse_special=True) == [t2i["<|endoftext|>"]]
    assert tok.decode(tok.encode("héllo wo ☃")) == "héllo wo ☃"
    assert tok.eog_ids == {t2i["<|endoftext|>"]}


def test_bos_eos_from_metadata() -> None:
    md = _bpe_metadata("llama-bpe")  # llama-bpe adds BOS unless the GGUF says otherwise
    tok = Tokenizer.from_metadata(md)
    assert tok.encode("he")[0] == tok.bos_id
    md["tokenizer.ggml.add_bos_token"] = False
    md["tokenizer.ggml.add_eos_token"] = True
    tok = Tokenizer.from_metadata(md)
    assert tok.encode("he") == [tok.vocab.token_to_id["he"], tok.eos_id]
    assert tok.encode("he", add_special=False) == [tok.vocab.token_to_id["he"]]


def test_clean_spaces_on_decode() -> None:
    tok = Tokenizer.from_metadata(_bpe_metadata("gpt-2"))  # gpt-2 cleans up spaces
    ids = tok.encode("a , b ' c 's d 're", add_special=False)
    assert tok.decode(ids) == "a, b'c's d're"
    smol = Tokenizer.from_metadata(_bpe_metadata("smollm"))  # smollm keeps them
    assert smol.decode(ids) == "a , b ' c 's d 're"


def test_overlapping_specials_longest_first() -> None:
    md = _bpe_metadata()
    md["tokenizer.ggml.tokens"] = md["tokenizer.ggml.tokens"] + ["abc", "bcde"]
    md["tokenizer.ggml.token_type"] = np.append(md["tokenizer.ggml.token_type"], [4, 4])
    tok = Tokenizer.from_metadata(md)
    t2i = tok.vocab.token_to_id
    # llama.cpp cuts the longer special text first, even where a shorter one starts earlier
    assert tok.encode("abcde") == [t2i["a"], t2i["bcde"]]
    assert tok.encode("abcxbcde") == [t2i["abc"], t2i["x"], t2i["bcde"]]


def test_phi3_rstrip() -> None:
    md = _bpe_metadata(**{"general.name": "Phi-3 mini"})
    md["tokenizer.ggml.tokens"] = md["tokenizer.ggml.tokens"] + ["<s>", "</s>", "<unk>", "<|end|>"]
    md["tokenizer.ggml.token_type"] = np.append(md["tokenizer.ggml.token_type"], [3, 3, 2, 3])
    tok = Tokenizer.from_metadata(md)
    t2i = tok.vocab.token_to_id
    end = t2i["<|end|>"]
    assert tok.encode("<|end|> \n a", parse_special=True) == [end, t2i["a"]]
    s = t2i["<s>"]
    assert tok.encode("<s> a", parse_special=True) == [s, t2i["Ġ"], t2i["a"]]


def _spm_metadata(add_space_prefix: bool) -> dict:
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    words = ["▁", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "hell", "hello", "▁w", "▁wor",
             "or", "▁world", "ld", "▁hello"]  # fmt: skip
    tokens = pieces + words
    scores = np.array([0.0] * len(pieces) + [-float(i) for i in range(len(words))], np.float32)
    types = np.array([2, 3, 3] + [6] * 256 + [1] * len(words), np.int32)
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.add_space_prefix": add_space_prefix}  # fmt: skip


def test_spm_space_prefix_and_byte_fallback() -> None:
    tok = Tokenizer.from_metadata(_spm_metadata(add_space_prefix=True))
    t2i = tok.vocab.token_to_id
    assert tok.encode("hello world") == [1, t2i["▁hello"], t2i["▁world"]]
    # the leading space is dropped when the first token is text, as llama_detokenize does
    assert tok.decode(tok.encode("hello world", add_special=False)) == "hello world"
    assert tok.decode(tok.encode("hello world")) == " hello world"
    ids = tok.encode("hé", add_special=False)
    assert [tok.token_text(i) for i in ids] == ["▁", "h", "<0xC3>", "<0xA9>"]
    assert tok.decode(ids) == "hé"
    plain = Tokenizer.from_metadata(_spm_metadata(add_space_prefix=False))
    assert plain.encode("hello", add_special=False) == [t2i["hello"]]


def test_bad_metadata() -> None:
    with pytest.raises(TokenizerError, match="unknown pre-tokenizer"):
        Tokenizer.from_metadata(_bpe_metadata("no-such-pre"))
    with pytest.raises(TokenizerError, match="unsupported tokenizer model"):
        Tokenizer.from_metadata({**_bpe_metadata(), "tokenizer.ggml.model": "rwkv"})
    with pytest.raises(TokenizerError, match="no tokenizer.ggml.tokens"):
        Tokenizer.from_metadata({"tokenizer.ggml.model": "gpt2"})


def test_byte_encode() -> None:
    assert byte_encode(" a\n") == "Ġa\u010a"
