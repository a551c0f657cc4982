"""The GPU's prompt products of the legacy quants (weights.cl's gemmq: q8 activations, integer
dot products in local-memory tiles), on PoCL posing as a GPU: every covered weight type against
the reference, over shapes that leave partial tiles (rows, tokens, K's blocks a stage), with the
device's integer dot product builtin (its stand-in on PoCL) and without, in a large and a small
tile, and on tensor-core fragments (their stand-in); and the kernel alone with and without its
residual epilogue, and on fragments to the bit what it is on dot products.

The tolerance is far below the conformance suite's (5e-4, a whole quantization's): the reference
rounds the activations to the same q8 blocks and multiplies the same weights, so only the f32
summation order differs; a wrong level, scale, min term or block shows up by orders more."""

from __future__ import annotations

import types

import numpy as np
import pytest
from test_opencl_q8 import q8_blocks

from llmrt.gguf.constants import GGMLType
from llmrt.gguf.quants import quantize
from llmrt.lower.passes import q8_layout
from llmrt.reference import QuantizedWeight, mul_mat
from llmrt.testing.conformance import OpCase, check_case, nmse

TYPES = (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0)
# (m, k, t): M and T past whole tiles of 128 x 64 and 32 x 32, K of 3, 5 and 9 blocks (a
# partial stage of 4 blocks, of 2)
SHAPES = ((67, 96, 40), (200, 160, 77), (130, 288, 9))
NMSE_SUM_ORDER = 1e-10
F32 = GGMLType.F32
PATHS = {
    "portable": {"integer_dot": 0},
    "integer-dot": {"integer_dot": 0, "emulate_idp": 1},
    # tensor-core fragments (GQ_MMA), the instruction's stand-in on PoCL
    "mma-fragments": {"integer_dot": 0, "emulate_mma": 1},
}
TILES = {"large-tile": {}, "small-tile": {"max_work_group_size": 64}}  # (8, 8, 4, 4, 2)


def _as_gpu(opencl, monkeypatch, *limits: dict) -> None:
    monkeypatch.setitem(opencl.limits, "cpu", 0)
    monkeypatch.setitem(opencl.limits, "nv_dp4a", 0)
    monkeypatch.setitem(opencl.limits, "nv_mma", 0)  # the conformance suite checks them on NVIDIA
    for extra in limits:
        for key, value in extra.items():
            monkeypatch.setitem(opencl.limits, key, value)


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "m={},k={},t={}".format(*s))
@pytest.mark.parametrize("wtype", TYPES, ids=lambda t: t.name.lower())
def test_gemmq_matches_the_reference(opencl, wtype, shape, path, tile, monkeypatch):
    _as_gpu(opencl, monkeypatch, PATHS[path], TILES[tile])
    m, k, t = shape
    case = OpCase(
        f"mul_mat(type_a={wtype.name.lower()},m={m},k={k},t={t})",
        {"a": ("weight", (m, k), wtype, "uniform"), "b": ("input", (t, k), F32, "uniform")},
        lambda g, x: g.mul_mat(x["a"], x["b"]),
        NMSE_SUM_ORDER,
    )
    programs = []
    compile_ = opencl.compile

    def spy(graph, bindings):  # noqa: ANN001, ANN202
        programs.append(compile_(graph, bindings))
        return programs[-1]

    monkeypatch.setattr(opencl, "compile", spy)
    assert check_case(opencl, case) == "ok"
    ops = [s.op for s in programs[0].plan.steps]
    assert ops == ["quant_q8", "gemmq"]
    gemmq = programs[0].launches[-1].kernel
    options = gemmq.program.get_build_info(opencl.cl_device, cl_build_options())
    assert ("-DGQ_MMA=2" in options) == (path == "mma-fragments" and tile == "large-tile")


def cl_build_options():  # noqa: ANN201
    import pyopencl as cl

    return cl.program_build_info.OPTIONS


def _buffer(opencl, data: np.ndarray):  # noqa: ANN202
    import pyopencl as cl

    flags = cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR
    return cl.Buffer(opencl.context, flags, hostbuf=np.ascontiguousarray(data))


