"""Cutting special tokens out of text before tokenizing (llama.cpp's tokenizer_st_partition).

llama.cpp takes the special tokens one by one, longest first, and splits every remaining raw
fragment at each of that token's occurrences, left to right. The order matters when two special
texts overlap, so we keep it; to stay fast on long texts we first find which special tokens occur
at all (one pass of the `regex` package over the text) and run the exact procedure on those only.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Sequence

import regex

from llmrt.tokenizer.vocab import Attr, Vocab

# A fragment is either a raw span (start, end) of the text or a token id.
Fragment = tuple[int, int] | int

_SPACE = frozenset(" \t\n\v\f\r")  # C isspace() in the "C" locale


class SpecialMatcher:
    """Finds and partitions the special tokens of one vocabulary (one per parse_special mode)."""

    def __init__(self, vocab: Vocab, parse_special: bool) -> None:
        skip = 0 if parse_special else Attr.CONTROL | Attr.UNKNOWN
        self.ids = [i for i in vocab.special_cache if not vocab.attrs[i] & skip]
        self.tokens = vocab.tokens
        self.attrs = vocab.attrs
        texts = [vocab.tokens[i] for i in self.ids]
        self.rank = {text: r for r, text in enumerate(texts)}
        # every special text that is a proper prefix of another, so that finding the longest
        # token at a position also tells us of the shorter ones starting there
        self.prefixes: dict[str, list[str]] = {}
        for text in texts:
            found = [text[:k] for k in range(1, len(text)) if text[:k] in self.rank]
            if found:
                self.prefixes[text] = found
        self._finder = regex.compile(r"\L<specials>", specials=texts) if texts else None

    def present(self, text: str) -> list[int]:
        """Ids of the special tokens that occur in text, in llama.cpp's processing order."""
        if self._finder is None:
            return []
        seen: set[str] = set()
        for found in set(self._finder.findall(text, overlapped=True)):
            seen.add(found)
            seen.update(self.prefixes.get(found, ()))
        ranks = sorted(self.rank[t] for t in seen)
        return [self.ids[r] for r in ranks]

    def partition(self, text: str) -> list[Fragment]:
        """Raw spans and special-token ids, in text order."""
        candidates = self.present(text)
        if not candidates:
            return [(0, len(text))] if text else []
        # claimed intervals, disjoint and sorted: (start, end, id) with id -1 for stripped space
        starts: list[int] = []
        claimed: list[tuple[int, int, int]] = []
        for tid in candidates:
            token = self.tokens[tid]
            attr = self.attrs[tid]
            size = len(token)
            resume = 0  # where the scan of the current fragment goes on after a match
            pos = text.find(token)
            while pos >= 0:
                end = pos + size
                k = bisect_left(starts, end)
                free = pos >= resume and (k == 0 or claimed[k - 1][1] <= pos)
                if not free:
                    pos = text.find(token, pos + 1)
                    continue
                left = claimed[k - 1][1] if k else 0
                right = starts[k] if k < len(starts) else len(text)
                left = max(left, resume)
                new = [(pos, end, tid)]
                if attr & Attr.LSTRIP:
                    s = pos
                    while s > left and text[s - 1] in _SPACE:
                        s -= 1
                    if s < pos:
                        new.append((s, pos, -1))
                resume = end
                if attr & Attr.RSTRIP:
                    while resume < right and text[resume] in _SPACE:
                        resume += 1
                    if resume > end:
                        new.append((end, resume, -1))
                for item in new:
                    insort(claimed, item)
                    insort(starts, item[0])
                pos = text.find(token, resume)
        out: list[Fragment] = []
        pos = 0
        for start, end, tid in claimed:
            if start > pos:
                out.append((pos, start))
            if tid >= 0:
                out.append(tid)
            pos = end
        if pos < len(text):
            out.append((pos, len(text)))
        return out


def fragments_text(text: str, fragments: Sequence[Fragment]) -> list[str | int]:
    """The fragments with their raw spans as strings (for debugging and tests)."""
    return [f if isinstance(f, int) else text[f[0] : f[1]] for f in fragments]
