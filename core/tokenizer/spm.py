"""SentencePiece-style BPE over scores (llama.cpp's llm_tokenizer_spm).

Start from single characters; repeatedly merge the adjacent pair whose concatenation is a vocab
token with the highest score (ties: the leftmost pair). Symbols left that are not tokens fall back
to byte tokens ``<0xXX>``.
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush


def spm_encode(
    text: str, token_to_id: dict[str, int], scores: list[float], byte_ids: list[int | None]
) -> list[int]:
    """Token ids for one fragment of text whose spaces are already escaped as U+2581."""
    n = len(text)
    if n == 0:
        return []
    get = token_to_id.get
    # symbol i covers text[i : i + length[i]]; merges only ever grow a symbol to the right
    length = [1] * n
    prev = list(range(-1, n - 1))
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    heap = []
    for i in range(n - 1):
        tid = get(text[i : i + 2])
        if tid is not None:
            heap.append((-scores[tid], i, i + 1, 2))
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
            tid = get(text[before : left + size])
            if tid is not None:
                heappush(heap, (-scores[tid], before, left, left + size - before))
        if after >= 0:
            end = after + length[after]
            tid = get(text[left:end])
            if tid is not None:
                heappush(heap, (-scores[tid], left, after, end - left))
    out: list[int] = []
    i = 0
    while i != -1:
        piece = text[i : i + length[i]]
        tid = get(piece)
        if tid is not None:
            out.append(tid)
        else:
            for b in piece.encode("utf-8"):
                bid = byte_ids[b]
                if bid is not None:
                    out.append(bid)
        i = nxt[i]
    return out
