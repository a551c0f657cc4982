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
# DeepSeek's cased-letter class, as codepoint ranges: written out as characters it would not
# survive Unicode normalization (U+1F7D, U+1FBE, U+2126, U+212A... have singleton decompositions).
_DEEPSEEK_RANGES = """
0041-005A 0061-007A 00B5 00C0-00D6 00D8-00F6 00F8-01BA 01BC-01BF 01C4-0293 0295-02AF
0370-0373 0376-0377 037B-037D 037F 0386 0388-038A 038C 038E-03A1 03A3-03F5 03F7-0481 048A-052F
0531-0556 10A0-10C5 13A0-13F5 13F8-13FD 1C90-1CBA 1CBD-1CBF 1D00-1D2B 1D6B-1D77 1D79-1D9A
1E00-1F15 1F18-1F1D 1F20-1F45 1F48-1F4D 1F50-1F57 1F59 1F5B 1F5D 1F5F-1F7D 1F80-1FB4 1FB6-1FBC
1FBE 1FC2-1FC4 1FC6-1FCC 1FD0-1FD3 1FD6-1FDB 1FE0-1FEC 1FF2-1FF4 1FF6-1FFC 2102 2107 210A-2113
2115 2119-211D 2124 2126 2128 212A-212D 212F-2134 2139 213C-213F 2145-2149 214E 2183-2184
2C00-2C7B 2C7E-2CE4 2CEB-2CEE 2CF2-2CF3 A640-A66D A680-A69B A722-A76F A771-A787 A78B-A78E
AB70-ABBF FB00-FB06 FB13-FB17 FF21-FF3A FF41-FF5A 10400-1044F 104B0-104D3 104D8-104FB
10C80-10CB2 10CC0-10CF2 118A0-118DF 1E900-1E943
"""


def _class(ranges: str) -> str:
    parts = []
    for item in ranges.split():
        lo, _, hi = item.partition("-")
        parts.append(chr(int(lo, 16)) + ("-" + chr(int(hi, 16)) if hi else ""))
    return "".join(parts)


_DEEPSEEK_LETTERS = _class(_DEEPSEEK_RANGES)
DEEPSEEK_LLM = (
    r"[\r\n]",
    r"\s?[" + _DEEPSEEK_LETTERS + "]+",
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
        # llama.cpp matches non-ASCII whitespace as a vertical tab: only \s can match it then
        shadow = _WIDE_SPACE.sub("\v", text) if _WIDE_SPACE.search(text) else text
        if len(compiled) == 1:
            return [text[s:e] for s, e in _spans(compiled[0], shadow, 0, len(text))]
        spans = [(0, len(text))]
        for pattern in compiled:
            new: list[tuple[int, int]] = []
            for start, end in spans:
                new.extend(_spans(pattern, shadow, start, end))
            spans = new
        return [text[s:e] for s, e in spans]


_WIDE_SPACE = regex.compile(r"[\p{White_Space}--[\x00-\x7f]]", regex.V1)


def _spans(pattern: regex.Pattern[str], text: str, start: int, end: int) -> list[tuple[int, int]]:
    """The matches of pattern in text[start:end] and the gaps between them, in order."""
    spans: list[tuple[int, int]] = []
    pos = start
    for m in pattern.finditer(text, start, end):
        s, e = m.span()
        if s > pos:
            spans.append((pos, s))
        if e > s:
            spans.append((s, e))
        pos = e
    if pos < end:
        spans.append((pos, end))
    return spans


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
