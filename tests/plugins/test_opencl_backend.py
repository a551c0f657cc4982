"""The OpenCL backend (PoCL here and in CI) beyond the shared conformance suite: a small model
end to end against the CPU backend, compiled graphs replayed with new inputs, partial offload,
and the device chosen by `auto` only because it computes."""

from __future__ import annotations

import numpy as np
import pytest

from llmrt.engine import load
from llmrt.gguf.constants import GGMLType
from llmrt.ir import Graph, Tensor
from llmrt.testing.conformance import OpCase, cases, check_case, nmse

rng = np.random.default_rng(11)
PROMPT = rng.integers(0, 320, 24).tolist()


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


@pytest.mark.parametrize("as_gpu", [False, True], ids=["pocl", "gpu-kernels"])
@pytest.mark.parametrize("n_gpu_layers", [-1, 1])
def test_tiny_model_matches_the_cpu(opencl, tiny_gguf_with_vocab, n_gpu_layers, as_gpu,
                                    monkeypatch):  # fmt: skip
    if as_gpu:  # the kernels a GPU's driver runs (see test_the_gpu_kernels_conform_on_pocl_too)
        monkeypatch.setitem(opencl.limits, "cpu", 0)
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


@pytest.mark.parametrize("as_gpu", [False, True], ids=["pocl", "gpu-kernels"])
def test_a_weight_larger_than_one_buffer_is_held_in_parts(opencl, tiny_gguf_with_vocab, as_gpu,
                                                          monkeypatch):  # fmt: skip
    """A driver whose buffers hold 4 KiB (CL_DEVICE_MAX_MEM_ALLOC_SIZE): the embedding table
    (320 rows of 68 bytes, also the output matrix) and q, gate, up and down are held in parts of
    whole rows, their products and the embedding's lookup a launch a part; nothing runs on the
    host. Prompt and decode logits as the cpu backend's."""
    from llmrt.gguf.reader import GGUFReader

    if as_gpu:
        monkeypatch.setitem(opencl.limits, "cpu", 0)
    monkeypatch.setitem(opencl.limits, "max_alloc", 4096 + 16)
    sizes = {t.name: t.nbytes for t in GGUFReader(tiny_gguf_with_vocab).tensors}
    dev = load(tiny_gguf_with_vocab, device=opencl)
    assert not dev.placement.declines() and not dev.split
    held = dev.bindings[opencl]
    assert len(held["token_embd.weight"].parts) == 6  # 5 of 60 rows, then 20
    assert len(held["blk.0.ffn_down.weight"].parts) == 2
    assert all(len(w.parts) == 1 for name, w in held.items() if sizes[name] <= 4096)
    cpu = load(tiny_gguf_with_vocab, device="cpu")
    want, ctx = cpu.context(n_ctx=64).eval(PROMPT, all_logits=True), dev.context(n_ctx=64)
    assert nmse(want, ctx.eval(PROMPT, all_logits=True)) < 1e-3
    ref = cpu.context(n_ctx=64)
    ref.eval(PROMPT)
    # three tokens (mat-vecs whose parts write scratch, then their residual) and one at a time
    for tokens in ([4, 8, 6], [15], [9]):
        want, got = ref.eval(tokens, all_logits=True), ctx.eval(tokens, all_logits=True)
        assert nmse(want, got) < 1e-3


GPU_PATH_OPS = ("mul_mat(", "flash_attn_ext(", "get_rows(", "add(mul_mat(", "add(residual,",
                "decode_")  # fmt: skip


@pytest.mark.parametrize(
    "case", [c for c in cases() if c.id.startswith(GPU_PATH_OPS)], ids=lambda c: c.id
)
def test_the_gpu_kernels_conform_on_pocl_too(opencl, case, monkeypatch):
    """PoCL is a CPU device, so products and attention take the CPU kernels there; the kernels
    a GPU's driver runs (work-group mat-vecs, the local-memory gemm, split attention,
    and the decode fusions: integer mat-vecs on q8 activations, rope and KV writes in the
    attention) are checked here on PoCL by having it report itself as a GPU."""
    monkeypatch.setitem(opencl.limits, "cpu", 0)
    assert check_case(opencl, case) == "ok"


