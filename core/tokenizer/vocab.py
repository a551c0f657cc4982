"""The vocabulary as llama.cpp loads it from GGUF metadata: tokens, scores, attributes, special ids.

Everything here follows llama.cpp's ``llama_vocab::impl::load`` so that the ids we produce are the
ids llama.cpp produces: the same defaults per tokenizer model, the same flags per pre-tokenizer,
the same text-based detection of end-of-turn and end-of-generation tokens.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmrt.errors import LlmrtError
from llmrt.tokenizer.pretokenize import PreTokenizer, pre_tokenizer_for


class TokenizerError(LlmrtError):
    """The GGUF's tokenizer metadata is missing, malformed or of a kind llmrt does not support."""


class Attr(enum.IntFlag):
    """Token attributes, the bits of llama.cpp's ``llama_token_attr``."""

    UNDEFINED = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5
    NORMALIZED = 1 << 6
    LSTRIP = 1 << 7
    RSTRIP = 1 << 8
    SINGLE_WORD = 1 << 9


# GGUF `tokenizer.ggml.token_type` values (llama_token_type) -> attributes.
_TYPE_TO_ATTR = {
    0: Attr.UNDEFINED,
    1: Attr.NORMAL,
    2: Attr.UNKNOWN,
    3: Attr.CONTROL,
    4: Attr.USER_DEFINED,
    5: Attr.UNUSED,
    6: Attr.BYTE,
}

