"""Hand-made bad files: each raises GGUFError naming the right offset and problem."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from llmrt.errors import LlmrtError
from llmrt.gguf import GGMLType, GGUFError, GGUFReader, GGUFValueType, GGUFWriter


def good(tmp_path, **kw) -> bytes:
    w = GGUFWriter(tmp_path / "good.gguf", **kw)
    w.add("general.architecture", "llama")
    w.add("general.alignment", 32, GGUFValueType.UINT32)
    w.add_tensor("a", np.zeros(32, np.float32))
    w.add_tensor("b", np.zeros(68, np.uint8), GGMLType.Q8_0, (64,))
    w.write()
    return (tmp_path / "good.gguf").read_bytes()


def opens(tmp_path, data: bytes):
    p = tmp_path / "bad.gguf"
    p.write_bytes(data)
    return GGUFReader(p)


def fails(tmp_path, data: bytes, match: str, offset: int | None = None) -> GGUFError:
    with pytest.raises(GGUFError, match=match) as info:
        opens(tmp_path, data)
    if offset is not None:
        assert info.value.offset == offset
    assert isinstance(info.value, LlmrtError)
    return info.value


def patch(data: bytes, at: int, fmt: str, value) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, at, value)
    return bytes(b)


def test_good_file_opens(tmp_path):
    r = opens(tmp_path, good(tmp_path))
    assert [t.name for t in r.tensors] == ["a", "b"] and r.alignment == 32


def test_missing_empty_and_directory(tmp_path):
    with pytest.raises(GGUFError, match="no such file"):
        GGUFReader(tmp_path / "nope.gguf")
    fails(tmp_path, b"", "empty", 0)
    with pytest.raises(GGUFError, match="directory"):
        GGUFReader(tmp_path)


def test_magic_and_version(tmp_path):
    data = good(tmp_path)
    fails(tmp_path, b"GGML" + data[4:], "not a GGUF file", 0)
    fails(tmp_path, patch(data, 4, "<I", 1), "unsupported GGUF version 1", 4)
    fails(tmp_path, patch(data, 4, "<I", 3 << 24), "big-endian", 4)
    assert opens(tmp_path, patch(data, 4, "<I", 2)).version == 2


def test_huge_counts_are_refused_before_allocating(tmp_path):
    data = good(tmp_path)
    fails(tmp_path, patch(data, 8, "<Q", 2**62), "tensor count", 8)
    fails(tmp_path, patch(data, 16, "<Q", 2**62), "metadata count", 16)
    fails(tmp_path, patch(data, 24, "<Q", 2**63), "past the end", 24)  # key length


def test_huge_array_and_nesting(tmp_path):
    w = GGUFWriter(tmp_path / "arr.gguf")
    w.add("arr", ["x", "y"])
    w.write()
    data = (tmp_path / "arr.gguf").read_bytes()
    at = 24 + 8 + 3 + 4 + 4  # key, type, item type -> count
    fails(tmp_path, patch(data, at, "<Q", 2**60), "cannot fit", at)
    deep = b"".join(struct.pack("<IQ", 9, 1) for _ in range(20))
    body = struct.pack("<Q", 1) + b"k" + struct.pack("<I", 9) + deep
    fails(tmp_path, b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + body + bytes(64), "nested deeper")


def test_unknown_types(tmp_path):
    data = good(tmp_path)
    at = 24 + 8 + len("general.architecture")  # value type of the first key
    fails(tmp_path, patch(data, at, "<I", 13), "unknown value type 13", at)
    r = opens(tmp_path, data)
    type_at = data.index(b"\x01\x00\x00\x00\x00\x00\x00\x00a") + 9 + 4 + 8  # tensor a's type
    fails(tmp_path, patch(data, type_at, "<I", 4), "unknown ggml type id 4", type_at)
    assert r.tensors[0].type == GGMLType.F32


def test_alignment_must_be_a_power_of_two(tmp_path):
    data = good(tmp_path)
    at = data.index(b"general.alignment") + len("general.alignment") + 4
    fails(tmp_path, patch(data, at, "<I", 48), "not a power of two", at)
    fails(tmp_path, patch(data, at, "<I", 0), "not a power of two", at)


def test_tensor_placement(tmp_path):
    data = good(tmp_path)
    r = opens(tmp_path, data)
    off_b = data.index(b"\x01\x00\x00\x00\x00\x00\x00\x00b") + 9 + 4 + 8 + 4
    fails(tmp_path, patch(data, off_b, "<Q", 0), "overlaps")
    fails(tmp_path, patch(data, off_b, "<Q", 129), "not aligned")
    fails(tmp_path, patch(data, off_b, "<Q", 2**40), "past the end")
    fails(tmp_path, data[: r.tensors[1].offset + 10], "past the end")
    dims_at = data.index(b"\x01\x00\x00\x00\x00\x00\x00\x00a") + 9
    fails(tmp_path, patch(data, dims_at, "<I", 5), "dimensions", dims_at)
    fails(tmp_path, patch(data, off_b - 4 - 8, "<Q", 33), "block size")  # ne0 of the Q8_0


def test_duplicates_and_bad_bools(tmp_path):
    w = GGUFWriter(tmp_path / "d.gguf")
    w.add("k1", True)
    w.add("k2", np.array([True, False]))
    w.write()
    data = (tmp_path / "d.gguf").read_bytes()
    fails(tmp_path, data.replace(b"k2", b"k1"), "duplicate metadata key")
    bool_at = 24 + 8 + 2 + 4
    fails(tmp_path, patch(data, bool_at, "<B", 2), "not 0 or 1", bool_at)
    array_at = bool_at + 1 + 8 + 2 + 4 + 4 + 8  # k2's items
    fails(tmp_path, patch(data, array_at + 1, "<B", 7), "not 0 or 1", array_at + 1)
