"""The pair-merging loop that BPE and SentencePiece share (llama.cpp's llm_tokenizer_bpe/spm).

Symbols start as single characters; the adjacent pair with the best priority (lowest value; the
leftmost among equals) merges, and the pairs it forms with its neighbours are queued, until no pair
has a priority. A heap with lazy deletion keeps this O(n log n).
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heapify, heappop, heappush

# priority(start, mid, end) for merging text[start:mid] with text[mid:end]; None: cannot merge
Priority = Callable[[int, int, int], float | None]


def merge_pairs(text: str, priority: Priority) -> list[str]:
    """The pieces of `text` left when no adjacent pair can merge any more."""
    n = len(text)
    if n <= 1:
        return [text] if n else []
    # symbol i covers text[i : i + length[i]]; merges only ever grow a symbol to the right
    length = [1] * n
    prev = list(range(-1, n - 1))
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    heap = []
    for i in range(n - 1):
        p = priority(i, i + 1, i + 2)
        if p is not None:
            heap.append((p, i, i + 1, 2))
    heapify(heap)
    while heap:
        _, left, right, size = heappop(heap)
        ln = length[left]
        rn = length[right]
        if ln == 0 or rn == 0 or ln + rn != size:
            continue  # stale: one side has been merged since this pair was queued
        length[left] = size
        length[right] = 0
        after = nxt[right]
        nxt[left] = after
        if after >= 0:
            prev[after] = left
        before = prev[left]
        if before >= 0:
            p = priority(before, left, left + size)
            if p is not None:
                heappush(heap, (p, before, left, left + size - before))
        if after >= 0:
            end = after + length[after]
            p = priority(left, after, end)
            if p is not None:
                heappush(heap, (p, left, after, end - left))
    pieces = []
    i = 0
    while i != -1:
        pieces.append(text[i : i + length[i]])
        i = nxt[i]
    return pieces
