"""A sequence's KV cache saved to a file and restored into another sequence (llama.cpp's
llama_state_seq_save_file / load_file): generation continues exactly as before."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from tiny import write_tiny_llama

from llmrt.engine import load
from llmrt.errors import LlmrtError

PROMPT = [5, 17, 42, 99, 3, 250, 7, 61, 11, 8, 200]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load(write_tiny_llama(tmp_path_factory.mktemp("tiny") / "t.gguf"), device="cpu")


def test_restored_sequence_continues_as_the_saved_one(model, tmp_path):
    ctx = model.context(n_ctx=64)
    ctx.eval([1, 2, 3], seq=1)  # another sequence's cells first: the restore lands elsewhere
    ctx.eval(PROMPT[:-1], seq=0)
    path = tmp_path / "seq.bin"
    n = ctx.save_seq_file(path, 0, PROMPT[:-1])
    assert n == path.stat().st_size
    magic, version, n_tokens = struct.unpack_from("<III", path.read_bytes())
    assert (magic, version, n_tokens) == (0x67677371, 3, len(PROMPT) - 1)  # llama.cpp's header
    want = ctx.eval(PROMPT[-1:], seq=0)

    other = model.context(n_ctx=64)
    other.eval([9, 9, 9, 9], seq=2)
    tokens, n_read = other.load_seq_file(path, 2)
    assert tokens == PROMPT[:-1] and n_read == n
    assert other.seq_len(2) == len(PROMPT) - 1
    got = other.eval(PROMPT[-1:], seq=2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    fresh = model.context(n_ctx=64).eval(PROMPT)
    np.testing.assert_allclose(got, fresh, rtol=1e-4, atol=1e-4)


def test_a_foreign_or_broken_file_is_one_clear_error(model, tmp_path):
    ctx = model.context(n_ctx=64)
    ctx.eval(PROMPT, seq=0)
    path = tmp_path / "seq.bin"
    ctx.save_seq_file(path, 0, PROMPT)
    data = path.read_bytes()
    for broken in (b"", data[:11], b"xxxx" + data[4:], data[:-3], data + b"\0"):
        path.write_bytes(broken)
        with pytest.raises(LlmrtError, match="not a slot state of this model"):
            model.context(n_ctx=64).load_seq_file(path, 0)
    path.write_bytes(data)
    with pytest.raises(LlmrtError, match="cells"):
        model.context(n_ctx=8).load_seq_file(path, 0)
