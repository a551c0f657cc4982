"""Devices for testing placement, splitting and planning without hardware (tinygrad's ops_null).

`NullDevice` accepts a chosen set of ops and computes nothing: `upload`, `new_state` and `compile`
return handles and programs that only record what they were given, and a program's run returns
zeros of its outputs' shapes. So a test sees which graphs a device was asked to compile and what
they bound, on any machine:

    gpu = NullDevice(declines={Op.ROPE})
    placed = place(graph, layer_devices(n_layer, -1, gpu, host), host)

`DecliningDevice` is the same contract over a device that does compute (the host's by default):
it declines the chosen ops and hands everything else to that device, so a model placed on it
falls back for exactly those ops and must still produce the host's tokens.

Both refuse to compile a graph holding a node they decline, with the message a backend gives,
and to bind a handle that another device made: placement bugs fail loudly here.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmrt.device import Backend, Device, DeviceInfo, DeviceType, Executable, Probe
from llmrt.errors import LlmrtError, UnsupportedOp
from llmrt.gguf.constants import GGMLType
from llmrt.ir import Graph, Op, Tensor

LEAVES = (Op.WEIGHT, Op.INPUT, Op.STATE)
NUMPY_TYPES = {GGMLType.F32: np.float32, GGMLType.F16: np.float16, GGMLType.I32: np.int32}


class NullBackend(Backend):
    """A backend of null devices; not registered anywhere, tests make their own."""

    name = "null"
    priority = 0

    def __init__(self, name: str = "null", n_devices: int = 1) -> None:
        self.name = name
        self.n_devices = n_devices

    def probe(self) -> Probe:
        return Probe(True, details={"kernels": "none: nothing is computed"})

    def devices(self) -> Sequence[Device]:
        return [NullDevice(self, i) for i in range(self.n_devices)]


@dataclass(frozen=True, eq=False)
class NullHandle:
    """What `upload` and `new_state` return: which device made it, and for what."""

    device: Device
    kind: str  # "weight" or "state"
    name: str
    shape: tuple[int, ...]
    type: GGMLType


@dataclass
class NullProgram(Executable):
    """A compiled graph that records its runs and returns zeros for its outputs."""

    graph: Graph
    bindings: Mapping[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)

    def run(
        self, inputs: Mapping[str, Any], outputs: Collection[str] | None = None
    ) -> dict[str, Any]:
        self.runs.append(dict(inputs))
        return {
            name: np.zeros(t.shape, NUMPY_TYPES.get(t.dtype, np.float32))
            for name, t in self.graph.outputs.items()
            if outputs is None or name in outputs
        }


class NullDevice(Device):
    """A device that accepts `accepts` (ops, or a predicate on a node; default: every op) but
    not `declines`, and records what it is given: `uploaded` (weight names), `states` (their
    handles), `compiled` (graphs, in order)."""

    def __init__(
        self, backend: Backend | None = None, index: int = 0, *,
        accepts: Collection[Op] | Callable[[Tensor], bool] | None = None,
        declines: Collection[Op] = (), device_type: DeviceType = DeviceType.ACCEL,
    ) -> None:  # fmt: skip
        super().__init__(backend if backend is not None else NullBackend(), index)
        self.accepts = accepts
        self.declines = frozenset(declines)
        self.device_type = device_type
        self.uploaded: list[str] = []
        self.states: list[NullHandle] = []
        self.compiled: list[Graph] = []

    def info(self) -> DeviceInfo:
        accepted = "every op" if self.accepts is None else "some ops"
        declined = f" but {', '.join(sorted(op.value for op in self.declines))}"
        return DeviceInfo(
            name=f"null device ({accepted}{declined if self.declines else ''})",
            type=self.device_type,
        )

    def supports_op(self, node: Any) -> bool:
        if node.op in LEAVES:
            return True
        if node.op in self.declines:
            return False
        if self.accepts is None:
            return True
        if callable(self.accepts):
            return bool(self.accepts(node))
        return node.op in self.accepts

    def upload(self, tensor: Any) -> Any:
        self.uploaded.append(tensor.name)
        return NullHandle(self, "weight", tensor.name, tuple(tensor.shape), tensor.type)

    def new_state(self, shape: tuple[int, ...], dtype: Any) -> Any:
        handle = NullHandle(self, "state", "", tuple(shape), dtype)
        self.states.append(handle)
        return handle

    def write_state(self, state: Any, data: Any) -> None:
        self._own(state, "state")

    def compile(self, graph: Any, bindings: Mapping[str, Any]) -> Executable:
        self.check(graph, bindings)
        self.compiled.append(graph)
        return NullProgram(graph, dict(bindings))

    def check(self, graph: Graph, bindings: Mapping[str, Any]) -> None:
        """Refuse a graph with a node this device declines or a leaf that is not bound here."""
        for node in graph.nodes:
            if node.op in (Op.WEIGHT, Op.STATE):
                if node.key not in bindings:
                    raise LlmrtError(f"graph {graph.name!r} needs '{node.key}', not bound")
                self._own(bindings[node.key], node.key)
            elif not self.supports_op(node):
                raise UnsupportedOp(f"{self.id} was asked to compile {node.op.value}, which it "
                                    f"declines (graph {graph.name!r})")  # fmt: skip

    def _own(self, handle: Any, what: str) -> None:
        if isinstance(handle, NullHandle) and handle.device is not self:
            raise LlmrtError(f"{self.id} was given {what}, which {handle.device.id} holds")


class DecliningDevice(NullDevice):
    """A device that declines `declines` and runs everything else on `compute` (default: the
    registry's host device, the cpu backend's), holding its weights and state in that device's
    handles: placement and splitting change, the kernels that compute each node do not."""

    def __init__(
        self, declines: Collection[Op], compute: Device | None = None, index: int = 0,
    ) -> None:  # fmt: skip
        from llmrt.device import registry

        self.compute = compute if compute is not None else registry().host()
        backend = NullBackend("declining")
        super().__init__(backend, index, accepts=self.compute.supports_op, declines=declines)

    def info(self) -> DeviceInfo:
        ops = ", ".join(sorted(op.value for op in self.declines)) or "nothing"
        return DeviceInfo(name=f"{self.compute.id} declining {ops}", type=self.device_type)

    def upload(self, tensor: Any) -> Any:
        self.uploaded.append(tensor.name)
        return self.compute.upload(tensor)

    def new_state(self, shape: tuple[int, ...], dtype: Any) -> Any:
        state = self.compute.new_state(shape, dtype)
        self.states.append(NullHandle(self, "state", "", tuple(shape), dtype))
        return state

    def write_state(self, state: Any, data: Any) -> None:
        self.compute.write_state(state, data)

    def compile(self, graph: Any, bindings: Mapping[str, Any]) -> Executable:
        self.check(graph, bindings)
        self.compiled.append(graph)
        return self.compute.compile(graph, bindings)