def _compiled(opencl, monkeypatch, twice: bool = False) -> list:
    """The programs opencl compiles from here on (each wrapped in _RunTwice with `twice`)."""
    programs = []
    compile_ = opencl.compile

    def compile(graph, bindings):
        program = compile_(graph, bindings)
        programs.append(_RunTwice(program) if twice else program)
        return programs[-1]

    monkeypatch.setattr(opencl, "compile", compile)
    return programs


class _RunTwice:
    """A compiled program run first on other inputs (the float ones halved and reversed along
    their rows: a norm cannot undo that), then on the given ones: a launch that leaves its state
    wrong for the next run (a counter not reset) shows in the second run's outputs."""

    def __init__(self, program) -> None:
        self.program, self.launches = program, program.launches

    def run(self, inputs, outputs=None):
        other = {
            k: np.flip(v, -1) * 0.5 if np.asarray(v).dtype.kind == "f" else v
            for k, v in inputs.items()
        }
        self.program.run(other, outputs)
        return self.program.run(inputs, outputs)


@pytest.mark.parametrize("rows", [32, 64])
@pytest.mark.parametrize(
    "case", [c for c in cases() if c.id.startswith("flash_attn_ext(t=70,")], ids=lambda c: c.id
)
def test_a_gpu_prompt_attention_takes_a_query_row_a_work_item(opencl, case, rows, monkeypatch):
    """A GPU's prompt attention over heads of at most 64 (fattn_prompt, forced on: off by default
    until measured ahead of fattn on a GPU), in work-groups of 32 and of 64 query rows (the last
    one partial: 280 rows a KV head), its causal mask leaving some groups whole tiles they do not
    compute, against the reference."""
    import llmrt_opencl.launch_attention as launch_attention

    monkeypatch.setitem(opencl.limits, "cpu", 0)
    monkeypatch.setattr(launch_attention, "PROMPT_ROWS", (rows, rows))
    monkeypatch.setattr(launch_attention, "PROMPT_MAX_D", 64)
    programs = _compiled(opencl, monkeypatch)
    assert check_case(opencl, case) == "ok"
    attention = [x for x in programs[0].launches if "fattn" in x.kernel.function_name]
    assert [(x.kernel.function_name, x.local_size) for x in attention] == [
        ("fattn_prompt", (rows, 1, 1))
    ]


# a one-token attention's keys split in parts merged by the last part to finish or by
# fattn_merge, or whole in one work-group a KV head (fattn_vec's VEC_SPLIT_KEYS, MERGE_LAST)
SPLITS = pytest.mark.parametrize(
    "split_keys, merge_last",
    [(32, True), (32, False), (4096, True)],
    ids=["split-merged-by-the-last", "split-fattn_merge", "whole"],
)


@SPLITS
@pytest.mark.parametrize(
    "case",
    [c for c in cases()
     if c.id.startswith(("flash_attn_ext(t=1,", "decode_attention(type_a=q8_0,t=1"))],
    ids=lambda c: c.id,
)  # fmt: skip
def test_a_gpu_one_token_attention_reads_a_key_across_work_items(
    opencl, case, split_keys, merge_last, monkeypatch
):
    """A GPU's one-token attention (fattn_vec: a stream of work-items a key, keys in flight,
    here with the local-memory sums a GPU without warp shuffles takes), its keys whole in one
    work-group a KV head or split, the splits merged by the last of them to finish (its count
    reset for the next run: the program runs twice) or by fattn_merge, against the reference."""
    import llmrt_opencl.launch_attention as launch_attention

    monkeypatch.setitem(opencl.limits, "cpu", 0)
    monkeypatch.setattr(launch_attention, "VEC_SPLIT_KEYS", split_keys)
    monkeypatch.setattr(launch_attention, "MERGE_LAST", merge_last)
    programs = _compiled(opencl, monkeypatch, twice=True)
    assert check_case(opencl, case) == "ok"
    names = [x.kernel.function_name for p in programs for x in p.launches]
    assert "fattn_vec" in names and "fattn" not in names
    assert ("fattn_merge" in names) == (split_keys == 32 and not merge_last)


