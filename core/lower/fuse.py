"""Fusion as graph rewrites, each applied only where the device compiling the graph accepts the
fused node in ``supports_op`` (ggml_can_fuse, decided once per graph rather than per launch).

The fused nodes are ordinary ops with one more operand, so any backend, and the reference, can
run them:
- ``rms_norm(x, w)`` / ``norm(x, w)``: the norm of x times the row vector w (the norm's weight),
  from ``mul(norm(x), w)`` where only the mul reads the norm;
- ``mul_mat(a, b, r)``: a·b + r, from ``add(mul_mat(a, b), r)`` (either order) where only the add
  reads the product (a residual added in the mat-vec's epilogue).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from llmrt.ir import Graph, Op, Tensor

Supports = Callable[[Tensor], bool]
Fusion = tuple[Tensor, Tensor]  # (the node absorbed, the fused node replacing the pattern's last)


def readers(graph: Graph) -> dict[int, int]:
    """id(node) -> how many times nodes read it; a graph output counts 1000 reads."""
    count: dict[int, int] = {}
    for node in graph.nodes:
        for src in node.srcs:
            count[id(src)] = count.get(id(src), 0) + 1
    for t in graph.outputs.values():
        count[id(t)] = count.get(id(t), 0) + 1000
    return count


def _norm_times_weight(node: Tensor, once: Callable[[Tensor], bool]) -> list[Fusion]:
    if node.op is not Op.MUL:
        return []
    x, w = node.srcs
    if x.op in (Op.RMS_NORM, Op.NORM) and len(x.srcs) == 1 and once(x) and (
        w.shape == (node.shape[-1],) and x.shape == node.shape
    ):  # fmt: skip
        return [(x, replace(x, srcs=(x.srcs[0], w), layer=node.layer, name=node.name or x.name))]
    return []


def _mat_mul_plus(node: Tensor, once: Callable[[Tensor], bool]) -> list[Fusion]:
    if node.op is not Op.ADD:
        return []
    return [
        (mm, replace(mm, srcs=(*mm.srcs, r), layer=node.layer, name=node.name or mm.name))
        for mm, r in (node.srcs, node.srcs[::-1])
        if mm.op is Op.MUL_MAT and len(mm.srcs) == 2 and once(mm) and mm is not r
        and r.shape == mm.shape == node.shape
    ]  # fmt: skip


PATTERNS = (_norm_times_weight, _mat_mul_plus)


def fuse(graph: Graph, supports: Supports) -> Graph:
    """A copy of `graph` with the fusions above made where `supports(fused node)` is true; the
    graph itself is left as it was. Nodes keep their order: a fused node takes the place of the
    node it ends with, and the nodes it absorbs go."""
    count = readers(graph)

    def once(t: Tensor) -> bool:
        return count.get(id(t)) == 1

    fused: dict[int, Tensor] = {}  # id(last node of a pattern) -> the fused node
    absorbed: set[int] = set()
    for node in graph.nodes:
        for pattern in PATTERNS:
            gone, new = next(((g, n) for g, n in pattern(node, once) if supports(n)), (None, None))
            if new is not None:
                fused[id(node)] = new
                absorbed.add(id(gone))
                break
    if not fused:
        return graph
    out = Graph(graph.name)
    moved: dict[int, Tensor] = {}

    def now(t: Tensor) -> Tensor:
        return moved.get(id(t), t)

    for node in graph.nodes:
        if id(node) in absorbed:
            continue
        new = fused.get(id(node), node)
        srcs = tuple(now(s) for s in new.srcs)
        if srcs != new.srcs or new is not node:
            new = replace(new, srcs=srcs)
            moved[id(node)] = new
        out.nodes.append(new)
    out.outputs = {name: now(t) for name, t in graph.outputs.items()}
    return out
