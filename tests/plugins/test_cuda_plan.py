"""The CUDA backend's lowering and buffer plan (pure Python: runs without a GPU), and the free
device memory check before loading (with a stand-in GPU device)."""

from __future__ import annotations

import numpy as np
import pytest
from plan_shapes import file_graph

from llmrt.device import DeviceInfo, DeviceType
from llmrt.engine import load
from llmrt.errors import OutOfDeviceMemory
from llmrt.gguf import GGUFReader
from llmrt.lower import plan_arena
from llmrt_cpu.backend import CPUBackend, CPUDevice
from llmrt_cuda.lower import lower, supports


def _live(s):
    return s.first, max(s.last, s.first)


@pytest.mark.parametrize("n_tokens", [1, 3, 40, 100])
def test_plan_supports_every_node_and_never_overlaps_live_buffers(tiny_gguf_with_vocab, n_tokens):
    graph = file_graph(tiny_gguf_with_vocab, n_tokens)
    assert all(supports(node) for node in graph.nodes)
    plan = lower(graph)
    size = plan_arena(plan.storages)
    arena = [s for s in plan.storages if s.kind == "arena" and s.first >= 0]
    assert size >= max(s.nbytes for s in arena)
    for i, a in enumerate(arena):
        assert a.offset % 256 == 0 and a.offset + a.nbytes <= size
        for b in arena[i + 1 :]:
            (a0, a1), (b0, b1) = _live(a), _live(b)
            if a0 <= b1 and b0 <= a1:
                assert a.offset + a.nbytes <= b.offset or b.offset + b.nbytes <= a.offset
    # every buffer a step touches through its parameters (q8 forms of activations) is placed
    # and live across that step
    for i, step in enumerate(plan.steps):
        if "q8" in step.params:
            st = step.params["q8"]
            assert st.first >= 0 and st.first <= i <= max(st.last, st.first), step.op
    # a step never writes a buffer it reads
    for step in plan.steps:
        if step.out is not None and any(step.out.storage is v.storage for v in step.ins):
            raise AssertionError(f"{step.op} reads and writes one buffer")
    # liveness reuse: the arena is much smaller than the sum of all activation buffers
    assert size < sum(s.nbytes for s in arena)


def test_decode_fuses_norms_and_residual_adds(tiny_gguf_with_vocab):
    plan = lower(file_graph(tiny_gguf_with_vocab, 1))
    ops = [s.op for s in plan.steps]
    assert "binary" not in ops  # every residual add rides on a mat-vec epilogue
    n_layers = ops.count("fattn")
    # rms_norm x weight fused (and, before integer mat-vecs, quantizing their output)
    assert ops.count("norm") + ops.count("norm_q8") == 2 * n_layers + 1
    assert all(len(s.ins) == 2 for s in plan.steps if s.op in ("norm", "norm_q8"))
    residual = [s for s in plan.steps if (s.op == "mmv" and len(s.ins) == 3)
                or (s.op == "mmvq" and len(s.ins) == 2 and "glu" not in s.params
                    and "outs" not in s.params)]  # fmt: skip
    assert len(residual) == 2 * n_layers