def _gemmq_alone(opencl, wtype, m, k, t, has_res, tile):  # noqa: ANN001, ANN202
    """(y, the reference's y) of the gemmq kernel alone in `tile` (GQ_* defines), y = W x (+ r)."""
    import pyopencl as cl

    from llmrt_opencl.launch_weights import q8_kernel

    rng = np.random.default_rng(5)
    w = rng.uniform(-1, 1, (m, k)).astype(np.float32)
    x = rng.uniform(-1, 1, (t, k)).astype(np.float32)
    res = rng.uniform(-1, 1, (t, m)).astype(np.float32)
    raw = quantize(w, wtype).reshape(m, -1)
    levels, scales, sums = q8_blocks(x.reshape(-1))
    dso, nbytes = q8_layout(x.size)
    q8 = np.zeros(nbytes, np.uint8)
    q8[: x.size] = levels.view(np.uint8)
    pairs = np.stack([scales, sums.view(np.float32)], axis=1).astype(np.float32)
    q8[dso:] = pairs.reshape(-1).view(np.uint8)
    y = np.full((t, m), np.nan, np.float32)
    bufs = [_buffer(opencl, a) for a in (raw, q8, y, res)]

    class Prog:  # what q8_kernel reads of an OpenCLProgram
        device_info = opencl.limits

        @staticmethod
        def kernel(file: str, name: str, defines: dict) -> object:
            return cl.Kernel(opencl.program(file, tuple(sorted(defines.items()))), name)

    kernel = q8_kernel(Prog, wtype, "gemmq", **tile)
    z = np.uint64(0)
    kernel.set_args(bufs[0], z, np.int64(raw.shape[1]), bufs[1], z, np.int64(dso), bufs[2], z,
                    bufs[3], z, np.int32(has_res), np.int32(m), np.int32(k),
                    np.int32(t))  # fmt: skip
    group = tile["GQ_RX"] * tile["GQ_RY"]
    rows, tokens = tile["GQ_RX"] * tile["GQ_TM"], tile["GQ_RY"] * tile["GQ_TN"]
    size = (-(-m // rows) * group, -(-t // tokens))
    cl.enqueue_nd_range_kernel(opencl.queue, kernel, size, (group, 1))
    cl.enqueue_copy(opencl.queue, y, bufs[2])
    node = types.SimpleNamespace(shape=(t, m))
    want = mul_mat(node, QuantizedWeight(raw, wtype, (m, k)), x) + (res if has_res else 0)
    return y, want


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("has_res", [0, 1], ids=["plain", "residual"])
@pytest.mark.parametrize("wtype", (GGMLType.Q4_1, GGMLType.Q5_0), ids=lambda t: t.name.lower())
def test_gemmq_kernel_with_and_without_its_residual(opencl, wtype, has_res, path, monkeypatch):
    """The kernel alone (the lowering gives a prompt product no residual): y = W x (+ r)."""
    _as_gpu(opencl, monkeypatch, PATHS[path])
    tile = dict(GQ_RX=8, GQ_RY=8, GQ_TM=4, GQ_TN=4, GQ_NB=2)  # rows and tokens 32 a group
    y, want = _gemmq_alone(opencl, wtype, 75, 160, 21, has_res, tile)
    assert np.all(np.isfinite(y))
    assert nmse(want, y) < NMSE_SUM_ORDER


@pytest.mark.parametrize("tokens", [4, 8], ids=["64-tokens", "128-tokens"])
@pytest.mark.parametrize("wtype", TYPES, ids=lambda t: t.name.lower())
def test_gemmq_on_tensor_core_fragments_is_dot_products_to_the_bit(opencl, wtype, tokens,
                                                                 monkeypatch):  # fmt: skip
    """GQ_MMA's products (here the fragments' stand-in) are the same integer block sums, scaled
    and added in the same order as the dp4a tiles': the same floats, partial tiles of rows and
    tokens and a partial stage of K included."""
    _as_gpu(opencl, monkeypatch, PATHS["portable"])
    tile = dict(GQ_RX=16, GQ_RY=16, GQ_TM=8, GQ_TN=tokens, GQ_NB=4)
    y, want = _gemmq_alone(opencl, wtype, 200, 288, 77, 1, tile)
    y_mma, _ = _gemmq_alone(opencl, wtype, 200, 288, 77, 1, {**tile, "GQ_MMA": 2})
    assert nmse(want, y) < NMSE_SUM_ORDER
    assert np.array_equal(y_mma, y)


def test_a_tile_the_compiler_refuses_gives_way_to_the_next(opencl, monkeypatch):
    """A driver may refuse a tile's build (registers) or build it for fewer work-items than it
    takes: the launch then takes the next smaller tile."""
    import pyopencl as cl

    from llmrt_opencl import launch_weights

    class Refused(cl.Error):
        pass

    # one compute unit: the largest tile is the first choice on any device (a GPU's many units
    # would send this small product to the smallest tile outright)
    _as_gpu(opencl, monkeypatch, PATHS["portable"], {"compute_units": 1})
    build = launch_weights.q8_kernel

    def refusing(prog, wtype, name, **defines):  # noqa: ANN001, ANN003, ANN202
        if defines.get("GQ_RX", 0) * defines.get("GQ_RY", 0) == 256:
            raise Refused("too many registers")
        return build(prog, wtype, name, **defines)

    monkeypatch.setattr(launch_weights, "q8_kernel", refusing)
    programs = []
    compile_ = opencl.compile
    monkeypatch.setattr(
        opencl, "compile", lambda g, b: programs.append(compile_(g, b)) or programs[-1]
    )
    case = OpCase(
        "mul_mat(type_a=q4_0,m=67,k=96,t=40)",
        {
            "a": ("weight", (67, 96), GGMLType.Q4_0, "uniform"),
            "b": ("input", (40, 96), F32, "uniform"),
        },
        lambda g, x: g.mul_mat(x["a"], x["b"]),
        NMSE_SUM_ORDER,
    )
    assert check_case(opencl, case) == "ok"
    gemmq = [x for x in programs[0].launches if x.kernel.function_name == "gemmq"]
    assert [x.local_size for x in gemmq] == [(128, 1)]  # 16 x 8, the first below 256
