"""The CUDA backend on a GPU: a tiny model against the CPU, CUDA graph replay, partial offload.

Skips where cupy or a CUDA device is missing (CI has no GPU); the shared conformance suite in
tests/conformance covers every op on cuda:0 as well.
"""

from __future__ import annotations

import numpy as np
import pytest

from llmrt.device import registry
from llmrt.engine import load

entry = registry().entry("cuda")
pytestmark = pytest.mark.skipif(
    entry is None or not entry.probe.available,
    reason=f"no CUDA device: {entry.probe.reason if entry else 'no cuda backend'}",
)

rng = np.random.default_rng(5)
PROMPT = rng.integers(0, 320, 40).tolist()


def close(a, b, tol=2e-3):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.sum((a - b) ** 2) / np.sum(b**2)) <= tol


def test_tiny_model_prefill_and_decode_match_the_cpu(tiny_gguf_with_vocab):
    cpu = load(tiny_gguf_with_vocab, device="cpu").context(n_ctx=256)
    gpu = load(tiny_gguf_with_vocab, device="cuda:0").context(n_ctx=256)
    assert close(gpu.eval(PROMPT, all_logits=True), cpu.eval(PROMPT, all_logits=True))
    for tok in PROMPT[:12]:  # decode steps: the first runs launch by launch, later ones replay
        assert close(gpu.eval([tok]), cpu.eval([tok]))


def test_prompt_products_on_int8_tensor_cores_match_the_cpu(tiny_gguf_with_vocab, monkeypatch):
    """gemmq (the legacy quants' prompt products on q8 activations, merged over one input) in a
    prompt past the integer mat-vec's reach, forced on where the GPU has int8 MMA, whatever the
    default path."""
    import cupy

    import llmrt_cuda.executable as executable
    import llmrt_cuda.lower as lw

    if int(cupy.cuda.Device().compute_capability) < 80:
        pytest.skip("no int8 mma.sync before sm_80")
    lower = executable.lower
    monkeypatch.setattr(executable, "lower", lambda graph, **_: lower(graph, int8_mma=True))
    prompt = rng.integers(0, 320, lw.MMVQ_MAX_T + 36).tolist()
    cpu = load(tiny_gguf_with_vocab, device="cpu").context(n_ctx=256)
    gpu = load(tiny_gguf_with_vocab, device="cuda:0").context(n_ctx=256)
    assert close(gpu.eval(prompt, all_logits=True), cpu.eval(prompt, all_logits=True))
    exe = next(v for k, v in gpu.graphs.items() if k[0] == len(prompt))
    prog = next(p for p in getattr(exe, "programs", [exe]) if hasattr(p, "plan"))
    assert "gemmq" in [s.op for s in prog.plan.steps]


def test_graph_replay_is_deterministic(tiny_gguf_with_vocab):
    model = load(tiny_gguf_with_vocab, device="cuda:0")
    runs = []
    for _ in range(3):
        ctx = model.context(n_ctx=64)
        ctx.eval(PROMPT[:5])
        runs.append([ctx.eval([t]) for t in PROMPT[5:9]])
    np.testing.assert_array_equal(runs[1], runs[0])
    np.testing.assert_array_equal(runs[2], runs[0])


@pytest.mark.parametrize("n_gpu_layers", [0, 1, 2, 99])
def test_partial_offload(tiny_gguf_with_vocab, n_gpu_layers):
    expected = load(tiny_gguf_with_vocab, device="cpu").context(n_ctx=64).eval(PROMPT[:9])
    model = load(tiny_gguf_with_vocab, device="cuda:0", n_gpu_layers=n_gpu_layers)
    assert close(model.context(n_ctx=64).eval(PROMPT[:9]), expected)


def test_dependent_launches_give_the_plain_launches_bits(tiny_gguf_with_vocab, monkeypatch):
    """Programmatic dependent launch only moves when blocks start; every logit stays the same."""

    def decode(pdl: str) -> tuple[np.ndarray, bool]:
        monkeypatch.setattr(llmrt_cuda.executable, "SAFE", pdl == "0")
        ctx = load(tiny_gguf_with_vocab, device="cuda:0").context(n_ctx=64)
        out = [ctx.eval(PROMPT[:7], all_logits=True)] + [ctx.eval([t]) for t in PROMPT[7:12]]
        exe = next(v for k, v in ctx.graphs.items() if k[0] == 1)
        prog = next(p for p in getattr(exe, "programs", [exe]) if hasattr(p, "pdl"))
        return np.concatenate([np.ravel(o) for o in out]), prog.pdl

    import cupy

    import llmrt_cuda.executable

    plain, used = decode("0")
    dependent, used_pdl = decode("1")
    assert not used
    if int(cupy.cuda.Device().compute_capability) >= 90:
        assert used_pdl  # Hopper: the dependent launches were really taken (graph replays them)
    np.testing.assert_array_equal(dependent, plain)
