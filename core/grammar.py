"""Constrained decoding: GBNF grammars, JSON schemas and regexes enforced while sampling, with
llguidance (the constrained-decoding library llama.cpp itself can build with).

    grammar = compile_grammar(tokenizer, gbnf="root ::= [0-9]+")   # or json_schema=..., regex=...
    constraint = Constraint(grammar_tokenizer(tokenizer, n_vocab), grammar)
    sampler = Sampler(params, n_vocab, constraint=constraint)

`compile_grammar` raises GrammarError (a UsageError) for a grammar or schema llguidance rejects,
so a server answers 400 before generating anything. A Constraint fails closed: at every step only
the tokens the grammar allows can be drawn, the end of generation only where the grammar may end,
and once the grammar is complete nothing but an end-of-generation token is left.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np

from llmrt.errors import UsageError


class GrammarError(UsageError):
    """A grammar, JSON schema or regex that cannot constrain generation."""


def _llguidance() -> Any:
    try:
        import llguidance
    except ModuleNotFoundError:
        raise GrammarError("constrained output needs llguidance: pip install llguidance") from None
    return llguidance


class _VocabWrapper:
    """What llguidance's LLTokenizer reads from a tokenizer: every token's bytes (control tokens
    marked by a leading 0xff byte, so grammars never produce them as text), the end token, and a
    tokenize function."""

    def __init__(self, tokenizer: Any, n_vocab: int) -> None:
        tokens = []
        specials = []
        for t in range(tokenizer.n_vocab):
            piece = tokenizer.token_to_piece(t, special=True)
            if tokenizer.is_control(t):
                piece = b"\xff" + piece
                specials.append(t)
            tokens.append(piece)
        tokens += [b""] * (n_vocab - len(tokens))  # padding rows of the output matrix
        self.tokens = tokens
        self.special_token_ids = specials
        self.eos_token_id = tokenizer.eos_id if tokenizer.eos_id is not None else 0
        self.bos_token_id = tokenizer.bos_id
        self.is_tokenizer_wrapper = True
        self._tokenizer = tokenizer

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._tokenizer.encode(text, add_special=False, parse_special=False)


_cache: dict[tuple[int, int], Any] = {}
_cache_lock = threading.Lock()


def grammar_tokenizer(tokenizer: Any, n_vocab: int | None = None) -> Any:
    """llguidance's view of a tokenizer (built once per tokenizer: ~1 s for 50k tokens). The
    end-of-generation tokens all end a grammar."""
    n_vocab = n_vocab or tokenizer.n_vocab
    key = (id(tokenizer), n_vocab)
    with _cache_lock:
        if key not in _cache:
            ll = _llguidance()
            eos = sorted(tokenizer.eog_ids) or [tokenizer.eos_id or 0]
            wrapper = _VocabWrapper(tokenizer, n_vocab)
            _cache[key] = ll.LLTokenizer(ll.TokenizerWrapper(wrapper), n_vocab=n_vocab,
                                         eos_token=eos)  # fmt: skip
        return _cache[key]


def compile_grammar(
    lltokenizer: Any,
    *,
    gbnf: str | None = None,
    json_schema: Any = None,
    regex: str | None = None,
    lark: str | None = None,
) -> str:
    """An llguidance grammar from exactly one of a GBNF grammar, a JSON schema (a dict or its
    JSON text; `{}` means any object, as in llama-server), a regex or a Lark grammar
    (llguidance's, with `%json {...}` for embedded schemas), checked against the tokenizer.
    Raises GrammarError with llguidance's reason."""
    ll = _llguidance()
    given = [x is not None for x in (gbnf, json_schema, regex, lark)]
    if sum(given) != 1:
        raise GrammarError("give one of a grammar, a JSON schema, a regex or a Lark grammar")
    try:
        if gbnf is not None:
            grammar = ll.grammar_from("gbnf", gbnf)
        elif regex is not None:
            grammar = ll.LLMatcher.grammar_from_regex(regex)
        elif lark is not None:
            grammar = ll.LLMatcher.grammar_from_lark(lark)
        else:
            schema = json.loads(json_schema) if isinstance(json_schema, str) else json_schema
            if not isinstance(schema, dict | bool):
                raise GrammarError(f"a JSON schema is an object, got {type(schema).__name__}")
            if schema == {}:
                schema = {"type": "object"}
            grammar = ll.LLMatcher.grammar_from_json_schema(schema)
    except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        raise GrammarError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    is_error, messages = ll.LLMatcher.validate_grammar_with_warnings(grammar, lltokenizer)
    if is_error:
        raise GrammarError(messages[0].splitlines()[0] if messages else "invalid grammar")
    return grammar


class Constraint:
    """One sequence's grammar state: the mask of the tokens it allows next, and the tokens it
    has taken."""

    def __init__(self, lltokenizer: Any, grammar: str) -> None:
        ll = _llguidance()
        self.n_vocab = lltokenizer.vocab_size
        self.eog = np.asarray(lltokenizer.eos_tokens, dtype=np.int64)
        self._matcher = ll.LLMatcher(lltokenizer, grammar, log_level=0)
        self._check()

    def _check(self) -> None:
        if self._matcher.is_error():
            raise GrammarError(f"grammar: {self._matcher.get_error()}")

    @property
    def done(self) -> bool:
        """The grammar is complete: only an end-of-generation token may follow."""
        return self._matcher.is_stopped()

    def allowed(self) -> np.ndarray:
        """A bool mask over the vocabulary of the tokens the grammar allows next."""
        words = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        self._check()
        return np.unpackbits(words, bitorder="little")[: self.n_vocab].astype(bool)

    def accept(self, token: int) -> None:
        """Record a drawn token; one the grammar does not allow is an error (never drawn)."""
        if not self._matcher.consume_token(int(token)):
            raise GrammarError(f"grammar: token {token} is not allowed here")

    def reset(self) -> None:
        self._matcher.reset()
