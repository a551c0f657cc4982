"""Where a value's elements are: a storage, an element offset into it, shape and strides."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmrt.device import HOST_TYPES
from llmrt.errors import LlmrtError
from llmrt.gguf.constants import GGMLType
from llmrt.ir import Graph, Op, Tensor
from llmrt.ir.graph import contiguous_strides


@dataclass(eq=False)
class Storage:
    """One buffer or byte range a plan gives values: a weight or state the caller binds by
    ``key``, an input, or a range of the activation arena (``offset`` in bytes once planned).
    ``first`` and ``last`` are the indices of the launches that write it first and read it last
    (liveness); ``buf`` is the backend's handle where it owns one. Compared by identity."""

    kind: str  # "weight", "state", "input", "arena", or a backend's own kind
    nbytes: int
    key: str = ""
    offset: int = -1
    first: int = -1
    last: int = -1
    buf: Any = None


@dataclass(frozen=True, eq=False)
class View:
    """A tensor's elements in a storage: an element offset, shape and element strides."""

    storage: Storage
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: GGMLType

    @property
    def contiguous(self) -> bool:
        """Dense in row-major order; the stride of a dimension of size 1 does not matter."""
        return all(
            s == c for d, s, c in zip(self.shape, self.strides, contiguous_strides(self.shape),
                                      strict=True) if d != 1
        )  # fmt: skip

    @property
    def n(self) -> int:
        return math.prod(self.shape)

    def span(self) -> tuple[int, int]:
        """The first and one past the last element this view reaches in its storage."""
        last = self.offset + sum((d - 1) * s for d, s in zip(self.shape, self.strides,
                                                               strict=True))  # fmt: skip
        return self.offset, last + 1

    def same(self, other: View) -> bool:
        """The same elements (the same storage, offset and count)."""
        return self.storage is other.storage and self.offset == other.offset and self.n == other.n

    @classmethod
    def whole(cls, storage: Storage, shape: tuple[int, ...], dtype: GGMLType) -> View:
        return cls(storage, 0, tuple(shape), contiguous_strides(shape), dtype)


def dims4(values: tuple[int, ...], fill: int) -> tuple[int, int, int, int]:
    """A shape or strides of at most 4 dimensions as 4, outermost first, `fill` in front."""
    return (*(fill,) * (4 - len(values)), *values)  # type: ignore[return-value]


def host_array(block: np.ndarray, start: int, v: View) -> np.ndarray:
    """An array of `v`'s shape and host type over the bytes of `block` (a uint8 array of host
    memory: a pinned or mapped staging copy) from byte `start`."""
    host = np.dtype(HOST_TYPES[v.dtype])
    return block[start : start + v.n * host.itemsize].view(host).reshape(v.shape)


def bound(storage: Storage, bindings: Mapping[str, Any], graph: Graph) -> Any:
    """The handle that ``Device.compile``'s ``bindings`` give a weight or state storage."""
    if storage.key not in bindings:
        raise LlmrtError(f"graph {graph.name!r} needs '{storage.key}', which is not bound")
    return bindings[storage.key]


def alias(node: Tensor, src: View) -> View:
    """The view that a VIEW, RESHAPE or PERMUTE node makes of its source's view. VIEW and
    RESHAPE address the source's elements in row-major order: the source must be contiguous."""
    if node.op is Op.PERMUTE:
        axes = node.params["axes"]
        return View(src.storage, src.offset, node.shape, tuple(src.strides[a] for a in axes),
                    src.dtype)  # fmt: skip
    assert src.contiguous, f"{node.op.value} of a strided view"
    if node.op is Op.VIEW:
        return View(src.storage, src.offset + node.params["offset"], node.shape, node.strides,
                    src.dtype)  # fmt: skip
    if node.op is Op.RESHAPE:
        return View(src.storage, src.offset, node.shape, contiguous_strides(node.shape),
                    src.dtype)  # fmt: skip
    raise ValueError(f"{node.op.value} is not an alias")
