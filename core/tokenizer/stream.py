"""Streaming detokenization: text out as tokens come in, never half a UTF-8 character."""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmrt.tokenizer.tokenizer import Tokenizer


class IncrementalDecoder:
    """Feed token ids one by one; each call returns the text that is complete so far.

    Byte tokens and byte-level BPE pieces can split a character across tokens: the bytes of an
    unfinished character are held back until it completes. Bytes that can never form a character
    come out as U+FFFD, as in `Tokenizer.decode`. Pieces are joined as llama.cpp's streaming
    does (token_to_piece per token), so no leading-space strip or space clean-up is applied.
    """

    def __init__(self, tokenizer: Tokenizer, special: bool = False) -> None:
        self._tokenizer = tokenizer
        self._special = special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_id: int) -> str:
        """Text completed by this token (possibly empty)."""
        return self._utf8.decode(self._tokenizer.token_to_piece(token_id, self._special))

    def flush(self) -> str:
        """The held-back bytes of an unfinished character, as U+FFFD (call at end of stream)."""
        return self._utf8.decode(b"", final=True)

    def reset(self) -> None:
        self._utf8.reset()
