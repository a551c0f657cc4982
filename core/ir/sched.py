"""Placing a graph's nodes on devices and splitting it where the device changes.

Placement, like llama.cpp's `-ngl`: the last `n_gpu_layers` layers run on the primary device and
the rest on the host (a negative count: every layer and the output head); the nodes before the
first layer (the token embedding lookup) run where the first layer runs, so that a fully offloaded
model is one program on its device (llama.cpp keeps the lookup on the CPU; here a host segment
would cost a Python round trip per token), and the nodes after the last layer run on the primary
device when every layer does. A node the chosen device declines in `supports_op`
falls back to the host. Views and in-place writes stay with their source's storage.

Splitting: consecutive nodes on one device form a segment, compiled as its own subgraph; a value
that crosses segments is copied through host memory (a later step can add device-to-device
copies). Weights and state leaves are bound on the device of the segment that reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llmrt.device import Device, Executable
from llmrt.ir.graph import Graph, Op, Tensor

LEAVES = (Op.WEIGHT, Op.INPUT, Op.STATE)
ALIASING = (Op.VIEW, Op.RESHAPE, Op.PERMUTE, Op.SET_ROWS)


def layer_devices(n_layer: int, n_gpu_layers: int, primary: Device, host: Device) -> list[Device]:
    """The device of each layer, then of the output part (index n_layer)."""
    if n_gpu_layers < 0 or n_gpu_layers > n_layer:
        return [primary] * (n_layer + 1)
    first = n_layer - n_gpu_layers
    return [primary if il >= first else host for il in range(n_layer)] + [host]


def place(graph: Graph, layers: list[Device], host: Device) -> dict[int, Device]:
    """id(node) -> device for every node but the graph's inputs (which live on the host)."""
    first = next((i for i, t in enumerate(graph.nodes) if t.layer is not None), len(graph.nodes))
    where: dict[int, Device] = {}
    for i, node in enumerate(graph.nodes):
        if node.op in LEAVES:
            continue  # bound below, where what reads them runs
        if node.layer is not None:
            device = layers[node.layer]
        elif i < first:
            device = layers[0]
        else:
            device = layers[-1]
        src = node.srcs[0] if node.srcs else None
        if node.op in ALIASING and src.op is not Op.INPUT:
            if src.op in LEAVES:  # a view of a cache (or a write into it) places the cache
                where.setdefault(id(src), device)
            device = where[id(src)]
        elif not device.supports_op(node):
            device = host
        where[id(node)] = device
    # a leaf is bound where its first reader runs, so the table of a lookup that the device
    # declines stays on the host; the graph makes a node per use of a weight, so a tied embedding
    # read by the lookup and by the output head is bound on both devices
    for node in graph.nodes:
        for src in node.srcs:
            if src.op in (Op.WEIGHT, Op.STATE) and node.op not in LEAVES:
                where.setdefault(id(src), where[id(node)])
    return where


@dataclass
class Segment:
    device: Device
    graph: Graph
    imports: list[str] = field(default_factory=list)  # keys of values other segments produce
    exports: dict[str, str] = field(default_factory=dict)  # key in this graph -> key for others
    leaves: list[Tensor] = field(default_factory=list)  # weight and state leaves it binds


def split(graph: Graph, where: dict[int, Device]) -> list[Segment]:
    """Cut the graph into per-device segments in node order."""
    segments: list[Segment] = []
    owner: dict[int, int] = {}  # id(original node) -> segment index
    copies: dict[tuple[int, int], Tensor] = {}  # (segment, id(original)) -> tensor in that segment
    used_later: set[int] = {id(t) for t in graph.outputs.values()}
    for node in graph.nodes:
        for src in node.srcs:
            used_later.add(id(src))

    def local(seg_index: int, t: Tensor) -> Tensor:
        key = (seg_index, id(t))
        if key in copies:
            return copies[key]
        seg = segments[seg_index]
        g = seg.graph
        if t.op is Op.INPUT:
            new = g.input(t.key, t.shape, t.dtype)
        elif t.op in (Op.WEIGHT, Op.STATE):
            new = (
                g.weight(t.key, t.shape, t.dtype)
                if t.op is Op.WEIGHT
                else g.state(t.key, t.shape, t.dtype)
            )
            seg.leaves.append(new)
        else:  # a value computed by an earlier segment arrives as an input
            name = f"#{id(t)}"
            new = g.input(name, t.shape, t.dtype)
            seg.imports.append(name)
            segments[owner[id(t)]].exports[name] = name
            src_seg = segments[owner[id(t)]]
            src_seg.graph.outputs[name] = copies[(owner[id(t)], id(t))]
        copies[key] = new
        return new

    for node in graph.nodes:
        if node.op in LEAVES:
            continue
        device = where[id(node)]
        if not segments or segments[-1].device is not device:
            segments.append(Segment(device, Graph(f"{graph.name} [{device.id}]")))
        index = len(segments) - 1
        g = segments[index].graph
        srcs = tuple(
            copies[(index, id(s))]
            if (index, id(s)) in copies
            else (local(index, s) if s.op in LEAVES or owner.get(id(s)) != index else s)
            for s in node.srcs
        )
        clone = Tensor(node.op, node.shape, node.dtype, srcs, dict(node.params), node.name,
                       node.layer, node.strides)  # fmt: skip
        g.nodes.append(clone)
        copies[(index, id(node))] = clone
        owner[id(node)] = index
    for name, t in graph.outputs.items():
        seg = segments[owner[id(t)]]
        seg.graph.outputs[name] = copies[(owner[id(t)], id(t))]
        seg.exports[name] = name
    return segments


class SplitProgram(Executable):
    """Segments run in order; values cross between them through host arrays."""

    def __init__(self, graph: Graph, where: dict[int, Device],
                 bindings: Mapping[Device, Mapping[str, Any]]) -> None:  # fmt: skip
        self.segments = split(graph, where)
        self.programs = [
            seg.device.compile(seg.graph, bindings[seg.device]) for seg in self.segments
        ]
        self.outputs = list(graph.outputs)

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        values = dict(inputs)
        for program in self.programs:
            values.update(program.run(values))
        return {name: values[name] for name in self.outputs}
