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
from llmrt.tokenizer.vocab import PRE_PATTERNS_KEY

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
_HF_CONTRACTIONS = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
UNKNOWN, BYTE = 2, 6
# Added tokens that some checkpoints leave unmarked but llama.cpp makes control tokens anyway.
_SPECIAL_TEXTS = frozenset({"<pad>", "<mask>", "<2mass>", "[@BOS@]"})


def looks_special(text: str) -> bool:
    return (
        text in _SPECIAL_TEXTS
        or (text.startswith("<|") and text.endswith("|>"))
        or (text.startswith("<｜") and text.endswith("｜>"))
        or (text.startswith("<unused") and text.endswith(">"))
    )


def _pattern(split: dict[str, Any]) -> str:
    pattern = split.get("pattern", {})
    return pattern.get("Regex") or re.escape(pattern.get("String", ""))


CARRIED_PRE = "llmrt-split"  # tokenizer.ggml.pre of a file that carries its own split rules


def _split_rules(steps: list[dict[str, Any]]) -> tuple[str, ...]:
    """The regexes that the pre-tokenizer steps apply in turn, each match and each gap between
    matches a piece (llama.cpp's splitting); a step with other semantics is refused."""
    rules: list[str] = []
    for step in steps:
        kind = step.get("type")
        if kind == "Split" and step.get("behavior") == "Isolated" and not step.get("invert"):
            rules.append(_pattern(step).replace(_HF_CONTRACTIONS, P._CONTRACTIONS))
        elif kind == "Digits":
            rules.append(r"\p{N}" if step.get("individual_digits") else r"\p{N}+")
        elif kind == "ByteLevel":
            if step.get("add_prefix_space"):
                raise LlmrtError("a ByteLevel pre-tokenizer that adds a prefix space")
            if step.get("use_regex", True):
                rules.append(P.GPT2)
        else:
            raise LlmrtError(f"the tokenizer's {kind} pre-tokenizer step has no regex form")
    return tuple(rules)


def pre_tokenizer(tokenizer_json: dict[str, Any]) -> tuple[str, tuple[str, ...] | None]:
    """llama.cpp's name for the pre-tokenizer that tokenizer.json describes, when its split rules
    are those of one llama.cpp knows (then no rules travel), else CARRIED_PRE and the rules."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    rules = _split_rules([s for s in steps if s])
    for name in ("gpt-2", "smollm", "llama-bpe", "qwen2"):
        if rules == P.pre_tokenizer_for(name).patterns:
            return name, None
    if not rules:
        raise LlmrtError("tokenizer.json has no pre-tokenizer: a byte-level BPE needs one")
    return CARRIED_PRE, rules


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
        types[i] = CONTROL if added.get("special") or looks_special(text) else USER_DEFINED
    for i, text in enumerate(tokens):
        if text is None:
            tokens[i], types[i] = f"[PAD{i}]", UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    pre_name, rules = pre_tokenizer(tj)
    md: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre_name,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
    }
    if rules is not None:
        md[PRE_PATTERNS_KEY] = list(rules)
    md.update(special_metadata(ckpt, tokens, tj))
    return md


def special_metadata(
    ckpt: Checkpoint, tokens: list[str], tokenizer_json: dict[str, Any]
) -> dict[str, Any]:
    """Special token ids, BOS/EOS flags and the chat template, from tokenizer_config.json (and
    the post-processor of tokenizer.json where the config is silent about BOS)."""
    md: dict[str, Any] = {}
    tj = tokenizer_json
    config = ckpt.json("tokenizer_config.json")
    # as llama.cpp's converter resolves them: a token named in tokenizer_config.json by its id
    # among tokenizer.json's added tokens, else the id that config.json gives
    added = {a["content"]: a["id"] for a in tj.get("added_tokens", [])}
    for key, gguf_key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        i = added.get(_token_text(config.get(f"{key}_token")) or "")
        if i is None:
            i = ckpt.config.get(f"{key}_token_id")
        if isinstance(i, int) and 0 <= i < len(tokens):
            md[f"tokenizer.ggml.{gguf_key}_token_id"] = i
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


def spm_metadata(ckpt: Checkpoint, n_vocab: int) -> dict[str, Any]:
    """A SentencePiece tokenizer.model as llama.cpp's converter reads it: pieces, scores and
    types from sentencepiece, then the added tokens of tokenizer_config.json over them."""
    try:
        from sentencepiece import SentencePieceProcessor
    except ImportError:
        raise LlmrtError("this checkpoint's tokenizer is SentencePiece (tokenizer.model): "
                         "pip install 'llmrt[convert]' (sentencepiece)") from None  # fmt: skip
    sp = SentencePieceProcessor(model_file=str(ckpt.folder / "tokenizer.model"))
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    scores = [-10000.0] * n_vocab
    types = [UNUSED] * n_vocab
    for i in range(min(sp.vocab_size(), n_vocab)):
        tokens[i], scores[i] = sp.id_to_piece(i), sp.get_score(i)
        kinds = ((sp.is_unknown, UNKNOWN), (sp.is_control, CONTROL), (sp.is_unused, UNUSED),
                 (sp.is_byte, BYTE))  # fmt: skip
        types[i] = next((kind for test, kind in kinds if test(i)), NORMAL)
    for text, i in ckpt.json("added_tokens.json").items():
        if i < n_vocab:
            tokens[i], scores[i], types[i] = text, -1000.0, USER_DEFINED
    decoder = ckpt.json("tokenizer_config.json").get("added_tokens_decoder", {})
    for key, added in decoder.items():
        i, text = int(key), added["content"]
        if i >= n_vocab:
            continue
        if added.get("special") or looks_special(text):
            types[i] = CONTROL
        else:
            text, types[i] = text.replace("\u2581", " "), USER_DEFINED
        tokens[i], scores[i] = text, -1000.0
    md: dict[str, Any] = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
    }
    md.update(special_metadata(ckpt, tokens, ckpt.json("tokenizer.json")))
    return md


def tokenizer_metadata(ckpt: Checkpoint, n_vocab: int) -> dict[str, Any]:
    """The vocabulary: SentencePiece where tokenizer.model exists (as llama.cpp prefers it),
    else the BPE of tokenizer.json."""
    if (ckpt.folder / "tokenizer.model").is_file():
        return spm_metadata(ckpt, n_vocab)
    return bpe_metadata(ckpt, n_vocab)
