"""Placing a graph's nodes on devices and splitting it where the device changes.

Placement, like llama.cpp's `-ngl`: the last `n_gpu_layers` layers run on the primary device and
the rest on the host (a negative count: every layer and the output head); the nodes before the
first layer (the token embedding lookup) run where the first layer runs, so that a fully offloaded
model is one program on its device (llama.cpp keeps the lookup on the CPU; here a host segment
would cost a Python round trip per token), and the nodes after the last layer run on the primary
device when every layer does.

`supports_op` is obeyed for every node: one the chosen device declines runs on the host, and the
weights it reads are bound there. A state leaf (a KV cache) and the nodes on its storage (the
SET_ROWS that writes it, the views that read it) live on one device: the device of the layer that
writes it when that device accepts all of them, else the host; a caller that has allocated the
state already (a context) pins where it is. Any other view follows its source, unless the source's
device declines it. Each node records why it went where (ggml's SET_CAUSE), which `llmrt run
--verbose` summarizes.

Splitting: consecutive nodes on one device form a segment, compiled as its own subgraph; a value
that crosses segments goes from the producer's output buffer to the consumer's input buffer
(`llmrt.device.copy`: device to device where the backend can, through the host where not).
Weights and state leaves are bound on the device of each segment that reads them.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmrt.device import Buffer, Device, Executable, copy
from llmrt.errors import UnsupportedOp, UsageError
from llmrt.ir.graph import Graph, Op, Tensor

LEAVES = (Op.WEIGHT, Op.INPUT, Op.STATE)
VIEWS = (Op.VIEW, Op.RESHAPE, Op.PERMUTE)
ALIASING = (*VIEWS, Op.SET_ROWS)


def layer_devices(
    n_layer: int, n_gpu_layers: int, devices: Device | Sequence[Device], host: Device,
    tensor_split: Sequence[float] | None = None,
) -> list[Device]:  # fmt: skip
    """The device of each layer, then of the output part (index n_layer), as llama.cpp's layer
    split: the last `n_gpu_layers` layers (negative: every layer and the output) go to `devices`
    in contiguous ranges, in order, sized by the `tensor_split` proportions (None: equal); the
    rest to the host."""
    devices = [devices] if isinstance(devices, Device) else list(devices)
    shares = list(tensor_split) if tensor_split is not None else [1.0] * len(devices)
    if len(shares) != len(devices) or any(x < 0 for x in shares) or sum(shares) <= 0:
        raise UsageError(
            f"--tensor-split takes {len(devices)} proportions >= 0, not all 0 (one per device), "
            f"got {','.join(f'{x:g}' for x in shares)}"
        )
    if n_gpu_layers < 0:
        n_gpu_layers = n_layer + 1
    start = max(n_layer - n_gpu_layers, 0)
    offloaded = min(n_gpu_layers, n_layer + 1)
    bounds = [sum(shares[: i + 1]) / sum(shares) for i in range(len(devices))]
    layers = []
    for il in range(n_layer + 1):
        if il < start or il - start >= offloaded:
            layers.append(host)
            continue
        at = (il - start) / offloaded
        layers.append(devices[min(bisect.bisect_right(bounds, at), len(devices) - 1)])
    return layers


class Placement(Mapping[int, Device]):
    """Where the nodes of a graph run: id(node) -> device for every node but the graph's inputs
    (which live on the host). `cause` says why for every node, inputs included; `declined_by`
    names the device that declined a node that went to the host instead."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.where: dict[int, Device] = {}
        self.cause: dict[int, str] = {}
        self.declined_by: dict[int, Device] = {}

    def __getitem__(self, key: int) -> Device:
        return self.where[key]

    def __iter__(self) -> Iterator[int]:
        return iter(self.where)

    def __len__(self) -> int:
        return len(self.where)

    def segments(self) -> list[Device]:
        """The device of each segment that `split` cuts, in order: one means no split."""
        devices: list[Device] = []
        for node in self.graph.nodes:
            if node.op not in LEAVES:
                device = self.where[id(node)]
                if not devices or devices[-1] is not device:
                    devices.append(device)
        return devices

    def leaf_devices(self) -> dict[str, set[Device]]:
        """Weight and state key -> the devices it must be bound on: where each reader runs (a
        leaf node read on two devices, as a rope's frequency factors under partial offload can
        be, is bound on both)."""
        bound: dict[str, set[Device]] = {}
        for node in self.graph.nodes:
            if node.op in LEAVES:
                continue
            for src in node.srcs:
                if src.op in (Op.WEIGHT, Op.STATE):
                    bound.setdefault(src.key, set()).add(self.where[id(node)])
        return bound

    def declines(self) -> dict[Device, Counter[tuple[str, str]]]:
        """Device -> how many nodes of each (op name, cause) it declined."""
        found: dict[Device, Counter[tuple[str, str]]] = {}
        for node in self.graph.nodes:
            device = self.declined_by.get(id(node))
            if device is not None:
                found.setdefault(device, Counter())[(node.op.value, self.cause[id(node)])] += 1
        return found


