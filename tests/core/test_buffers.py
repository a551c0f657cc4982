"""The device contract's buffers (ggml-backend's buffer get/set/cpy) on every device found:
`allocate` zeroed, `write`/`read` round trips, `copy` between any two devices (device to device
where the backend can, through the host where not), a compiled graph's input and output buffers,
and `SplitProgram` handing values between segments through them."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from llmrt.device import Executable, HostBuffer, copy, registry
from llmrt.gguf.constants import GGMLType
from llmrt.ir import Graph
from llmrt.ir.sched import SplitProgram
from llmrt.testing import NullDevice

F32, F16, I32 = GGMLType.F32, GGMLType.F16, GGMLType.I32
HOST = {F32: np.float32, F16: np.float16, I32: np.int32}
DEVICES = [d for d in registry().devices if d.backend.name in ("cpu", "vulkan", "opencl", "cuda")]
IDS = [d.id for d in DEVICES]


def values(shape: tuple[int, ...], dtype: GGMLType, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype is I32:
        return rng.integers(-(2**31), 2**31 - 1, shape, dtype=np.int64).astype(np.int32)
    return rng.standard_normal(shape).astype(HOST[dtype])


def test_the_devices_of_this_machine_are_all_checked():
    # CI installs lavapipe and PoCL: the host and both emulated GPUs must be here
    assert {"cpu", "vulkan", "opencl"} <= {d.backend.name for d in DEVICES}


@pytest.mark.parametrize("dtype", [F32, F16, I32], ids=lambda t: t.name)
@pytest.mark.parametrize("device", DEVICES, ids=IDS)
def test_a_buffer_is_zeroed_then_holds_what_is_written(device, dtype):
    shape = (3, 5, 7)
    buf = device.allocate(shape, dtype)
    assert (buf.device, buf.shape, buf.dtype) == (device, shape, dtype)
    assert buf.nbytes == 105 * np.dtype(HOST[dtype]).itemsize
    zero = buf.read()
    assert zero.shape == shape and zero.dtype == HOST[dtype] and not zero.any()
    data = values(shape, dtype)
    buf.write(data)
    data += 1  # the buffer took a copy
    got = buf.read()
    assert got.dtype == HOST[dtype]
    np.testing.assert_array_equal(got, values(shape, dtype))


PAIRS = list(itertools.product(DEVICES, repeat=2))


@pytest.mark.parametrize(("dst_device", "src_device"), PAIRS,
                         ids=[f"{a.id}<-{b.id}" for a, b in PAIRS])  # fmt: skip
def test_copy_between_any_two_devices(dst_device, src_device):
    shape = (4, 33)
    src = src_device.allocate(shape, F16)
    src.write(values(shape, F16, seed=1))
    dst = dst_device.allocate(shape, F16)
    direct = copy(dst, src)
    np.testing.assert_array_equal(dst.read(), values(shape, F16, seed=1))
    # a backend copies within its own device without the host; between APIs it stages
    if dst_device is src_device:
        assert direct
    elif dst_device.backend is not src_device.backend:
        assert not direct


def test_copy_refuses_tensors_that_differ():
    device = registry().host()
    with pytest.raises(ValueError, match="shape and type must match"):
        copy(device.allocate((2, 3), F32), device.allocate((3, 2), F32))
    with pytest.raises(ValueError, match="shape and type must match"):
        copy(device.allocate((2, 3), F32), device.allocate((2, 3), F16))


def add_twice() -> Graph:
    g = Graph("add twice")
    x, y = g.input("x", (4, 16)), g.input("y", (4, 16))
    g.output("out", g.add(g.add(x, y), y))
    return g


@pytest.mark.parametrize("device", DEVICES, ids=IDS)
def test_a_program_takes_inputs_from_its_buffers_and_leaves_outputs_in_them(device):
    x, y = values((4, 16), F32, 2), values((4, 16), F32, 3)
    program = device.compile(add_twice(), {})
    expected = program.run({"x": x, "y": y})["out"]
    np.testing.assert_allclose(expected, x + 2 * y, rtol=1e-6)
    into = program.input_buffer("x")
    if into is None:  # a host program takes its inputs as arrays
        assert device.backend.is_host
        return
    into.write(x + 1)
    got = program.run({"y": y})  # x left out: it is in its buffer
    np.testing.assert_allclose(got["out"], x + 1 + 2 * y, rtol=1e-6)
    assert program.run({"y": y}, outputs=()) == {}
    out = program.output_buffer("out")
    assert out is not None and out.shape == (4, 16)
    np.testing.assert_array_equal(out.read(), got["out"])


class Buffered(Executable):
    """A host program with its inputs and outputs in buffers, as a GPU backend's are."""

    def __init__(self, device, graph: Graph) -> None:
        self.inner = registry().host().compile(graph, {})
        self.ins = {t.key: HostBuffer(device, np.zeros(t.shape, np.float32))
                    for t in graph.leaves}  # fmt: skip
        self.outs = {name: HostBuffer(device, np.zeros(t.shape, np.float32))
                     for name, t in graph.outputs.items()}  # fmt: skip
        self.asked: list = []

    def run(self, inputs, outputs=None):
        self.asked.append(outputs)
        result = self.inner.run({k: inputs.get(k, b.array) for k, b in self.ins.items()})
        for name, value in result.items():
            self.outs[name].write(value)
        return {k: v for k, v in result.items() if outputs is None or k in outputs}

    def input_buffer(self, key):
        return self.ins.get(key)

    def output_buffer(self, name):
        return self.outs.get(name)


class BufferedDevice(NullDevice):
    def compile(self, graph, bindings):
        return Buffered(self, graph)


def test_a_split_program_hands_values_on_through_buffers():
    a, b = BufferedDevice(), BufferedDevice()
    g = Graph("two segments")
    x = g.input("x", (2, 8))
    first = g.add(x, x)
    second = g.mul(first, x)
    g.output("out", second)
    where = {id(first): a, id(second): b}
    program = SplitProgram(g, where, {})
    data = values((2, 8), F32, 4)
    out = program.run({"x": data})["out"]
    np.testing.assert_allclose(out, 2 * data * data, rtol=1e-6)
    # the value between the segments went buffer to buffer, never returned as an array
    assert program.copies == {"device": 1, "staged": 0}
    assert program.programs[0].asked == [set()]
    assert program.programs[1].asked == [None]  # it hands nothing on: asked for all, as ever
