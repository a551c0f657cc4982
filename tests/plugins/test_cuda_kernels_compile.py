"""The CUDA backend's kernels compile (no GPU needed): NVRTC, the compiler cupy hands them to at
run time, builds ops.cu and weights.cu for every weight type for sm_90 (Hopper; through ptxas, so
registers and shared memory are checked too), and each module holds the kernels its launches
name. NVRTC comes from the nvidia-cuda-nvrtc-cu12 wheel (the dev extra), called through ctypes."""

from __future__ import annotations

import ctypes
import importlib.util
import re
from pathlib import Path

import pytest

from llmrt_cuda.lower import BLOCK_TYPES, FATTN_MMA_DIMS, Q8_TYPES, kernel_source


def _nvrtc() -> ctypes.CDLL:
    spec = importlib.util.find_spec("nvidia.cuda_nvrtc")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("no NVRTC (pip install nvidia-cuda-nvrtc-cu12; the dev extra has it)")
    libs = sorted(Path(next(iter(spec.submodule_search_locations))).glob("lib/libnvrtc.so.*"))
    return ctypes.CDLL(str(libs[0]))


def _compile(lib: ctypes.CDLL, source: str, name: str) -> tuple[int, str, str]:
    """(NVRTC's result, its log, the PTX) of source built for sm_90."""
    prog = ctypes.c_void_p()
    assert (
        lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None)
        == 0
    )
    opts = [b"--gpu-architecture=sm_90", b"-std=c++17"]
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    ptx = b""
    if rc == 0:
        lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetPTX(prog, buf)
        ptx = buf.value
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc, log.value.decode(errors="replace"), ptx.decode(errors="replace")


def _entries(ptx: str) -> set[str]:
    return set(re.findall(r"\.entry\s+(\w+)", ptx))


def test_ops_compiles_with_its_kernels():
    rc, log, ptx = _compile(_nvrtc(), kernel_source("ops"), "ops.cu")
    assert rc == 0, log
    kernels = _entries(ptx)
    # prompt attention on the matrix units for the head sizes executable.fattn sends to it
    assert {f"fattn_mma_{d}" for d in FATTN_MMA_DIMS} <= kernels


@pytest.mark.parametrize("wtype", sorted(BLOCK_TYPES, key=int), ids=lambda t: t.name.lower())
def test_weights_compile_for_each_type(wtype):
    rc, log, ptx = _compile(_nvrtc(), kernel_source(str(int(wtype))), f"weights-{wtype.name}.cu")
    assert rc == 0, log
    kernels = _entries(ptx)
    assert {"dequant_f16", "x_to_f16", "get_rows_w"} <= kernels
    # the legacy quants' integer kernels: decode mat-vecs and the prompt GEMM on int8 MMA
    integer = {"gemmq", "mmvq_1_1_32"}
    assert integer <= kernels if wtype in Q8_TYPES else not integer & kernels
