"""The Vulkan backend beyond the shared conformance suite: a small model end to end against the
CPU reference, compiled graphs replayed with new inputs, state written from the host, and weights
larger than one storage-buffer binding may address."""

from __future__ import annotations

import numpy as np
import pytest

from llmrt.device import registry
from llmrt.gguf import GGMLType, quantize
from llmrt.ir import Graph
from llmrt.testing.conformance import WeightData, nmse


@pytest.fixture(scope="module")
def vulkan():
    entry = registry().entry("vulkan")
    if entry is None or not entry.probe.available or not entry.devices:
        pytest.skip("no Vulkan device")
    return entry.devices[0]


def test_replay_with_new_inputs(vulkan):
    g = Graph("replay")
    x = g.input("x", (3, 40))
    g.output("out", g.argmax(g.soft_max(g.scale(x, 2.0))))
    program = vulkan.compile(g, {})
    rng = np.random.default_rng(1)
    for _ in range(3):
        data = rng.normal(size=(3, 40)).astype(np.float32)
        assert np.array_equal(program.run({"x": data})["out"], np.argmax(data, axis=-1))


def test_weight_split_across_bindings(vulkan, monkeypatch):
    """A weight bigger than maxStorageBufferRange is read through several bindings by rows."""
    rt = vulkan.runtime
    m, k = 1024, 64
    monkeypatch.setattr(rt, "max_range", 300 * 68)  # 256 rows of Q8_0 (68 bytes) per binding
    data = np.random.default_rng(2).uniform(-1, 1, (m, k)).astype(np.float32)
    raw = quantize(data, GGMLType.Q8_0).reshape(m, -1)
    w = vulkan.upload(WeightData("w", GGMLType.Q8_0, (m, k), raw))
    g = Graph("split")
    g.output("out", g.mul_mat(g.weight("w", (m, k), GGMLType.Q8_0), g.input("x", (2, k))))
    x = np.random.default_rng(3).uniform(-1, 1, (2, k)).astype(np.float32)
    got = vulkan.compile(g, {"w": w}).run({"x": x})["out"]
    assert nmse(x @ data.T, got) < 1e-3


def test_tiny_model_matches_cpu(vulkan, tiny_gguf_with_vocab):
    from llmrt.engine import load

    cpu, gpu = load(tiny_gguf_with_vocab, device="cpu"), load(tiny_gguf_with_vocab, device=vulkan)
    prompt = [1, 5, 9, 3, 7, 2]
    want = cpu.context(n_ctx=64).eval(prompt, all_logits=True)
    ctx = gpu.context(n_ctx=64)
    got = ctx.eval(prompt, all_logits=True)
    assert nmse(want, got) < 1e-3
    # decode steps replay one compiled graph
    a = cpu.context(n_ctx=64)
    a.eval(prompt)
    for token in (4, 8, 6):
        assert nmse(a.eval([token]), ctx.eval([token])) < 1e-3
