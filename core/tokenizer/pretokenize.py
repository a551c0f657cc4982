"""BPE pre-tokenizers: `tokenizer.ggml.pre` names -> the regexes that split text into words.

llama.cpp applies a list of regexes in turn: each one splits every piece the previous ones left,
and the text between two matches becomes a piece of its own. Its hand-written GPT-2 and Llama 3
splitters and its std::regex fallback (on "collapsed" text) agree with these patterns run by the
`regex` package, given two translations done in `_compile`: ``\\s`` means Unicode White_Space
(what llama.cpp's tables call whitespace), and ``$`` means the end of the piece.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any

import regex

# Contractions, case-insensitive the way llama.cpp spells it (std::regex has no (?i:...)).
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_CJK = "[一-龥ࠀ-一가-퟿]+"
DEEPSEEK_LLM = (
    r"[\r\n]",
    r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",  # noqa: E501
    r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
    r"\s+$",
    _CJK,
    r"\p{N}+",
)
DEEPSEEK_CODER = (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}")
DEEPSEEK3 = (
    r"\p{N}{1,3}",
    "[一-龥぀-ゟ゠-ヿ]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)
# "Lu..." written as llama.cpp does: any letter that is not a-z (resp. A-Z)
_UPPER = r"((?=[\p{L}])([^a-z]))"
_LOWER = r"((?=[\p{L}])([^A-Z]))"
TEKKEN = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GPT4O = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_CONTRACTIONS}?"
    rf"|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*{_CONTRACTIONS}?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BLOOM = " ?[^(\\s|.,!?…。，、।۔،)]+"
DEFAULT = (r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]")


@dataclass(frozen=True)
class PreTokenizer:
    """A named pre-tokenizer: the regexes applied in turn, and the vocab flags it implies."""

    name: str
    patterns: tuple[str, ...]
    flags: dict[str, Any] = field(default_factory=dict)

    def split(self, text: str) -> list[str]:
        """Split text into the words that BPE merges within."""
        compiled = _compile(self.patterns)
        if len(compiled) == 1:
            return _split_one(compiled[0], text, 0, len(text))
        spans = [(0, len(text))]
        for pattern in compiled:
            new: list[tuple[int, int]] = []
            for start, end in spans:
                pos = start
                for m in pattern.finditer(text, start, end):
                    s, e = m.span()
                    if s > pos:
                        new.append((pos, s))
                    if e > s:
                        new.append((s, e))
                    pos = e
                if pos < end:
                    new.append((pos, end))
            spans = new
        return [text[s:e] for s, e in spans]


def _split_one(pattern: regex.Pattern[str], text: str, start: int, end: int) -> list[str]:
    words: list[str] = []
    pos = start
    for m in pattern.finditer(text, start, end):
        s, e = m.span()
        if s > pos:
            words.append(text[pos:s])
        if e > s:
            words.append(text[s:e])
        pos = e
    if pos < end:
        words.append(text[pos:end])
    return words


@cache
def _compile(patterns: tuple[str, ...]) -> tuple[regex.Pattern[str], ...]:
    out = []
    for p in patterns:
        if p == GPT2:
            # llama.cpp's hand-written GPT-2 splitter also takes a lone whitespace run
            p += r"|\s+"
        p = p.replace(r"\s", r"\p{White_Space}").replace(r"\S", r"\P{White_Space}")
        p = p.replace("+$", r"+\Z")  # ECMAScript $: end of the piece, not before a newline
        out.append(regex.compile(p))
    return tuple(out)


_NO_CLEAN = {"clean_spaces": False}
_LLAMA3_FLAGS = {"ignore_merges": True, "add_bos": True}
_TABLE: dict[tuple[str, ...], tuple[tuple[str, ...], dict[str, Any]]] = {
    # llama-bpe and its aliases add BOS and take whole-word vocab hits before merging
    ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"): (
        (LLAMA3,), _LLAMA3_FLAGS),
    ("dbrx", "smaug-bpe"): ((LLAMA3,), {}),
    ("deepseek-llm",): (DEEPSEEK_LLM, _NO_CLEAN),
    ("deepseek-coder",): (DEEPSEEK_CODER, _NO_CLEAN),
    ("deepseek-v3", "hunyuan-dense"): (DEEPSEEK3, _NO_CLEAN),
    ("falcon",): ((r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"), {}),
    ("starcoder", "refact", "codeshell", "exaone", "minerva-7b"): ((r"\p{N}", GPT2), {}),
    ("command-r", "smollm"): ((r"\p{N}", GPT2), _NO_CLEAN),
    ("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0",
     "mellum", "modern-bert", "mpt", "olmo", "jais", "exaone4"): ((GPT2,), {}),
    ("jina-v1-en", "jina-v2-code", "roberta-bpe"): ((GPT2,), {"add_sep": True}),
    ("trillion", "granite-docling"): ((GPT2,), _NO_CLEAN),
    ("qwen2", "deepseek-r1-qwen", "kormo", "hunyuan", "grok-2"): ((QWEN2,), _NO_CLEAN),
    ("stablelm2", "megrez"): ((QWEN2,), {}),
    ("chatglm-bpe", "glm4"): ((LLAMA3,), {"no_bos": True}),
    ("poro-chat",): ((BLOOM,), _NO_CLEAN),
    ("bloom", "gpt3-finnish"): ((BLOOM,), {}),
    ("viking",): ((BLOOM, r"\p{N}"), _NO_CLEAN),
    ("tekken",): ((TEKKEN,), {"clean_spaces": False, **_LLAMA3_FLAGS}),
    ("gpt-4o", "llama4"): ((GPT4O,), _NO_CLEAN),
    ("bailingmoe", "bailingmoe2", "llada-moe"): (
        (r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
         r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",), _NO_CLEAN),
    ("seed-coder",): (
        (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+",), _NO_CLEAN),
    ("default",): (DEFAULT, {}),
}  # fmt: skip
_BY_NAME = {name: (pats, flags) for names, (pats, flags) in _TABLE.items() for name in names}


def pre_tokenizer_for(name: str) -> PreTokenizer | None:
    """The pre-tokenizer llama.cpp uses for a `tokenizer.ggml.pre` value, or None if unknown."""
    entry = _BY_NAME.get(name)
    if entry is None:
        return None
    patterns, flags = entry
    return PreTokenizer(name, patterns, dict(flags))


def known_pre_tokenizers() -> list[str]:
    return sorted(_BY_NAME)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


BYTE_TO_UNICODE = _bytes_to_unicode()
UNICODE_TO_BYTE = {c: b for b, c in BYTE_TO_UNICODE.items()}
_BYTE_ENCODE = dict(BYTE_TO_UNICODE)  # a str.translate table over latin-1 decoded bytes


def byte_encode(word: str) -> str:
    """The GPT-2 byte-level form of a word: each UTF-8 byte as one printable character."""
    return word.encode("utf-8", "surrogatepass").decode("latin-1").translate(_BYTE_ENCODE)
