"""The OpenCL backend (PoCL here and in CI) beyond the shared conformance suite: a small model
end to end against the CPU backend, compiled graphs replayed with new inputs, partial offload,
and the device chosen by `auto` only because it computes."""

from __future__ import annotations

import numpy as np
import pytest

from llmrt.device import registry
from llmrt.engine import load
from llmrt.ir import Graph
from llmrt.testing.conformance import nmse

rng = np.random.default_rng(11)
PROMPT = rng.integers(0, 320, 24).tolist()


@pytest.fixture(scope="module")
def opencl():
    entry = registry().entry("opencl")
    if entry is None or not entry.probe.available or not entry.devices:
        pytest.skip("no OpenCL device")
    return entry.devices[0]


def test_the_device_computes(opencl):
    assert opencl.smoke == ""


def test_replay_with_new_inputs(opencl):
    g = Graph("replay")
    x = g.input("x", (3, 40))
    g.output("out", g.argmax(g.soft_max(g.scale(x, 2.0))))
    program = opencl.compile(g, {})
    for seed in range(3):
        data = np.random.default_rng(seed).normal(size=(3, 40)).astype(np.float32)
        assert np.array_equal(program.run({"x": data})["out"], np.argmax(data, axis=-1))


@pytest.mark.parametrize("n_gpu_layers", [-1, 1])
def test_tiny_model_matches_the_cpu(opencl, tiny_gguf_with_vocab, n_gpu_layers):
    cpu = load(tiny_gguf_with_vocab, device="cpu")
    dev = load(tiny_gguf_with_vocab, device=opencl, n_gpu_layers=n_gpu_layers)
    want = cpu.context(n_ctx=64).eval(PROMPT, all_logits=True)
    ctx = dev.context(n_ctx=64)
    got = ctx.eval(PROMPT, all_logits=True)
    # products round their activations to q8 as ggml does, so the last bits of a summation order
    # move some roundings: the same bound as the CUDA and Vulkan backends' tests
    assert nmse(want, got) < 1e-3
    # decode steps replay one compiled graph, with the cache written by the steps before
    ref = cpu.context(n_ctx=64)
    ref.eval(PROMPT)
    for token in (4, 8, 6, 15):
        want, got = ref.eval([token]), ctx.eval([token])
        assert nmse(want, got) < 1e-3