# Tokens recognised by their text, as llama.cpp does while converters do not record them all.
_EOT_TEXTS = frozenset(
    {
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
        "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>",
        "<end_of_utterance>",
    }
)  # fmt: skip
_EOM_TEXTS = frozenset({"<|eom_id|>"})
_FIM_TEXTS = {
    "fim_pre": {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>",
                "▁<PRE>", "<|code_prefix|>", "<|prefix|>"},
    "fim_suf": {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>",
                "▁<SUF>", "<|code_suffix|>", "<|suffix|>"},
    "fim_mid": {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>",
                "▁<MID>", "<|code_middle|>", "<|middle|>"},
    "fim_pad": {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"},
    "fim_rep": {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"},
    "fim_sep": {"<|file_sep|>"},
}  # fmt: skip
_EOG_TEXTS = frozenset(
    {
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>",
        "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>",
        "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>",
        "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[",
    }
)  # fmt: skip
# GGUF keys of the special ids whose name differs from "<name>_token_id" (later keys win)
_ID_KEYS = {
    "unk": ("unknown_token_id",),
    "sep": ("seperator_token_id",),  # sic: the GGUF key is spelled this way
    "pad": ("padding_token_id",),
    "fim_pre": ("fim_pre_token_id", "prefix_token_id"),
    "fim_suf": ("fim_suf_token_id", "suffix_token_id"),
    "fim_mid": ("fim_mid_token_id", "middle_token_id"),
}
# gpt-oss: llama.cpp always renders these, whatever the GGUF says.
_ALWAYS_USER_DEFINED = frozenset({"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"})


@dataclass
class Vocab:
    """A loaded vocabulary. ``kind`` is "spm" (tokenizer.ggml.model = llama) or "bpe" (gpt2)."""

    kind: str
    pre_name: str
    tokens: list[str]
    scores: list[float]
    attrs: list[int]
    token_to_id: dict[str, int]
    merges: dict[tuple[str, str], int]
    pre: PreTokenizer | None
    special: dict[str, int | None]  # bos, eos, eot, eom, unk, sep, pad, mask, fim_*
    add_bos: bool = False
    add_eos: bool = False
    add_sep: bool = False
    add_space_prefix: bool = False
    clean_spaces: bool = False
    escape_whitespaces: bool = True
    ignore_merges: bool = False
    eog_ids: frozenset[int] = frozenset()
    # ids partitioned out of the text before tokenizing, longest text first
    special_cache: list[int] = field(default_factory=list)

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)


def _array(md: Mapping[str, Any], key: str) -> list[Any] | None:
    value = md.get(key)
    if value is None:
        return None
    return value.tolist() if hasattr(value, "tolist") else list(value)


# Where `llmrt convert` writes the regexes of a pre-tokenizer that llama.cpp knows by no name,
# applied in turn as llama.cpp applies a named one's.
PRE_PATTERNS_KEY = "llmrt.tokenizer.pre_patterns"


def load_vocab(md: Mapping[str, Any]) -> Vocab:
    """Build a Vocab from GGUF metadata the way llama.cpp's vocab loader does."""
    model = md.get("tokenizer.ggml.model")
    pre_name = md.get("tokenizer.ggml.pre") or "default"
    tokens = _array(md, "tokenizer.ggml.tokens")
    if not tokens:
        raise TokenizerError("the GGUF has no tokenizer.ggml.tokens: it carries no vocabulary")
    n = len(tokens)

    special: dict[str, int | None] = dict.fromkeys(
        ("bos", "eos", "eot", "eom", "unk", "sep", "pad", "mask", *_FIM_TEXTS)
    )
    merges: dict[tuple[str, str], int] = {}
    pre: PreTokenizer | None = None
    flags = dict.fromkeys(("add_space_prefix", "clean_spaces", "ignore_merges", "add_bos",
                           "add_eos", "add_sep"), False)  # fmt: skip
    flags["escape_whitespaces"] = True
    if model == "llama":
        kind = "spm"
        special.update(bos=1, eos=2, unk=0)
        flags.update(add_space_prefix=True, add_bos=True)
    elif model == "gpt2":
        kind = "bpe"
        merge_list = _array(md, "tokenizer.ggml.merges")
        if merge_list is None:
            raise TokenizerError("a BPE (gpt2) vocabulary without tokenizer.ggml.merges")
        for rank, merge in enumerate(merge_list):
            # split at the first space after the first character, as llama.cpp does
            pos = merge.find(" ", 1)
            pair = (merge[:pos], merge[pos + 1 :]) if pos >= 0 else ("", "")
            merges.setdefault(pair, rank)
        special.update(bos=11, eos=11)
        carried = _array(md, PRE_PATTERNS_KEY)
        # a pre-tokenizer llama.cpp has no name for, carried as its own split rules
        pre = PreTokenizer(pre_name, tuple(carried)) if carried else pre_tokenizer_for(pre_name)
        if pre is None:
            raise TokenizerError(f"unknown pre-tokenizer type: {pre_name!r}")
        flags.update(escape_whitespaces=False, clean_spaces=True)
        flags.update(pre.flags)
        if flags.pop("no_bos", False):  # chatglm: no BOS unless the GGUF names one
            special["bos"] = None
    else:
        raise TokenizerError(f"unsupported tokenizer model {model!r} (llmrt reads llama and gpt2)")

    if "tokenizer.ggml.add_space_prefix" in md:
        flags["add_space_prefix"] = bool(md["tokenizer.ggml.add_space_prefix"])

    scores = _array(md, "tokenizer.ggml.scores") or [0.0] * n
    types = _array(md, "tokenizer.ggml.token_type")
    attrs = [int(_TYPE_TO_ATTR.get(t, Attr.UNDEFINED)) for t in types] if types else [4] * n
    if len(scores) < n or len(attrs) < n:
        raise TokenizerError("tokenizer.ggml.scores or token_type is shorter than the vocabulary")
    token_to_id: dict[str, int] = {}
    for i, text in enumerate(tokens):
        if not text:
            text = tokens[i] = f"[EMPTY_{i}]"
        if token_to_id.setdefault(text, i) != i:
            raise TokenizerError(f"duplicate token in vocabulary: {text!r}")

    for name in special:
        if special[name] is not None and special[name] >= n:
            special[name] = None  # a default out of range is disabled
        for key in _ID_KEYS.get(name, (f"{name}_token_id",)):
            value = md.get(f"tokenizer.ggml.{key}")
            if value is not None and 0 <= int(value) < n:
                special[name] = int(value)
    for name, key in (("add_bos", "add_bos_token"), ("add_eos", "add_eos_token"),
                      ("add_sep", "add_sep_token")):  # fmt: skip
        if f"tokenizer.ggml.{key}" in md:
            flags[name] = bool(md[f"tokenizer.ggml.{key}"])
    for name in ("add_bos", "add_eos", "add_sep"):
        if flags[name] and special[name[4:]] is None:
            raise TokenizerError(f"tokenizer.ggml.{name}_token is true but no {name[4:]} id is set")

    eog = _detect_specials(tokens, attrs, special)
    for i, text in enumerate(tokens):
        if text in _ALWAYS_USER_DEFINED:
            attrs[i] = int(Attr.USER_DEFINED)
    special_mask = Attr.CONTROL | Attr.USER_DEFINED | Attr.UNKNOWN
    cache = [i for i in range(n) if attrs[i] & special_mask]
    # stable, longest first: llama.cpp's std::sort leaves ties unspecified
    cache.sort(key=lambda i: -len(tokens[i].encode("utf-8")))
    _strip_attrs(md, pre_name, token_to_id, attrs, cache)
    return Vocab(
        kind=kind, pre_name=pre_name, tokens=tokens, scores=[float(s) for s in scores[:n]],
        attrs=attrs[:n], token_to_id=token_to_id, merges=merges, pre=pre, special=special,
        eog_ids=frozenset(eog), special_cache=cache, **flags,
    )  # fmt: skip


def _detect_specials(
    tokens: Sequence[str], attrs: list[int], special: dict[str, int | None]
) -> set[int]:
    """Find EOT/EOM/FIM and end-of-generation tokens by their text; returns the EOG set.

    llama.cpp walks an unordered_map, so when several texts qualify for EOT its pick is arbitrary;
    we take the lowest id, which agrees with it on the models we test.
    """
    control = int(Attr.CONTROL)
    eog: set[int] = set()
    for i, text in enumerate(tokens):
        if special["eot"] is None and text in _EOT_TEXTS:
            special["eot"] = i
            attrs[i] |= control
        if special["eom"] is None and text in _EOM_TEXTS:
            special["eom"] = i
            attrs[i] |= control
        for name, texts in _FIM_TEXTS.items():
            if special[name] is None and text in texts:
                special[name] = i
                attrs[i] |= control
    for i, text in enumerate(tokens):
        if attrs[i] & control and not attrs[i] & Attr.UNUSED and "unused" in text:
            attrs[i] |= int(Attr.UNUSED)
    for name in ("fim_pad", "fim_rep", "fim_sep"):
        if special[name] is not None:
            eog.add(special[name])
    for i, text in enumerate(tokens):
        if text in _EOG_TEXTS:
            eog.add(i)
            attrs[i] |= control
    for name in ("eos", "eot", "eom"):
        if special[name] is not None:
            eog.add(special[name])
    texts = {tokens[i]: i for i in eog}
    # o200k_harmony / solar-open: "<|end|>" ends a message there, not the generation
    if "<|end|>" in texts and (
        ("<|return|>" in texts and ("<|call|>" in texts or "<|calls|>" in texts))
        or ("<|flush|>" in texts and ("<|call|>" in texts or "<|calls|>" in texts))
    ):
        eog.discard(texts["<|end|>"])
        attrs[texts["<|end|>"]] = int(Attr.USER_DEFINED)
    if "<|tool_response>" in texts and "</s>" in texts:  # gemma4
        eog.discard(texts["</s>"])
        attrs[texts["</s>"]] = int(Attr.NORMAL)
    return eog


def _strip_attrs(
    md: Mapping[str, Any], pre_name: str, ids: dict[str, int], attrs: list[int], cache: list[int]
) -> None:
    """Per-model lstrip/rstrip, which GGUF does not record: llama.cpp sets them by name."""
    name = str(md.get("general.name", "")).lower()
    arch = str(md.get("general.architecture", ""))
    if any(p in pre_name for p in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or arch in (
        "nomic-bert-moe",
        "jina-bert-v3",
    ):
        if "<mask>" in ids:
            attrs[ids["<mask>"]] |= Attr.LSTRIP
    elif "phi-3" in name or "phi3" in name:
        for i in cache:
            attrs[i] |= Attr.RSTRIP
        rstrip = {"</s>": True, "<unk>": False, "<s>": False, "<|endoftext|>": False}
        for text, on in rstrip.items():
            if text in ids:
                i = ids[text]
                attrs[i] = (attrs[i] | Attr.RSTRIP) if on else (attrs[i] & ~int(Attr.RSTRIP))
    elif "modern-bert" in name and "[MASK]" in ids:
        attrs[ids["[MASK]"]] |= Attr.LSTRIP
