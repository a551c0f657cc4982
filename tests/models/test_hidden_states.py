"""Embeddings from the engine: the final hidden states (after the output norm, what the lm head
reads) and llama.cpp's pooling and normalization of them."""

from __future__ import annotations

import numpy as np
import pytest
from tiny import write_tiny_llama

from llmrt.engine import load, normalize_embedding
from llmrt.errors import UsageError
from llmrt.gguf.constants import GGMLType
from llmrt.gguf.quants import dequantize

PROMPT = [5, 17, 42, 99, 3, 250, 7, 61, 11]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = write_tiny_llama(tmp_path_factory.mktemp("tiny") / "f32.gguf", GGMLType.F32)
    return load(path, device="cpu")


def test_hidden_states_are_what_the_lm_head_reads(model):
    rows = model.context(n_ctx=64).embed(PROMPT, "none")
    logits = model.context(n_ctx=64).eval(PROMPT, all_logits=True)
    (head,) = [t for t in model.reader.tensors if t.name == "token_embd.weight"]  # tied
    w = dequantize(head.data, head.type, head.shape)
    assert rows.shape == (len(PROMPT), model.hp.n_embd)
    np.testing.assert_allclose(rows @ w.T, logits, rtol=1e-4, atol=1e-4)


def test_pooling_as_llama_cpp(model):
    ctx = model.context(n_ctx=64)
    rows = ctx.embed(PROMPT, "none")

    def unit(v):
        return v / np.linalg.norm(v)

    np.testing.assert_allclose(ctx.embed(PROMPT, "mean"), unit(rows.mean(0)), atol=1e-6)
    np.testing.assert_allclose(ctx.embed(PROMPT, "last"), unit(rows[-1]), atol=1e-6)
    np.testing.assert_allclose(ctx.embed(PROMPT, "cls"), unit(rows[0]), atol=1e-6)
    assert model.pooling is None  # the GGUF names none: mean
    np.testing.assert_allclose(ctx.embed(PROMPT), ctx.embed(PROMPT, "mean"), atol=1e-7)
    raw = ctx.embed(PROMPT, "mean", normalize=-1)
    np.testing.assert_allclose(raw, rows.mean(0), atol=1e-6)
    taxicab = ctx.embed(PROMPT, "mean", normalize=1)
    assert abs(np.abs(taxicab).sum() - 1) < 1e-5
    # the sequence holds the prompt afterwards, nothing more
    assert ctx.seq_len(0) == len(PROMPT) and ctx.n_free == 64 - len(PROMPT)


def test_a_prompt_read_in_ubatches_gives_the_same_embedding(model):
    whole = model.context(n_ctx=64).embed(PROMPT, "none")
    chunked = model.context(n_ctx=64, n_ubatch=4).embed(PROMPT, "none")
    np.testing.assert_allclose(chunked, whole, rtol=1e-4, atol=1e-5)
    assert model.embed(PROMPT, "last", n_ctx=64).shape == (model.hp.n_embd,)


def test_normalize_max_abs_is_int16_range():
    v = normalize_embedding(np.array([0.5, -2.0, 1.0], np.float32), 0)
    np.testing.assert_allclose(v, [8190.0, -32760.0, 16380.0])


def test_bad_pooling_and_too_long_prompts_are_one_line_errors(model):
    ctx = model.context(n_ctx=8)
    with pytest.raises(UsageError, match="pooling must be none, mean, cls or last"):
        ctx.embed(PROMPT[:3], "rank")
    with pytest.raises(Exception, match="more than the context holds"):
        ctx.embed(PROMPT, "mean")
