"""The Tokenizer: text <-> token ids exactly as llama.cpp's llama_tokenize / llama_detokenize."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from llmrt.tokenizer.bpe import bpe_merge
from llmrt.tokenizer.pretokenize import UNICODE_TO_BYTE, byte_encode
from llmrt.tokenizer.specials import SpecialMatcher
from llmrt.tokenizer.spm import spm_encode
from llmrt.tokenizer.stream import IncrementalDecoder
from llmrt.tokenizer.vocab import Attr, Vocab, load_vocab

_SPECIAL_ATTRS = Attr.UNKNOWN | Attr.CONTROL
_CACHE_LIMIT = 1 << 16  # words (BPE) or fragments (SPM) remembered before the cache is reset


class Tokenizer:
    """A GGUF model's tokenizer: SPM ("llama") or byte-level BPE ("gpt2") with its pre-tokenizer.

    Build it with `from_gguf(path)` or `from_metadata(md)`; the ids it returns are llama.cpp's.
    """

    def __init__(self, vocab: Vocab, chat_template: str | None = None) -> None:
        self.vocab = vocab
        self.chat_template = chat_template
        self._matchers: dict[bool, SpecialMatcher] = {}
        self._cache: dict[str, list[int]] = {}
        self._pieces: list[bytes | None] = [None] * vocab.n_vocab
        self._byte_ids = [self._byte_token(b) for b in range(256)] if vocab.kind == "spm" else []

    @classmethod
    def from_metadata(cls, md: Mapping[str, Any]) -> Tokenizer:
        """Build from a GGUF metadata dict (string arrays as lists, numeric arrays as numpy)."""
        from llmrt.tokenizer.chat import default_template

        template = md.get("tokenizer.chat_template") or default_template(md)
        return cls(load_vocab(md), template)

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Read a GGUF file's tokenizer metadata (tensor data is not touched)."""
        from llmrt.gguf import GGUFReader

        return cls.from_metadata(GGUFReader(path).metadata)

    # ---- properties -------------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        return self.vocab.n_vocab

    @property
    def bos_id(self) -> int | None:
        return self.vocab.special["bos"]

    @property
    def eos_id(self) -> int | None:
        return self.vocab.special["eos"]

    @property
    def eot_id(self) -> int | None:
        return self.vocab.special["eot"]

    @property
    def eog_ids(self) -> frozenset[int]:
        """Every id that ends generation (llama_vocab_is_eog): eos, eot, eom and their kin."""
        return self.vocab.eog_ids

    @property
    def add_bos(self) -> bool:
        return self.vocab.add_bos

    @property
    def add_eos(self) -> bool:
        return self.vocab.add_eos

    def is_eog(self, token_id: int) -> bool:
        return token_id in self.vocab.eog_ids

    def is_control(self, token_id: int) -> bool:
        return bool(self.vocab.attrs[token_id] & Attr.CONTROL)

    def token_text(self, token_id: int) -> str:
        """The token's text as stored in the vocabulary (U+2581 / GPT-2 byte characters kept)."""
        return self.vocab.tokens[token_id]

    def token_to_id(self, text: str) -> int | None:
        """The id of the token whose vocabulary text is exactly text, or None."""
        return self.vocab.token_to_id.get(text)

    # ---- encoding ---------------------------------------------------------------------------

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of text: llama_tokenize(text, add_special, parse_special).

        add_special adds BOS/EOS only where the vocabulary asks for them (tokenizer.ggml.add_*);
        parse_special turns control tokens written in the text (e.g. "<|im_start|>") into their ids.
        User-defined tokens are always matched, as llama.cpp does.
        """
        v = self.vocab
        matcher = self._matchers.get(parse_special)
        if matcher is None:
            matcher = self._matchers[parse_special] = SpecialMatcher(v, parse_special)
        out: list[int] = []
        if add_special and v.add_bos:
            out.append(v.special["bos"])  # type: ignore[arg-type]
        prev_special = True  # SPM's leading-space rule: a space before text that starts a run
        for frag in matcher.partition(text):
            if isinstance(frag, int):
                out.append(frag)
                prev_special = True
                continue
            raw = text[frag[0] : frag[1]]
            if v.kind == "spm":
                if v.add_space_prefix and prev_special:
                    raw = " " + raw
                out.extend(self._encode_spm(raw.replace(" ", "▁")))
            else:
                if v.escape_whitespaces:
                    raw = raw.replace(" ", "▁")
                out.extend(self._encode_bpe(raw))
            prev_special = False
        if add_special and v.add_eos:
            out.append(v.special["eos"])  # type: ignore[arg-type]
        return out

    def _encode_spm(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = spm_encode(text, self.vocab.token_to_id, self.vocab.scores, self._byte_ids)
            self._remember(text, ids)
        return ids

    def _encode_bpe(self, text: str) -> list[int]:
        assert self.vocab.pre is not None
        cache = self._cache
        out: list[int] = []
        for word in self.vocab.pre.split(text):
            ids = cache.get(word)
            if ids is None:
                ids = self._bpe_word(word)
                self._remember(word, ids)
            out.extend(ids)
        return out

    def _bpe_word(self, word: str) -> list[int]:
        v = self.vocab
        get = v.token_to_id.get
        encoded = word if v.escape_whitespaces else byte_encode(word)
        if v.ignore_merges and encoded in v.token_to_id:
            return [v.token_to_id[encoded]]
        ids = []
        for piece in bpe_merge(encoded, v.merges):
            tid = get(piece)
            if tid is not None:
                ids.append(tid)
                continue
            for b in piece.encode("utf-8"):  # what llama.cpp does for a piece not in the vocab
                tid = get(chr(b)) if b < 0x80 else None
                if tid is not None:
                    ids.append(tid)
        return ids

    def _remember(self, key: str, ids: list[int]) -> None:
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = ids

    def _byte_token(self, b: int) -> int | None:
        t2i = self.vocab.token_to_id
        tid = t2i.get(f"<0x{b:02X}>")
        return tid if tid is not None else t2i.get(chr(b))

    # ---- decoding ---------------------------------------------------------------------------

    def token_to_piece(self, token_id: int, special: bool = True, lstrip: int = 0) -> bytes:
        """The bytes of one token: llama_token_to_piece(token, lstrip, special).

        With special=False, control and unknown tokens give b"". A piece may be part of a UTF-8
        character (byte tokens); join pieces before decoding, or use `decoder()`.
        """
        if not special and self.vocab.attrs[token_id] & _SPECIAL_ATTRS:
            return b""
        piece = self._pieces[token_id]
        if piece is None:
            piece = self._pieces[token_id] = self._make_piece(token_id)
        for _ in range(lstrip):
            if not piece.startswith(b" "):
                break
            piece = piece[1:]
        return piece

    def _make_piece(self, token_id: int) -> bytes:
        v = self.vocab
        text = v.tokens[token_id]
        attr = v.attrs[token_id]
        if attr & (_SPECIAL_ATTRS | Attr.USER_DEFINED):
            return text.encode("utf-8")
        if attr & Attr.NORMAL:
            if v.kind == "spm" or v.escape_whitespaces:
                return text.replace("▁", " ").encode("utf-8")
            out = bytearray()
            for ch in text:
                b = UNICODE_TO_BYTE.get(ch)
                if b is not None:
                    out.append(b)
                else:  # llama.cpp's marker for a character outside the byte alphabet
                    out += b"[UNK_BYTE_0x" + ch.encode().hex().encode() + text.encode() + b"]"
            return bytes(out)
        if attr & Attr.BYTE:
            return bytes([int(text[3:5], 16)])
        return b""  # unused and undefined tokens render as nothing

    def detokenize(
        self, ids: Sequence[int], remove_special: bool = False, unparse_special: bool = False
    ) -> bytes:
        """The bytes of a token sequence: llama_detokenize(ids, remove_special, unparse_special)."""
        v = self.vocab
        ids = list(ids)
        remove_space = v.add_space_prefix
        if remove_special and v.add_bos and ids and ids[0] == v.special["bos"]:
            remove_space = False
            ids = ids[1:]
        if remove_special and v.add_eos and ids and ids[-1] == v.special["eos"]:
            ids = ids[:-1]
        parts = []
        for tid in ids:
            parts.append(self.token_to_piece(tid, unparse_special, int(remove_space)))
            remove_space = False
        data = b"".join(parts)
        return _clean_spaces(data) if v.clean_spaces else data

    def decode(
        self, ids: Iterable[int], remove_special: bool = False, unparse_special: bool = False
    ) -> str:
        """Text of a token sequence. By default control tokens render as nothing; pass
        unparse_special=True to show them (llama.cpp's unparse_special). Bytes that do not form
        valid UTF-8 become U+FFFD."""
        return self.detokenize(list(ids), remove_special, unparse_special).decode(
            "utf-8", errors="replace"
        )

    def decoder(self, special: bool = False) -> IncrementalDecoder:
        """A streaming decoder: feed ids one at a time, get text that never splits a character."""
        return IncrementalDecoder(self, special)

    # ---- chat -------------------------------------------------------------------------------

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        template: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Render messages with the model's chat template, as transformers' apply_chat_template
        does (tokenize=False). Tokenize the result with parse_special=True and add_special=False
        when the template writes the BOS itself."""
        from llmrt.tokenizer.chat import render_chat_template

        def text_of(token_id: int | None) -> str | None:
            return None if token_id is None else self.vocab.tokens[token_id]

        specials = {
            "bos_token": text_of(self.bos_id),
            "eos_token": text_of(self.eos_id),
            "unk_token": text_of(self.vocab.special["unk"]),
            "pad_token": text_of(self.vocab.special["pad"]),
        }
        specials = {k: v for k, v in specials.items() if v is not None}
        return render_chat_template(
            template or self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            **{**specials, **kwargs},
        )


def _clean_spaces(data: bytes) -> bytes:
    """llama.cpp's clean_up_tokenization_spaces, ported pass for pass (it edits in place)."""
    text = bytearray(data)
    total = len(text)
    # " ?", " !", " .", " ," lose their space
    n = total
    total = 1 if total else 0
    for i in range(1, n):
        x = text[i]
        if text[i - 1] == 0x20 and x in b"?!.,":
            total -= 1
        text[total] = x
        total += 1
    # " ' " becomes "'"
    n = total
    total = 1 if total else 0
    i = 1
    while i < n:
        x = text[i]
        if x == 0x27 and i + 1 < n and text[i - 1] == 0x20 and text[i + 1] == 0x20:
            total -= 1
            i += 1
            text[i] = 0
        text[total] = x
        total += 1
        i += 1
    # " 's", " 'm", " 're", " 've" lose their space
    n = total
    total = 1 if total else 0
    for i in range(1, n):
        x = text[i]
        if text[i - 1] == 0x20 and x == 0x27 and i + 1 < n:
            x1 = text[i + 1]
            if x1 in b"sm" or (i + 2 < n and bytes(text[i + 1 : i + 3]) in (b"re", b"ve")):
                total -= 1
        text[total] = x
        total += 1
    return bytes(text[:total])