@pytest.mark.parametrize("lanes", [8, 32])
@pytest.mark.parametrize(
    "case",
    [c for c in cases() if c.id.startswith("decode_ffn(") and ",t=1," in c.id],
    ids=lambda c: c.id,
)
def test_a_gpu_glu_writes_each_q8_block_in_the_work_group_that_completes_it(
    opencl, case, lanes, monkeypatch
):
    """A GPU's one-token gate/up mat-vec writes its GLU output's q8 blocks itself (no quant_q8
    launch): 8 or 32 lanes a row make 8 or 2 rows a work-group, so 4 or 16 work-groups count
    themselves into a block's counter and the last writes it (the counters reset for the next
    run: the program runs twice), against the reference."""
    import llmrt_opencl.launch_weights as launch_weights

    monkeypatch.setitem(opencl.limits, "cpu", 0)
    monkeypatch.setattr(launch_weights, "MMVQ_LANES", lanes)
    programs = _compiled(opencl, monkeypatch, twice=True)
    assert check_case(opencl, case) == "ok"
    names = [x.kernel.function_name for p in programs for x in p.launches]
    assert any(n.startswith("mmvq_") for n in names) and "quant_q8" not in names


@pytest.mark.parametrize("lanes, group", [(8, 4), (32, 3)], ids=["8-lanes", "32-lanes"])
@pytest.mark.parametrize(
    "case",
    [c for c in cases() if c.id.startswith("decode_ffn(") and ",t=1," in c.id],
    ids=lambda c: c.id,
)
def test_a_gpu_gate_up_launch_computes_the_down_projection_too(
    opencl, case, lanes, group, monkeypatch
):
    """With lower.FFN_DOWN_MAX_ROWS, a GPU's one-token gate/up mat-vec computes the FFN's down
    projection as well (weights.cl's MMVQ_EPILOGUE 3: the GLU's q8 blocks in groups, a partial
    row a group, the last group's sum with the residual): one mat-vec launch for the block, run
    twice (its counters reset), against the reference; groups of 3 leave a short last group."""
    import llmrt_opencl.launch_weights as launch_weights
    import llmrt_opencl.lower as lw

    monkeypatch.setitem(opencl.limits, "cpu", 0)
    monkeypatch.setattr(launch_weights, "MMVQ_LANES", lanes)
    monkeypatch.setattr(launch_weights, "FFN_GROUP", group)
    monkeypatch.setattr(lw, "FFN_DOWN_MAX_ROWS", 1 << 20)
    programs = _compiled(opencl, monkeypatch, twice=True)
    assert check_case(opencl, case) == "ok"
    names = [x.kernel.function_name for p in programs for x in p.launches]
    assert sum(n.startswith("mmvq_") for n in names) == 1


@SPLITS
@pytest.mark.parametrize(
    "case",
    [c for c in cases() if c.id.startswith("decode_attention(") and ",t=1," in c.id],
    ids=lambda c: c.id,
)
def test_a_gpu_one_token_attention_launch_computes_the_output_projection_too(
    opencl, case, split_keys, merge_last, monkeypatch
):
    """With lower.ATTN_O_MAX_ROWS, a GPU's one-token attention (fattn_vec) computes the output
    projection as well (attention.cl's ATTN_O: each row block's last work-group a partial row
    from the q8 blocks it wrote, the last block's sum with the residual): no mat-vec launch
    after it, run twice (its counters reset), against the reference; with the splits merged by
    fattn_merge the projection stays a mat-vec launch of its own."""
    import llmrt_opencl.launch_attention as launch_attention
    import llmrt_opencl.lower as lw

    monkeypatch.setitem(opencl.limits, "cpu", 0)
    monkeypatch.setattr(launch_attention, "VEC_SPLIT_KEYS", split_keys)
    monkeypatch.setattr(launch_attention, "MERGE_LAST", merge_last)
    monkeypatch.setattr(lw, "ATTN_O_MAX_ROWS", 1 << 20)
    programs = _compiled(opencl, monkeypatch, twice=True)
    assert check_case(opencl, case) == "ok"
    names = [x.kernel.function_name for p in programs for x in p.launches]
    assert "fattn_vec" in names
    after = names[names.index("fattn_vec") + 1 :]
    assert any(n.startswith("mmvq_") for n in after) == (split_keys == 32 and not merge_last)


