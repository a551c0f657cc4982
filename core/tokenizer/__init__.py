"""Tokenizers read from GGUF metadata, identical to llama.cpp's: SPM and byte-level BPE, special
tokens, streaming detokenization, and chat templates rendered like transformers'."""

from llmrt.tokenizer.chat import ChatTemplateError, render_chat_template
from llmrt.tokenizer.stream import IncrementalDecoder
from llmrt.tokenizer.tokenizer import Tokenizer
from llmrt.tokenizer.vocab import Attr, TokenizerError

__all__ = [
    "Attr",
    "ChatTemplateError",
    "IncrementalDecoder",
    "Tokenizer",
    "TokenizerError",
    "render_chat_template",
]
