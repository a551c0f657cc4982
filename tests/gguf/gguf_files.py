"""Helpers for tests that build GGUF files: a structure walker that records where each field of a
valid file lies (so that a fuzzer can aim at counts, lengths and type ids), and small files made
from the real models' headers."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from llmrt.gguf import GGUFReader, GGUFValueType, GGUFWriter

STRING, ARRAY = GGUFValueType.STRING, GGUFValueType.ARRAY
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


@dataclass
class Fields:
    """Offsets of the fields of a GGUF file, by kind (each a list of (offset, size))."""

    by_kind: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    def add(self, kind: str, offset: int, size: int) -> None:
        self.by_kind.setdefault(kind, []).append((offset, size))


def walk(buf: bytes) -> Fields:
    """Record the fields of a valid GGUF file (v2/v3)."""
    f = Fields()
    f.add("magic", 0, 4)
    f.add("version", 4, 4)
    f.add("count", 8, 8)  # tensors
    f.add("count", 16, 8)  # metadata
    n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)
    pos = 24

    def string(pos: int, kind: str) -> int:
        f.add(kind, pos, 8)
        (n,) = struct.unpack_from("<Q", buf, pos)
        return pos + 8 + n

    def value(pos: int, t: int) -> int:
        if t == STRING:
            return string(pos, "length")
        if t == ARRAY:
            f.add("value_type", pos, 4)
            f.add("count", pos + 4, 8)
            it, n = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            if it in (STRING, ARRAY):
                for _ in range(n):
                    pos = value(pos, it)
                return pos
            return pos + n * _SIZES[it]
        f.add("scalar", pos, _SIZES[t])
        return pos + _SIZES[t]

    for _ in range(n_kv):
        pos = string(pos, "length")
        f.add("value_type", pos, 4)
        (t,) = struct.unpack_from("<I", buf, pos)
        pos = value(pos + 4, t)
    for _ in range(n_tensors):
        pos = string(pos, "length")
        f.add("n_dims", pos, 4)
        (nd,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        for _ in range(nd):
            f.add("dim", pos, 8)
            pos += 8
        f.add("ggml_type", pos, 4)
        f.add("tensor_offset", pos + 4, 8)
        pos += 12
    f.add("header_end", pos, 0)
    return f


def mini_copy(reader: GGUFReader, path, *, n_tensors: int = 12, keep: int = 40, seed: int = 0,
              alignment: int = 32) -> None:  # fmt: skip
    """A small valid file from a real header: its metadata with arrays cut to `keep` items, its
    first tensors with their names and types but two rows of two blocks of random data, plus
    one key of every value type, nested arrays included."""
    rng = np.random.default_rng(seed)
    w = GGUFWriter(path, alignment=alignment)
    for k, v in reader.metadata.items():
        spec = reader.metadata_types[k]
        if isinstance(spec, tuple) and len(v) > keep:
            v = v[:keep]
        w.add(k, v, spec)
    extras = {
        "test.u8": (200, GGUFValueType.UINT8), "test.i8": (-3, GGUFValueType.INT8),
        "test.u16": (60000, GGUFValueType.UINT16), "test.i16": (-300, GGUFValueType.INT16),
        "test.i32": (-70000, GGUFValueType.INT32), "test.u64": (1 << 40, GGUFValueType.UINT64),
        "test.i64": (-(1 << 40), GGUFValueType.INT64), "test.f64": (0.1, GGUFValueType.FLOAT64),
        "test.bools": (np.array([True, False, True]), None),
        "test.nested": ([["a", "bc"], np.arange(3, dtype=np.int16), [np.zeros(2, np.float32)]],
                        None),
    }  # fmt: skip
    for k, (v, t) in extras.items():
        w.add(k, v, t)
    for info in reader.tensors[:n_tensors]:
        t = info.type
        shape = (2, 2 * t.block_size)
        nbytes = 2 * t.row_nbytes(2 * t.block_size)
        w.add_tensor(info.name, rng.integers(0, 256, nbytes, dtype=np.uint8), t, shape)
    w.write()