@pytest.mark.parametrize("taken", ["FFN_DOWN_MAX_ROWS", "ATTN_O_MAX_ROWS"], ids=["down", "output"])
def test_a_model_whose_launches_take_the_projections_after_them(
    opencl, tiny_gguf_with_vocab, tmp_path, taken, monkeypatch
):
    """The same in a whole model (GPU kernels): the down projections in the gate/up launches,
    then (with them) the output projections in the attention's (a model of two query heads and
    one KV head of 32, so that the attention writes its output as q8 blocks): a decode step a
    launch a layer fewer, the projection's row normed for the next block in the same launch;
    prompt and decode logits as the cpu backend's."""
    import llmrt_opencl.lower as lw
    import llmrt_opencl.program as program
    from llmrt.testing.tiny import write_tiny_llama

    model = tiny_gguf_with_vocab
    if taken == "ATTN_O_MAX_ROWS":
        model = write_tiny_llama(tmp_path / "wide-heads.gguf", n_head=2, n_head_kv=1)
        monkeypatch.setattr(lw, "FFN_DOWN_MAX_ROWS", 1 << 20)
    monkeypatch.setitem(opencl.limits, "cpu", 0)
    launches = {}
    for rows in (0, 1 << 20):
        monkeypatch.setattr(lw, taken, rows)
        ref = load(model, device="cpu").context(n_ctx=64)
        ctx = load(model, device=opencl).context(n_ctx=64)
        assert nmse(ref.eval(PROMPT, all_logits=True), ctx.eval(PROMPT, all_logits=True)) < 1e-3
        for token in (4, 8, 6, 15):
            assert nmse(ref.eval([token]), ctx.eval([token])) < 1e-3
        step = next(p for key, p in ctx.graphs.items()
                    if key[0] == 1 and isinstance(p, program.OpenCLProgram))  # fmt: skip
        launches[rows] = len(step.launches)
    n_layers = load(model, device="cpu").hp.n_layer
    assert launches[1 << 20] == launches[0] - n_layers


def _long_row_product(wtype: GGMLType, t: int) -> OpCase:
    """y = W x + r over 2,048-wide rows (64 q8 blocks: several a lane at every lane count)."""
    leaves = {
        "w": ("weight", (70, 2048), wtype, "uniform"),
        "x": ("input", (t, 2048), GGMLType.F32, "uniform"),
        "r": ("input", (t, 70), GGMLType.F32, "uniform"),
    }

    def build(g: Graph, x: dict) -> Tensor:
        return g.add(g.mul_mat(x["w"], x["x"]), x["r"])

    return OpCase(f"add(mul_mat(type_a={wtype.name.lower()},m=70,k=2048,t={t}),residual)", leaves,
                  build, 2e-3)  # fmt: skip


@pytest.mark.parametrize("lanes", [8, 16, 32])
@pytest.mark.parametrize("t", [1, 3])
@pytest.mark.parametrize(
    "wtype", [GGMLType.Q4_0, GGMLType.Q5_1, GGMLType.Q8_0], ids=lambda w: w.name
)
def test_a_gpu_integer_mat_vec_takes_any_lanes(opencl, wtype, t, lanes, monkeypatch):
    """A GPU's integer mat-vec (mmvq) with 8, 16 or 32 lanes a row (MMVQ_LANES) over rows of 64
    blocks, 8, 4 or 2 a lane; each program runs twice; against the reference."""
    import llmrt_opencl.launch_weights as launch_weights

    monkeypatch.setitem(opencl.limits, "cpu", 0)
    monkeypatch.setattr(launch_weights, "MMVQ_LANES", lanes)
    programs = _compiled(opencl, monkeypatch, twice=True)
    assert check_case(opencl, _long_row_product(wtype, t)) == "ok"
    names = [x.kernel.function_name for p in programs for x in p.launches]
    assert any(n.startswith("mmvq_") for n in names)


