"""One activation arena for a compiled graph, placed by liveness (ggml_gallocr's job).

``Arena`` hands out aligned byte ranges first-fit from a sorted free list and takes them back,
merging neighbours and giving the tail back, so that it can be used while lowering (a value is
released after its last reader) or through ``plan_arena`` once every storage's first writer and
last reader are known. ``peak`` is the arena's size. ``place_inputs`` lays a program's inputs
out one after another in one buffer, and ``input_arrays`` gives each its host array in a staging
copy of that buffer (CUDA's pinned memory, Vulkan's mapped memory).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from llmrt.lower.view import Storage, View, host_array

ALIGN = 256  # every range starts on this many bytes: binding offsets and vector loads want it


def aligned(nbytes: int) -> int:
    return max(ALIGN, -(-int(nbytes) // ALIGN) * ALIGN)


class Arena:
    def __init__(self) -> None:
        self.free: list[tuple[int, int]] = []  # (offset, size), sorted, never touching the top
        self.top = 0
        self.peak = 0

    def alloc(self, nbytes: int) -> int:
        size = aligned(nbytes)
        for i, (off, sz) in enumerate(self.free):
            if sz >= size:
                if sz == size:
                    self.free.pop(i)
                else:
                    self.free[i] = (off + size, sz - size)
                return off
        off = self.top
        self.top += size
        self.peak = max(self.peak, self.top)
        return off

    def release(self, offset: int, nbytes: int) -> None:
        blocks = sorted([*self.free, (offset, aligned(nbytes))])
        merged: list[tuple[int, int]] = []
        for off, sz in blocks:
            if merged and merged[-1][0] + merged[-1][1] == off:
                merged[-1] = (merged[-1][0], merged[-1][1] + sz)
            else:
                merged.append((off, sz))
        if merged and merged[-1][0] + merged[-1][1] == self.top:
            self.top = merged.pop()[0]  # the tail goes back: the next value starts there
        self.free = merged


def plan_arena(storages: Iterable[Storage]) -> int:
    """Set ``offset`` of every arena storage that some launch writes (``first`` >= 0), freeing
    each after its ``last`` reader; returns the arena's size in bytes. A storage is placed before
    the inputs of its launch are freed, so a kernel never reads and writes one range."""
    by_first: dict[int, list[Storage]] = {}
    by_last: dict[int, list[Storage]] = {}
    for s in storages:
        if s.kind == "arena" and s.first >= 0:
            by_first.setdefault(s.first, []).append(s)
            by_last.setdefault(max(s.last, s.first), []).append(s)
    arena = Arena()
    for step in sorted(set(by_first) | set(by_last)):
        for s in by_first.get(step, []):
            s.offset = arena.alloc(s.nbytes)
        for s in by_last.get(step, []):
            arena.release(s.offset, s.nbytes)
    return arena.peak


def place_inputs(storages: Iterable[Storage]) -> int:
    """Set ``offset`` of every input storage, one after another (aligned) in one buffer of the
    program's inputs; returns that buffer's size in bytes."""
    inputs = Arena()
    for s in storages:
        if s.kind == "input":
            s.offset = inputs.alloc(s.nbytes)
    return inputs.peak


def input_arrays(block: np.ndarray, inputs: Mapping[str, View]) -> dict[str, np.ndarray]:
    """Each input's array of its shape and host type over `block`, the bytes (uint8) of a host
    copy of the buffer that ``place_inputs`` laid out."""
    return {key: host_array(block, v.storage.offset, v) for key, v in inputs.items()}
