"""Write llama.cpp's tokenization of a set of strings as a JSON fixture (run with llama-cpp-python).

Runs under a venv with llama-cpp-python==0.3.36 (built from source), not under llmrt's:

    /tmp/peer-venv/bin/python tests/tokenizer/make_gemma_reference.py \
        --model ~/.cache/llmrt/models/gemma-3-270m-q4_k_m.gguf \
        --out tests/tokenizer/fixtures/gemma3-270m-tokenize.json

For each string, the four (add_special, parse_special) modes, as in ../shared/refs' tokenize.json:
ids, detok (llama_detokenize, remove_special=False, unparse_special=False), detok_special
(unparse_special=True) and the hex of each token's piece. Also the vocabulary's special ids and
the whole end-of-generation set, so tests can check those without llama.cpp.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import platform
from pathlib import Path

import llama_cpp

CASES = [
    "",
    "a",
    "Hello world",
    " Hello world",
    "  Hello world",
    "Hello world ",
    "Hello   world  ",
    "   ",
    " ",
    "\n",
    "\n\n\n",
    "line one\nline two\r\nline three\n\n",
    "\ttab\tseparated\t\tvalues",
    " \t \n \t\n",
    "The quick brown fox jumps over the lazy dog.",
    "It's, isn't it? They'll say: \"I'd've done it!\"",
    "3.14159 1,000,000 2024-01-31 0x1F 007 1234567890",
    "def f(x):\n    return x ** 2  # square\n",
    '{"key": [1, 2, 3], "nested": {"a": null}}',
    "https://example.com/path?q=1&r=two#frag",
    "C:\\Users\\me\\file.txt and /usr/local/bin",
    "😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷",
    "café naïve façade Ærøskøbing",
    "안녕하세요 세계",
    "你好，世界！这是一个测试。",
    "こんにちは、カタカナとひらがな。",
    "مرحبا بالعالم",
    "Привет, мир! Γειά σου Κόσμε",
    "नमस्ते दुनिया",
    "mixed 中文 and English with 日本語",
    "zero\u200bwidth\u00a0nbsp\u3000ideographic",
    "control \x00\x01\x07\x1b[0m bytes",
    "private use \ue000\U000f0000 and rare \U0001d518\U0001f9ff",
    "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text<eos>",
    "<pad><unk><mask>",
    "<unused0> and <unused123>",
    "<start_of_image>[multimodal]<end_of_image>",
    "not special: <start_of_turn and end_of_turn>",
    "<|im_start|>system<|im_end|> <s></s>",
    "▁already escaped▁spaces",
    "trailing newline spaces   \n   leading",
    "a" * 64 + " " + "ab" * 40,
    "!!!???...,,,;;;",
    "ÀÉÎÕÜ àéîõü ß ẞ ﬁ",
]


def detokenize(vocab: int, ids: list[int], unparse_special: bool) -> str:
    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    size = 64 + 64 * len(ids)
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, False, unparse_special)
    assert n >= 0, "detokenize buffer too small"
    return buf.raw[:n].decode("utf-8", errors="replace")


def piece(vocab: int, token: int) -> bytes:
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, 256, 0, True)
    return buf.raw[:n]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    path = Path(args.model).expanduser()
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)

    def opt(token: int) -> int | None:
        return None if token < 0 else token

    cases = []
    for text in CASES:
        results = []
        for add_bos in (False, True):
            for special in (False, True):
                ids = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)
                results.append(
                    {
                        "add_bos": add_bos,
                        "special": special,
                        "ids": ids,
                        "detok": detokenize(vocab, ids, False),
                        "detok_special": detokenize(vocab, ids, True),
                        "pieces_hex": [piece(vocab, t).hex() for t in ids],
                    }
                )
        cases.append({"text": text, "results": results})
    out = {
        "producer": {
            "llama_cpp_python": llama_cpp.__version__,
            "python": platform.python_version(),
            "script": "tests/tokenizer/make_gemma_reference.py",
        },
        "model": {
            "file": path.name,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "n_vocab": n_vocab,
            "bos": opt(llama_cpp.llama_vocab_bos(vocab)),
            "eos": opt(llama_cpp.llama_vocab_eos(vocab)),
            "eot": opt(llama_cpp.llama_vocab_eot(vocab)),
            "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
            "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
            "eog": [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)],
        },
        "cases": cases,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")


if __name__ == "__main__":
    main()
