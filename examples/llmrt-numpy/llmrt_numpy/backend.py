"""The backend, its one device and the compiled program (docs/plugins/writing-a-backend.md)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from llmrt.device import Backend, Device, DeviceInfo, DeviceType, Executable, HostBuffer, Probe
from llmrt.gguf import GGMLType, dequantize
from llmrt.ir import Graph, Op, Tensor
from llmrt_numpy.kernels import KERNELS, Weight

HOST_TYPES = {GGMLType.F32: np.float32, GGMLType.F16: np.float16, GGMLType.I32: np.int32}
LEAVES = (Op.WEIGHT, Op.INPUT, Op.STATE)


class NumpyBackend(Backend):
    name = "example"  # --device example:0
    priority = 1  # a CPU device below the built-in cpu backend: never what --device auto takes

    def probe(self) -> Probe:
        return Probe(True, details={"numpy": np.__version__})

    def devices(self) -> Sequence[Device]:
        return [NumpyDevice(self, 0)]


class NumpyDevice(Device):
    def info(self) -> DeviceInfo:
        return DeviceInfo("numpy on the host (example backend)", DeviceType.CPU,
                          summary=f"numpy {np.__version__}")  # fmt: skip

    def supports_op(self, node: Tensor) -> bool:
        if node.op in LEAVES:
            return True  # the suite and the smoke test ask about leaves too
        if node.op not in KERNELS:
            return False
        # no fused forms (this backend never makes them): a norm of one operand, a plain product
        if node.op in (Op.RMS_NORM, Op.NORM):
            return len(node.srcs) == 1
        if node.op is Op.MUL_MAT:
            return len(node.srcs) == 2
        return True

    def upload(self, tensor: Any) -> Weight:
        """Dequantize once, at load: 4 bytes a parameter, in exchange for kernels that only
        ever see float32 (the type stays, for the activation rounding)."""
        values = dequantize(tensor.data, tensor.type, tensor.shape)
        return Weight(values, tensor.type)

    def allocate(self, shape: tuple[int, ...], dtype: GGMLType) -> HostBuffer:
        return HostBuffer(self, np.zeros(shape, HOST_TYPES[GGMLType(dtype)]))

    def compile(self, graph: Graph, bindings: Mapping[str, Any]) -> Executable:
        return NumpyProgram(graph, bindings)


def _weighs(node: Tensor) -> bool:
    """Whether node is a product of a weight (whose kernel takes the `Weight`, type and all)."""
    return node.op is Op.MUL_MAT and node.srcs[0].op is Op.WEIGHT


class NumpyProgram(Executable):
    """The graph as a list of steps (kernel, node, source slots), resolved once; `run` fills the
    input slots and walks the steps."""

    def __init__(self, graph: Graph, bindings: Mapping[str, Any]) -> None:
        slot = {id(node): i for i, node in enumerate(graph.nodes)}
        self.values: list[Any] = [None] * len(graph.nodes)
        self.inputs: list[tuple[int, str, tuple[int, ...]]] = []
        self.steps = []
        for i, node in enumerate(graph.nodes):
            if node.op is Op.INPUT:
                self.inputs.append((i, node.key, node.shape))
            elif node.op is Op.WEIGHT:
                self.values[i] = bindings[node.key]
            elif node.op is Op.STATE:
                self.values[i] = bindings[node.key].array  # a HostBuffer from allocate
            else:
                srcs = [slot[id(src)] for src in node.srcs]
                self.steps.append((i, KERNELS[node.op], node, srcs))
        # a weight reaches kernels as its float32 values, but as a product's first operand
        self.plain: list[Any] = [v.values if isinstance(v, Weight) else v for v in self.values]
        self.steps = [
            (i, kernel, node, [(j, n == 0 and _weighs(node)) for n, j in enumerate(srcs)])
            for i, kernel, node, srcs in self.steps
        ]
        self.outputs = {name: slot[id(t)] for name, t in graph.outputs.items()}

    def run(
        self, inputs: Mapping[str, Any], outputs: Collection[str] | None = None
    ) -> dict[str, Any]:
        values = list(self.plain)
        for i, key, shape in self.inputs:
            values[i] = np.asarray(inputs[key]).reshape(shape)
        for i, kernel, node, srcs in self.steps:
            args = [self.values[j] if whole else values[j] for j, whole in srcs]
            values[i] = kernel(node, *args)
        return {
            name: np.array(values[i])
            for name, i in self.outputs.items()
            if outputs is None or name in outputs
        }
