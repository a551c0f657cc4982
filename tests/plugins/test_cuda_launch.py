"""The programmatic-dependent-launch wrapper's marshalling (pure ctypes: runs without a GPU)."""

from __future__ import annotations

import ctypes

import numpy as np

from llmrt_cuda import launch


class FakeKernel:
    class kernel:  # noqa: N801  (cupy's RawKernel.kernel.ptr is the CUfunction)
        ptr = 0x1234


def test_launch_config_matches_the_driver_structs():
    # CUlaunchAttribute: a 4-byte id, padding to 8, a 64-byte value union; CUlaunchConfig: seven
    # unsigned ints, the stream, the attribute pointer and their count
    assert ctypes.sizeof(launch._Attribute) == 72
    assert launch._Config.stream.offset == 32 and launch._Config.attrs.offset == 40
    assert ctypes.sizeof(launch._Config) == 56


def test_arguments_keep_their_c_sizes_and_values():
    args = (np.uint64(0xDEADBEEF00), np.int32(-7), np.int64(1 << 40), np.float32(0.5),
            np.float64(1e-6))  # fmt: skip
    dl = launch.DependentLaunch(FakeKernel, (3, 2), (128,), args, 4096)
    for a, p in zip(args, dl._params, strict=True):
        got = np.frombuffer(ctypes.string_at(p, a.nbytes), a.dtype)[0]
        assert got == a
    cfg = dl._config
    assert tuple(cfg.grid) == (3, 2, 1) and tuple(cfg.block) == (128, 1, 1)
    assert cfg.shared_mem == 4096 and cfg.n_attrs == 1
    attr = cfg.attrs[0]
    assert attr.id == launch.PROGRAMMATIC_STREAM_SERIALIZATION and attr.value[0] == 1
    assert dl.function == 0x1234