def test_decode_fusions_for_integer_mat_vecs(tiny_gguf_with_vocab):
    """Legacy-quant mat-vecs: q/k/v in one launch, gate/up/glu in one, rope + KV writes in one."""
    import llmrt_cuda.lower as lw
    from llmrt.gguf.constants import GGMLType

    graph = file_graph(tiny_gguf_with_vocab, 1)
    types = {n.dtype for n in graph.nodes if n.op.name == "WEIGHT"}
    if not types & lw.Q8_TYPES:
        pytest.skip(f"fixture weights are {types}")
    plan = lower(graph)
    ops = [s.op for s in plan.steps]
    n_layers = ops.count("fattn")
    assert "rope" not in ops and "set_rows" not in ops
    # rope + KV writes: inside the attention kernel for one token (else one rope_qkv launch)
    attn = [s for s in plan.steps if s.op == "fattn"]
    assert "rope_qkv" not in ops and all("nr" in s.params for s in attn)
    glu = [s for s in plan.steps if s.op == "mmvq" and "glu" in s.params]
    multi = [s for s in plan.steps if s.op == "mmvq" and len(s.params.get("outs", ())) == 3]
    assert len(glu) == n_layers and "glu" not in ops
    assert len(multi) == n_layers
    assert all(s.params["type"] in lw.Q8_TYPES for s in plan.steps if s.op == "mmvq")
    assert GGMLType.Q4_0 in lw.Q8_TYPES
    # the attention output is quantized by the attention kernel where its rows are whole q8
    # blocks (the fixture's 16-wide heads are not); the glu output by a quant_q8 launch
    quants = [s for s in plan.steps if s.op == "quant_q8"]
    of_glu = [q for q in quants if any(q.ins[0].same(s.out) for s in glu)]
    assert len(of_glu) == n_layers
    of_attn = sum(1 for s in plan.steps if s.op == "fattn" and "q8" not in s.params)
    assert len(quants) == len(of_glu) + of_attn
    assert all(
        "q8" in s.params for s in plan.steps if s.op == "fattn" and s.out.shape[-1] % 32 == 0
    )
    size = plan_arena(plan.storages)
    assert size > 0


