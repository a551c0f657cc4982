"""The tiny random llama writer now ships in llmrt.testing (a third party's backend tests use it);
kept importable here for the tests that import it as `tiny`."""

from llmrt.testing.tiny import N_EMBD, N_FF, N_HEAD, N_HEAD_KV, N_LAYER, N_VOCAB, write_tiny_llama

__all__ = ["N_EMBD", "N_FF", "N_HEAD", "N_HEAD_KV", "N_LAYER", "N_VOCAB", "write_tiny_llama"]