def place(
    graph: Graph, layers: list[Device], host: Device, states: Mapping[str, Device] | None = None
) -> Placement:
    """Place every node of `graph`: `layers` is `layer_devices`' list, `states` pins state keys
    already allocated on a device. Raises UnsupportedOp for a node that no device takes."""
    return _Placer(graph, layers, host).run(states or {})


class _Placer:
    def __init__(self, graph: Graph, layers: list[Device], host: Device) -> None:
        self.graph, self.layers, self.host = graph, layers, host
        self.placed = Placement(graph)
        nodes = graph.nodes
        self.first = next((i for i, t in enumerate(nodes) if t.layer is not None), len(nodes))
        self.first_layer = (nodes[self.first].layer if self.first < len(nodes) else None) or 0

    def planned(self, i: int, node: Tensor) -> tuple[Device, str]:
        """The device that -ngl gives a node, and why."""
        if node.layer is not None:
            device = self.layers[node.layer]
            return device, f"layer {node.layer} on {device.id} (-ngl)"
        if i < self.first:
            device = self.layers[self.first_layer]
            return device, f"before layer {self.first_layer}, with it on {device.id}"
        device = self.layers[-1]
        return device, f"output on {device.id} (-ngl)"

    def to_host(self, node: Tensor, declined: Device, why: str) -> tuple[Device, str]:
        if declined is self.host or not self.host.supports_op(node):
            what = f"{node.op.value} {node.name}".strip()
            raise UnsupportedOp(
                f"no device takes {what} in graph {self.graph.name!r}: {declined.id} declines "
                f"it, and so does the host {self.host.id}"
            )
        self.placed.declined_by[id(node)] = declined
        return self.host, why

    def state_devices(self, members, states: Mapping[str, Device]) -> dict[str, tuple]:
        """Each state's device (with what writes or views it): pinned by its owner, else its
        layer's if that takes every such node, else the host."""
        found: dict[str, tuple[Device, str]] = {}
        for key, group in members.items():
            pinned = states.get(key)
            if pinned is not None:
                refused = [node for _, node in group if not pinned.supports_op(node)]
                if refused:
                    raise UnsupportedOp(
                        f"{key} lives on {pinned.id}, which declines {refused[0].op.value} on it "
                        f"in graph {self.graph.name!r}"
                    )
                found[key] = pinned, f"kept on {pinned.id} by its owner"
                continue
            device, why = self.planned(*group[0])
            refused = [node for _, node in group if not device.supports_op(node)]
            if refused:
                ops = ", ".join(sorted({node.op.value for node in refused}))
                for node in refused:
                    self.to_host(node, device, "")
                device, why = self.host, f"{device.id} declines {ops} on it: host"
            found[key] = device, why
        return found

    def run(self, states: Mapping[str, Device]) -> Placement:
        where, cause, declined_by = self.placed.where, self.placed.cause, self.placed.declined_by
        members = _on_storage(self.graph.nodes)
        member_of = {id(node): key for key, group in members.items() for _, node in group}
        state_device = self.state_devices(members, states)
        for i, node in enumerate(self.graph.nodes):
            if node.op is Op.INPUT:
                cause[id(node)] = "input, on the host"
                continue
            if node.op is Op.WEIGHT:
                continue  # bound below, where what reads it runs
            if node.op is Op.STATE:
                if node.key in state_device:
                    where[id(node)], cause[id(node)] = state_device[node.key]
                continue
            key = member_of.get(id(node))
            if key is not None:
                device = state_device[key][0]
                why = "with its cache"
                if id(node) in declined_by:
                    why = f"declined by {declined_by[id(node)].id}: host, with its cache"
            elif node.op in VIEWS and node.srcs[0].op not in LEAVES:
                device, why = where[id(node.srcs[0])], "view follows its source"
                if not device.supports_op(node):
                    device, why = self.to_host(node, device, f"declined by {device.id}: host")
            else:
                device, why = self.planned(i, node)
                if not device.supports_op(node):
                    device, why = self.to_host(node, device, f"declined by {device.id}: host")
            where[id(node)], cause[id(node)] = device, why
        # a weight is bound where its reader runs, so the table of a lookup that the device
        # declines stays on the host; the graph makes a node per use of a weight, so a tied
        # embedding read by the lookup and by the output head is bound on both devices
        for node in self.graph.nodes:
            for src in node.srcs:
                if src.op is Op.WEIGHT and id(src) not in where and node.op not in LEAVES:
                    where[id(src)] = where[id(node)]
                    cause[id(src)] = "bound where its reader runs"
        return self.placed


