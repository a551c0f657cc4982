"""The engine on a tiny random model: batching, the KV cache, several sequences, partial offload."""

from __future__ import annotations

import numpy as np
import pytest

from llmrt.device import registry
from llmrt.engine import Batch, ContextFull, load
from llmrt.errors import LlmrtError
from llmrt_cpu.backend import CPUBackend, CPUDevice

rng = np.random.default_rng(3)
PROMPT = rng.integers(0, 320, 37).tolist()


def test_prefill_in_ubatches_equals_one_batch_and_token_by_token(tiny_llama):
    model = load(tiny_llama, device="cpu")
    whole = model.context(n_ctx=256).eval(PROMPT, all_logits=True)
    chunked = model.context(n_ctx=256, n_ubatch=8).eval(PROMPT, all_logits=True)
    ctx = model.context(n_ctx=256)
    stepwise = np.stack([ctx.eval([t]) for t in PROMPT])
    np.testing.assert_allclose(chunked, whole, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(stepwise, whole, rtol=1e-4, atol=1e-4)


def test_sequences_in_one_batch_do_not_see_each_other(tiny_llama):
    model = load(tiny_llama, device="cpu")
    a, b = PROMPT[:20], PROMPT[20:]
    alone_a = model.context(n_ctx=128).eval(a)
    alone_b = model.context(n_ctx=128).eval(b)
    ctx = model.context(n_ctx=128)
    batch = Batch(
        np.array(a + b, np.int32),
        np.array(list(range(len(a))) + list(range(len(b))), np.int32),
        np.array([0] * len(a) + [1] * len(b), np.int32),
        np.array([i in (len(a) - 1, len(a) + len(b) - 1) for i in range(len(a) + len(b))]),
    )
    both = ctx.decode(batch)
    np.testing.assert_allclose(both[0], alone_a, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(both[1], alone_b, rtol=1e-4, atol=1e-4)
    # removing one sequence frees its cells and leaves the other intact
    ctx.remove(0)
    assert ctx.seq_len(0) == 0 and ctx.seq_len(1) == len(b)
    np.testing.assert_allclose(
        ctx.eval([5], seq=1), model.context(n_ctx=128).eval(b + [5]), rtol=1e-4, atol=1e-4
    )


def test_full_context_is_a_clear_error(tiny_llama):
    ctx = load(tiny_llama, device="cpu").context(n_ctx=16)
    with pytest.raises(ContextFull, match="context is full"):
        ctx.eval(PROMPT)


def test_f32_cache_is_close_to_f16(tiny_llama):
    model = load(tiny_llama, device="cpu")
    f16 = model.context(n_ctx=64).eval(PROMPT[:10])
    f32 = model.context(n_ctx=64, kv_type="f32").eval(PROMPT[:10])
    np.testing.assert_allclose(f16, f32, atol=5e-2)  # f16 rounds q, k, v and probabilities
    assert not np.array_equal(f16, f32)


class OtherCPU(CPUDevice):
    """A second device that runs the reference kernels but declines rope: stands in for an
    accelerator in placement tests, with results that must equal the host's exactly."""

    def supports_op(self, node):
        return node.op.value != "rope" and super().supports_op(node)


@pytest.mark.parametrize("n_gpu_layers", [0, 1, 2, -1])
def test_partial_offload_splits_and_gives_the_same_logits(tiny_llama, n_gpu_layers):
    other = OtherCPU(CPUBackend(), 7)
    model = load(tiny_llama, device=other, n_gpu_layers=n_gpu_layers)
    expected = load(tiny_llama, device="cpu").context(n_ctx=64).eval(PROMPT[:9])
    ctx = model.context(n_ctx=64)
    np.testing.assert_array_equal(ctx.eval(PROMPT[:9]), expected)
    on_other = [k for k, devs in model.leaf_devices.items() if other in devs]
    layers_on_other = {int(k.split(".")[1]) for k in on_other if k.startswith("blk.")}
    if n_gpu_layers == 0:
        assert on_other == [] and not model.split
    else:
        n = 3 if n_gpu_layers < 0 else n_gpu_layers
        assert layers_on_other == set(range(3 - n, 3))
        assert ("output_norm.weight" in on_other) == (n_gpu_layers < 0)
        # the embedding lookup runs where the first layer does: all on one device when all are
        assert ("token_embd.weight" in on_other) == (n_gpu_layers < 0)
        # the cache of offloaded layers lives there too
        assert set(ctx.state[other]) == {f"cache_{k}.{il}" for il in range(3 - n, 3) for k in "kv"}
    assert registry().host().id == "cpu:0"


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(LlmrtError, match="model file not found"):
        load(tmp_path / "nope.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(LlmrtError, match="bad GGUF file"):
        load(bad)


class NoLookupCPU(CPUDevice):
    """An accelerator stand-in that declines the embedding lookup (as Vulkan does for a table
    larger than one storage-buffer binding)."""

    def supports_op(self, node):
        return node.op.value != "get_rows" and super().supports_op(node)


def test_a_declined_lookup_binds_its_table_on_the_host(tiny_llama):
    other = NoLookupCPU(CPUBackend(), 8)
    model = load(tiny_llama, device=other, n_gpu_layers=-1)
    expected = load(tiny_llama, device="cpu").context(n_ctx=64).eval(PROMPT[:9])
    np.testing.assert_array_equal(model.context(n_ctx=64).eval(PROMPT[:9]), expected)
    host = registry().host()
    # the lookup's table on the host, the tied output head's copy on the device
    assert model.leaf_devices["token_embd.weight"] == {host, other}
    assert model.split