def test_a_long_prompt_takes_integer_gemms_on_q8_activations(tiny_gguf_with_vocab):
    """Past MMVQ_MAX_T tokens the legacy quants' products are gemmq steps (int8 tensor cores) on
    activations quantized once, with no f16 copies; without int8 MMA (before sm_80) they stay
    cuBLAS GEMMs on f16 copies of the weight and the activations."""
    import llmrt_cuda.lower as lw

    t = lw.MMVQ_MAX_T + 36
    graph = file_graph(tiny_gguf_with_vocab, t)
    types = {n.dtype for n in graph.nodes if n.op.name == "WEIGHT"}
    if not types & lw.Q8_TYPES:
        pytest.skip(f"fixture weights are {types}")
    steps = lower(graph).steps
    gemmq = [s for s in steps if s.op == "gemmq"]
    assert gemmq and all(s.params["type"] in lw.Q8_TYPES and s.params["t"] == t for s in gemmq)
    # q, k and v in one launch, gate and up in one: each a weight and an output
    assert all(not s.temps and len(s.ins) == len(s.params.get("outs", [0])) for s in gemmq)
    assert sorted(len(s.ins) for s in gemmq) == sorted([1, 1, 2, 3] * (len(gemmq) // 4))
    assert all(s.params["type"] not in lw.Q8_TYPES for s in steps if s.op == "gemm")
    n_layers = sum(s.op == "fattn" for s in steps)
    writers = {id(s.params["q8"]): s.op for s in steps if s.op in ("norm_q8", "quant_q8")}
    q8s = {id(s.params["q8"]) for s in gemmq}
    assert q8s <= set(writers) and sum(writers[q] == "norm_q8" for q in q8s) == 2 * n_layers
    old = lower(graph, int8_mma=False).steps
    assert "gemmq" not in [s.op for s in old]
    assert all(len(s.temps) == 2 for s in old if s.op == "gemm")
    n_products = sum(len(s.ins) if s.op == "gemmq" else s.op == "gemm" for s in steps)
    assert sum(s.op == "gemm" for s in old) == n_products


class FakeGPU(CPUDevice):
    """Runs the reference kernels but says it is a GPU with little free memory."""

    free = 0

    def info(self):
        return DeviceInfo("fake", DeviceType.GPU, memory_total=1 << 40, memory_free=self.free)


def test_memory_check_names_the_ngl_that_fits(tiny_gguf_with_vocab):
    gpu = FakeGPU(CPUBackend(), 5)
    reader = GGUFReader(tiny_gguf_with_vocab)
    per_layer = sum(t.nbytes for t in reader.tensors if t.name.startswith("blk.0."))
    gpu.free = (512 << 20) + int(per_layer * 1.5)  # room for one layer beyond the reserve
    with pytest.raises(OutOfDeviceMemory, match=r"not enough memory on cpu:5: .*-ngl 1 would fit"):
        load(tiny_gguf_with_vocab, device=gpu, n_gpu_layers=-1)
    model = load(tiny_gguf_with_vocab, device=gpu, n_gpu_layers=1)
    assert np.all(np.isfinite(model.context(n_ctx=32).eval([1, 2, 3])))


class FakeGPUNoFree(FakeGPU):
    """A GPU whose driver cannot say what is free (OpenCL's): only its total memory."""

    def info(self):
        return DeviceInfo("fake", DeviceType.GPU, memory_total=self.free, memory_free=None)


def test_memory_check_holds_a_device_to_its_total_when_free_is_unknown(tiny_gguf_with_vocab):
    gpu = FakeGPUNoFree(CPUBackend(), 6)
    reader = GGUFReader(tiny_gguf_with_vocab)
    per_layer = sum(t.nbytes for t in reader.tensors if t.name.startswith("blk.0."))
    gpu.free = (512 << 20) + int(per_layer * 1.5)
    with pytest.raises(OutOfDeviceMemory, match=r"GiB is all it has .*-ngl 1 would fit"):
        load(tiny_gguf_with_vocab, device=gpu, n_gpu_layers=-1)
    assert load(tiny_gguf_with_vocab, device=gpu, n_gpu_layers=1).device is gpu


def test_split_attention_parts_all_fit_on_the_gpu_at_once():
    """The split kernel's blocks wait for each other: every part of every head must be resident
    together, whatever the shared memory a part's scores take does to the occupancy."""
    from llmrt.lower.passes import attention_heads
    from llmrt_cuda.lower import FATTN_RESIDENT_PER_SM, attention_parts, attention_split

    sms, smem_per_sm = 132, 228 * 1024

    def resident(smem: int) -> int:  # registers allow 4 blocks of 256, shared memory maybe fewer
        return min(4, smem_per_sm // (smem + 1024))

    for s in (64, 1000, 4096, 16384, 32768):
        for blocks in (4, 9, 32, 64, 200):
            for d in (64, 128, 256):
                parts, smem = attention_parts(s, blocks, d, sms, resident)
                assert 1 <= parts <= 64 and smem == (d + -(-s // parts) + 2048 + 2 * d) * 4
                assert parts == 1 or parts * blocks <= resident(smem) * sms
                # grouped heads where they fit; one head a block where a group's scores don't
                hq = blocks * 4
                heads, parts, smem = attention_split(s, hq, hq // 4, 1, d, sms,
                                                     lambda h, b: resident(b))  # fmt: skip
                assert smem == (heads * (d + -(-s // parts)) + 2048 + 2 * d) * 4
                assert parts == 1 or parts * hq // heads <= resident(smem) * sms
                assert heads == (4 if resident((4 * (d + s) + 2048 + 2 * d) * 4) else heads)
    # a block takes the query heads of one KV head, up to 4 (the 1B and 8B: 4 of 32 over 8)
    assert [attention_heads(hq, hkv) for hq, hkv in ((32, 8), (9, 3), (8, 4), (4, 1), (12, 12))] \
        == [4, 1, 2, 4, 1]  # fmt: skip
    # the 1B shape at depth 16384 (8 groups of 4 heads): 4 blocks a multiprocessor, 64 parts
    assert FATTN_RESIDENT_PER_SM == 4
    assert attention_parts(16384, 8, 64, sms, resident, 4)[0] == 64
    # one head a block (32 blocks a part): 16 parts of 1,024 keys
    assert attention_parts(16384, 32, 64, sms, resident)[0] == 16
    # where shared memory allows only 2 blocks a multiprocessor, half as many (longer) parts
    assert attention_parts(16384, 32, 64, sms, lambda smem: 2)[0] == 8