def _on_storage(nodes: list[Tensor]) -> dict[str, list[tuple[int, Tensor]]]:
    """State key -> the nodes (with their index) that must run where the state lives: whatever
    reads the state leaf itself, and the views of, and writes into, what aliases it."""
    storage: dict[int, str] = {}  # id(state, or aliasing node on its storage) -> state key
    members: dict[str, list[tuple[int, Tensor]]] = {}
    for i, node in enumerate(nodes):
        if node.op is Op.STATE:
            storage[id(node)] = node.key
        elif node.op in ALIASING and node.srcs and id(node.srcs[0]) in storage:
            storage[id(node)] = storage[id(node.srcs[0])]
            members.setdefault(storage[id(node)], []).append((i, node))
        else:
            key = next((s.key for s in node.srcs if s.op is Op.STATE), None)
            if key is not None:
                members.setdefault(key, []).append((i, node))
    return members


@dataclass
class Segment:
    device: Device
    graph: Graph
    imports: list[str] = field(default_factory=list)  # keys of values other segments produce
    exports: dict[str, str] = field(default_factory=dict)  # key in this graph -> key for others
    leaves: list[Tensor] = field(default_factory=list)  # weight and state leaves it binds


def split(graph: Graph, where: Mapping[int, Device]) -> list[Segment]:
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
    """Segments run in order; a value crossing from one to the next goes through the device
    contract: copied from the producer's output buffer into the consumer's input buffer (device
    to device where the consumer's backend can, else staged through the host), or as a host
    array where a side has no buffer for it."""

    def __init__(self, graph: Graph, where: Mapping[int, Device],
                 bindings: Mapping[Device, Mapping[str, Any]]) -> None:  # fmt: skip
        self.segments = split(graph, where)
        # a device that binds nothing (the host running only declined ops) has no entry
        self.programs = [
            seg.device.compile(seg.graph, bindings.get(seg.device, {})) for seg in self.segments
        ]
        self.outputs = list(graph.outputs)
        # for each segment: the values it hands on in its buffers (to segments that all take
        # them in buffers), those it returns as host arrays (the rest, and the graph's outputs),
        # and the buffers it takes values in
        self.handed: list[dict[str, Buffer]] = []
        self.returned: list[set[str]] = []
        self.taken: list[dict[str, Buffer]] = [{} for _ in self.segments]
        for index, (seg, program) in enumerate(zip(self.segments, self.programs, strict=True)):
            later = range(index + 1, len(self.segments))
            buffers = {}
            for name in seg.exports:
                buffer = program.output_buffer(name) if name not in self.outputs else None
                takers = {i: self.programs[i].input_buffer(name)
                          for i in later if name in self.segments[i].imports}  # fmt: skip
                if buffer is not None and None not in takers.values():
                    buffers[name] = buffer
                    for i, dst in takers.items():
                        self.taken[i][name] = dst
            self.handed.append(buffers)
            self.returned.append(set(seg.exports) - set(buffers))
        self.copies = {"device": 0, "staged": 0}  # how the hand-offs in buffers went

    def run(
        self, inputs: Mapping[str, Any], outputs: Collection[str] | None = None
    ) -> dict[str, Any]:
        values = dict(inputs)
        produced: dict[str, Buffer] = {}
        for program, handed, returned, taken in zip(self.programs, self.handed, self.returned,
                                                    self.taken, strict=True):  # fmt: skip
            for name, dst in taken.items():
                self.copies["device" if copy(dst, produced[name]) else "staged"] += 1
            # only a program that hands values on in buffers is asked for fewer outputs
            values.update(program.run(values, returned) if handed else program.run(values))
            produced.update(handed)
        return {name: values[name] for name in self.outputs}
