"""A checkpoint's tokenizer as GGUF metadata: the vocabulary, merges and special tokens of a BPE
`tokenizer.json`, its chat template and BOS/EOS flags from `tokenizer_config.json`.

The pre-tokenizer is read from tokenizer.json itself: its split rules are compared with the
patterns llama.cpp knows by name (core/tokenizer/pretokenize.py), and the file gets that name.
"""

from __future__ import annotations

import re
from typing import Any

from llmrt.convert.checkpoint import Checkpoint
from llmrt.errors import LlmrtError
from llmrt.tokenizer import pretokenize as P

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
_HF_CONTRACTIONS = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
_LOOKS_SPECIAL = re.compile(r"^<\|.*\|>$|^<[a-z_]+>$|^</[a-z_]+>$|^\[[A-Z_]+\]$")


def _pattern(split: dict[str, Any]) -> str:
    pattern = split.get("pattern", {})
    return pattern.get("Regex") or re.escape(pattern.get("String", ""))


def pre_tokenizer_name(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's name for the pre-tokenizer that tokenizer.json describes."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    byte_level_splits = any(
        s.get("type") == "ByteLevel" and s.get("use_regex", True) for s in steps
    )
    digits = [s for s in steps if s.get("type") == "Digits"]
    splits = [_pattern(s) for s in steps if s.get("type") == "Split"]
    if kinds == ["ByteLevel"] and byte_level_splits:
        return "gpt-2"
    if (
        kinds == ["Digits", "ByteLevel"]
        and digits[0].get("individual_digits")
        and byte_level_splits
    ):
        return "smollm"
    if len(splits) == 1 and not byte_level_splits:
        ours = splits[0].replace(_HF_CONTRACTIONS, P._CONTRACTIONS)
        for name, pattern in (("llama-bpe", P.LLAMA3), ("qwen2", P.QWEN2), ("gpt-2", P.GPT2)):
            if ours == pattern:
                return name
    raise LlmrtError(
        f"the tokenizer's pre-tokenizer ({' + '.join(str(k) for k in kinds) or 'none'}"
        f"{': ' + splits[0] if splits else ''}) is not one llmrt can name yet"
    )


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def bpe_metadata(ckpt: Checkpoint, n_vocab: int) -> dict[str, Any]:
    tj = ckpt.json("tokenizer.json")
    if not tj:
        raise LlmrtError(f"{ckpt.folder} has no tokenizer.json")
    model = tj.get("model", {})
    if model.get("type") != "BPE":
        raise LlmrtError(f"tokenizer.json holds a {model.get('type')} model; llmrt converts BPE")
    tokens: list[str | None] = [None] * n_vocab
    types = [NORMAL] * n_vocab
    for text, i in model["vocab"].items():
        if i < n_vocab:
            tokens[i] = text
    for added in tj.get("added_tokens", []):
        i, text = added["id"], added["content"]
        if i >= n_vocab:
            raise LlmrtError(f"added token {text!r} has id {i}, past the vocabulary ({n_vocab})")
        tokens[i] = text
        types[i] = CONTROL if added.get("special") or _LOOKS_SPECIAL.match(text) else USER_DEFINED
    for i, text in enumerate(tokens):
        if text is None:
            tokens[i], types[i] = f"[PAD{i}]", UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    md: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre_tokenizer_name(tj),
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
    }
    config = ckpt.json("tokenizer_config.json")
    ids = {text: i for i, text in enumerate(tokens)}
    for key, gguf_key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        text = _token_text(config.get(f"{key}_token"))
        if text is not None and text in ids:
            md[f"tokenizer.ggml.{gguf_key}_token_id"] = ids[text]
    if "add_bos_token" in config:
        md["tokenizer.ggml.add_bos_token"] = bool(config["add_bos_token"])
    else:  # the post-processor's template says whether a BOS goes first
        single = ((tj.get("post_processor") or {}).get("single")) or []
        bos = _token_text(config.get("bos_token"))
        md["tokenizer.ggml.add_bos_token"] = any(
            (part.get("SpecialToken") or {}).get("id") == bos for part in single
        )
    if "add_eos_token" in config:
        md["tokenizer.ggml.add_eos_token"] = bool(config["add_eos_token"])
    template = config.get("chat_template")
    if (ckpt.folder / "chat_template.jinja").is_file():  # where transformers 4.43+ saves it
        template = (ckpt.folder / "chat_template.jinja").read_text(encoding="utf-8")
    if isinstance(template, str):
        md["tokenizer.chat_template"] = template
    return md