def test_a_one_token_attention_too_large_for_the_driver_takes_fattn(opencl, monkeypatch):
    """A driver may build fattn_vec for fewer work-items than its group (registers: the 8B's
    heads in groups of 512 on an H100): the step then takes fattn, not the CPU kernel."""
    import llmrt_opencl.launch_attention as launch_attention

    monkeypatch.setitem(opencl.limits, "cpu", 0)
    fits = launch_attention._fits
    monkeypatch.setattr(launch_attention, "_fits", lambda kernel, nt: kernel.function_name
                        != "fattn_vec" and fits(kernel, nt))  # fmt: skip
    programs = _compiled(opencl, monkeypatch)
    case = next(c for c in cases() if c.id.startswith("decode_attention(type_a=q8_0,t=1,s=40"))
    assert check_case(opencl, case) == "ok"
    names = [x.kernel.function_name for p in programs for x in p.launches]
    assert "fattn" in names and "fattn_vec" not in names and "fattn_row" not in names


@pytest.mark.parametrize(
    "limit", [("fused", 0), ("portable", 1)], ids=["unfused", "without-x86-builtins"]
)
@pytest.mark.parametrize(
    "case", [c for c in cases() if c.id.startswith(("decode_", "mul_mat(type_a=q"))],
    ids=lambda c: c.id,
)  # fmt: skip
def test_the_cpu_kernels_conform_unfused_and_portable(opencl, case, limit, monkeypatch):
    """A CPU device runs the decode fusions on its own kernels (the conformance suite checks
    those). Checked here: the unfused steps (mmv_row_q8, rope, set_rows), what a CPU device runs
    with limits["fused"] off; and the portable code that an ARM or RISC-V host's PoCL builds
    (on an x86 host the q8 products take x86 builtins), with limits["portable"] on."""
    monkeypatch.setitem(opencl.limits, *limit)
    assert check_case(opencl, case) == "ok"


def test_a_recorded_step_computes_what_kernel_by_kernel_enqueues_do(opencl, tiny_gguf_with_vocab,
                                                                    monkeypatch):  # fmt: skip
    """On a GPU a compiled graph's kernels are recorded once into a command buffer
    (cl_khr_command_buffer, which PoCL has too) and a step is one enqueue of it."""
    import llmrt_opencl.program as program

    if "cl_khr_command_buffer" not in opencl.cl_device.extensions.split():
        pytest.skip(f"{opencl.id} has no cl_khr_command_buffer")
    monkeypatch.setitem(opencl.limits, "cpu", 0)
    logits = {}
    for safe in (True, False):
        monkeypatch.setattr(program, "SAFE", safe)
        dev = load(tiny_gguf_with_vocab, device=opencl)
        ctx = dev.context(n_ctx=64)
        rows = [ctx.eval(PROMPT)] + [ctx.eval([token]) for token in (4, 8, 6, 15)]
        programs = [p for p in ctx.graphs.values() if isinstance(p, program.OpenCLProgram)]
        assert programs and all((p.recorded is None) == safe for p in programs)
        logits[safe] = rows
    for a, b in zip(logits[True], logits[False], strict=True):
        assert np.array_equal(a, b)


def test_a_gpu_decode_step_passes_its_hot_kernels_few_arguments(opencl, tiny_gguf_with_vocab,
                                                                monkeypatch):  # fmt: skip
    """NVIDIA's driver charges host time for every argument of every enqueue (~0.25 us a buffer,
    0.07 a scalar): the mat-vecs and the one-token attention, most of a decode step's launches,
    take their activations, counters and partials as one buffer (the arena) and their numbers as
    one constant block, and no buffer twice: a mat-vec the weights it reads, the arena, the norm's
    weight where its epilogue norms, and the block; fattn_vec the arena, the K and V caches (read,
    and the new row written) and the block."""
    import pyopencl as cl

    import llmrt_opencl.program as program

    monkeypatch.setitem(opencl.limits, "cpu", 0)
    ctx = load(tiny_gguf_with_vocab, device=opencl).context(n_ctx=64)
    ctx.eval(PROMPT)
    ctx.eval([4])
    step = next(p for key, p in ctx.graphs.items()
                if key[0] == 1 and isinstance(p, program.OpenCLProgram))  # fmt: skip
    hot = [la for la in step.launches if la.kernel.function_name.startswith(("mmvq_", "fattn_vec"))]
    assert {la.kernel.function_name.split("_")[0] for la in hot} == {"mmvq", "fattn"}
    for la in hot:
        assert all(isinstance(a, cl.MemoryObjectHolder) for a in la.args)
        assert len({id(a) for a in la.args}) == len(la.args)  # no stand-ins
        assert sum(a is step.arena for a in la.args) == 1
        assert len(la.args) == 4 if la.kernel.function_name == "fattn_vec" else len(la.args) <= 6


