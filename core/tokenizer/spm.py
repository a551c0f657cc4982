"""SentencePiece-style BPE over scores (llama.cpp's llm_tokenizer_spm).

Start from single characters; repeatedly merge the adjacent pair whose concatenation is a vocab
token with the highest score (ties: the leftmost pair). Symbols left that are not tokens fall back
to byte tokens ``<0xXX>``.
"""

from __future__ import annotations

from llmrt.tokenizer.merge import merge_pairs


def spm_encode(
    text: str, token_to_id: dict[str, int], scores: list[float], byte_ids: list[int | None]
) -> list[int]:
    """Token ids for one fragment of text whose spaces are already escaped as U+2581."""
    get = token_to_id.get

    def priority(start: int, mid: int, end: int) -> float | None:
        tid = get(text[start:end])
        return None if tid is None else -scores[tid]  # the highest score merges first

    out: list[int] = []
    for piece in merge_pairs(text, priority):
        tid = get(piece)
        if tid is not None:
            out.append(tid)
        else:
            for b in piece.encode("utf-8"):
                bid = byte_ids[b]
                if bid is not None:
                    out.append(bid)
    return out
