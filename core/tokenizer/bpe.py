"""Byte-pair merging by rank within one pre-tokenized word (llama.cpp's llm_tokenizer_bpe).

The lowest-ranked adjacent pair is merged first, the leftmost among equal pairs, until no pair has
a rank. Results are cached per word: running text repeats its words, so most never reach here.
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush


def bpe_merge(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Split an encoded word into the pieces that BPE merging leaves."""
    n = len(word)
    if n <= 1:
        return [word] if n else []
    get = ranks.get
    length = [1] * n
    prev = list(range(-1, n - 1))
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    heap = []
    for i in range(n - 1):
        rank = get((word[i], word[i + 1]))
        if rank is not None:
            heap.append((rank, i, i + 1, 2))
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
            rank = get((word[before:left], word[left : left + size]))
            if rank is not None:
                heappush(heap, (rank, before, left, left + size - before))
        if after >= 0:
            end = after + length[after]
            rank = get((word[left : left + size], word[after:end]))
            if rank is not None:
                heappush(heap, (rank, left, after, end - left))
    pieces = []
    i = 0
    while i != -1:
        pieces.append(word[i : i + length[i]])
        i = nxt[i]
    return pieces