@pytest.mark.parametrize("as_gpu", [False, True], ids=["pocl", "gpu-kernels"])
def test_a_compiled_enqueue_computes_what_python_enqueues_do(opencl, tiny_gguf_with_vocab, as_gpu,
                                                             monkeypatch):  # fmt: skip
    """Where a GPU has no command buffer (NVIDIA's driver) a step's kernels are enqueued from one
    numba loop calling clEnqueueNDRangeKernel (replay.CompiledEnqueue): the same kernels in the
    same order, so the same logits to the bit."""
    import llmrt_opencl.program as program

    if as_gpu:  # the work-group kernels: 2-D launches and local sizes
        monkeypatch.setitem(opencl.limits, "cpu", 0)
    logits = {}
    for way in ("python", "compiled"):
        monkeypatch.setitem(opencl.limits, "enqueue", way)
        dev = load(tiny_gguf_with_vocab, device=opencl)
        ctx = dev.context(n_ctx=64)
        rows = [ctx.eval(PROMPT)] + [ctx.eval([token]) for token in (4, 8, 6, 15)]
        programs = [p for p in ctx.graphs.values() if isinstance(p, program.OpenCLProgram)]
        assert programs and all(p.recorded is None for p in programs)
        assert all((p.compiled is not None) == (way == "compiled") for p in programs)
        logits[way] = rows
    for a, b in zip(logits["python"], logits["compiled"], strict=True):
        assert np.array_equal(a, b)


def _softmax_graph() -> Graph:
    g = Graph("enqueue")
    x = g.input("x", (3, 40))
    g.output("out", g.soft_max(g.scale(x, 2.0)))
    return g


def test_the_enqueue_is_chosen_by_the_device(opencl, monkeypatch):
    """A GPU without a command buffer takes the compiled loop, unless SAFE or the loop cannot be
    built (no numba, no clEnqueueNDRangeKernel symbol): then, as a CPU device, Python's loop."""
    import llmrt_opencl.program as program
    from llmrt_opencl import replay

    def ways() -> tuple[bool, bool]:
        p = opencl.compile(_softmax_graph(), {})
        return p.recorded is not None, p.compiled is not None

    monkeypatch.setitem(opencl.limits, "cpu", 1)  # as PoCL is
    assert ways() == (False, False)
    monkeypatch.setitem(opencl.limits, "cpu", 0)
    monkeypatch.setattr(replay, "record", lambda *args: None)  # a driver without the extension
    assert ways() == (False, True)
    monkeypatch.setattr(program, "SAFE", True)
    assert ways() == (False, False)
    monkeypatch.setattr(program, "SAFE", False)

    def no_numba() -> None:
        raise ImportError("No module named 'numba'")

    monkeypatch.setattr(replay, "_enqueue_loop", no_numba)
    assert ways() == (False, False)


def test_a_failed_compiled_enqueue_names_the_kernel(opencl, monkeypatch):
    """An error from clEnqueueNDRangeKernel in the compiled loop is one line naming the launch."""
    import dataclasses

    from llmrt_opencl import replay

    monkeypatch.setitem(opencl.limits, "enqueue", "compiled")
    p = opencl.compile(_softmax_graph(), {})
    assert p.compiled is not None
    data = np.random.default_rng(0).normal(size=(3, 40)).astype(np.float32)
    want = p.run({"x": data})["out"]
    too_big = 2 * opencl.cl_device.max_work_group_size  # CL_INVALID_WORK_GROUP_SIZE
    last = dataclasses.replace(p.launches[-1], global_size=(too_big,), local_size=(too_big,))
    p.compiled = replay.CompiledEnqueue(p.queue, [*p.launches[:-1], last])
    with pytest.raises(RuntimeError) as error:
        p.run({"x": data})
    message = str(error.value)
    index, name = len(p.launches) - 1, last.kernel.function_name
    assert "\n" not in message and f"kernel {index} {name}" in message and "-54" in message
    p.compiled = replay.CompiledEnqueue(p.queue, p.launches)
    assert np.array_equal(p.run({"x": data})["out"], want)
