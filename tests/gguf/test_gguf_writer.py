"""GGUFWriter: round trips (byte for byte on SmolLM2), every value type, and agreement with the
`gguf` package's reader on what we write."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from llmrt.gguf import GGMLType, GGUFReader, GGUFValueType, GGUFWriter, quantize


def copy(reader: GGUFReader, path, **kw) -> None:
    w = GGUFWriter(path, alignment=reader.alignment, version=reader.version, **kw)
    for k, v in reader.metadata.items():
        w.add(k, v, reader.metadata_types[k])
    for t in reader.tensors:
        w.add_tensor(t.name, t.data, t.type, t.shape)
    w.write()


def test_smollm2_round_trip(smollm2, smollm2_path, tmp_path):
    out = tmp_path / "copy.gguf"
    copy(smollm2, out)
    again = GGUFReader(out)
    assert list(again.metadata) == list(smollm2.metadata)
    assert again.metadata_types == smollm2.metadata_types
    for k, v in smollm2.metadata.items():
        w = again.metadata[k]
        assert np.array_equal(w, v) if isinstance(v, np.ndarray) else w == v
    for a, b in zip(again.tensors, smollm2.tensors, strict=True):
        assert (a.name, a.type, a.shape, a.offset) == (b.name, b.type, b.shape, b.offset)
        assert np.array_equal(a.data, b.data)
    assert out.read_bytes() == smollm2_path.read_bytes()  # and even the same file


VALUES = {
    "u8": (255, GGUFValueType.UINT8), "i8": (-128, GGUFValueType.INT8),
    "u16": (65535, GGUFValueType.UINT16), "i16": (-32768, GGUFValueType.INT16),
    "u32": (4000000000, None), "i32": (-5, None), "f32": (0.5, None),
    "bool": (True, None), "str": ("héllo \U0001f600", None), "u64": (2**64 - 1, None),
    "i64": (-(2**63), None), "f64": (1e300, GGUFValueType.FLOAT64),
    "bad_utf8": ("a\udcff", None),
    "arr_f32": (np.array([1.5, -2], np.float32), None), "arr_bool": (np.array([1, 0], bool), None),
    "arr_str": (["x", "", "zz"], None), "arr_empty": ([], None),
    "arr_u64": (np.array([2**63], np.uint64), None),
    "nested": ([["a"], np.array([1, 2], np.int8), [np.zeros(0, np.float64)], []], None),
}  # fmt: skip


def test_every_value_type_round_trips(tmp_path):
    out = tmp_path / "values.gguf"
    with GGUFWriter(out) as w:
        for k, (v, t) in VALUES.items():
            w.add(k, v, t)
        w.add_tensor("f32", np.arange(6, dtype=np.float32).reshape(2, 3))
    r = GGUFReader(out)
    for k, (v, _) in VALUES.items():
        got = r.metadata[k]
        if k == "nested":
            assert got[0] == ["a"] and got[1].tolist() == [1, 2] and got[2][0].size == 0
            assert r.metadata_types[k][0] == GGUFValueType.ARRAY
        elif isinstance(v, np.ndarray):
            assert got.dtype == v.dtype and np.array_equal(got, v)
        elif isinstance(v, float):
            assert got == pytest.approx(v)
        else:
            assert got == v and type(got) is type(v)
    assert r.metadata_types["u32"] == GGUFValueType.UINT32
    assert r.metadata_types["i32"] == GGUFValueType.INT32
    assert r.metadata_types["u64"] == GGUFValueType.UINT64
    assert np.array_equal(r.tensor("f32").data.view(np.float32), np.arange(6))
    # and it writes back to the same bytes
    again = tmp_path / "again.gguf"
    copy(r, again)
    assert again.read_bytes() == out.read_bytes()


def test_gguf_package_reads_what_we_write(tmp_path):
    out = tmp_path / "q.gguf"
    x = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)
    w = GGUFWriter(out, alignment=64)
    w.add("general.architecture", "llama")
    w.add("nested", [["a", "b"], ["c"]])
    w.add_tensor("w.q4_k", quantize(x, GGMLType.Q4_K), GGMLType.Q4_K, x.shape)
    w.add_tensor("w.lazy", lambda: quantize(x, GGMLType.Q8_0), GGMLType.Q8_0, x.shape)
    w.write()
    ref = gguf.GGUFReader(out)
    assert ref.alignment == 64
    assert ref.fields["general.architecture"].contents() == "llama"
    ours = GGUFReader(out)
    assert ours.alignment == 64 and ours.metadata["nested"] == [["a", "b"], ["c"]]
    for a, b in zip(ours.tensors, ref.tensors, strict=True):
        assert a.offset == b.data_offset and a.offset % 64 == 0
        assert np.array_equal(a.data, np.asarray(b.data).reshape(-1).view(np.uint8))


def test_writer_refuses_bad_input(tmp_path):
    w = GGUFWriter(tmp_path / "x.gguf")
    w.add("k", 1)
    with pytest.raises(ValueError, match="duplicate"):
        w.add("k", 2)
    with pytest.raises(ValueError, match="does not fit"):
        w.add("small", 300, GGUFValueType.UINT8)
    with pytest.raises(ValueError, match="power of two"):
        w.add("general.alignment", 48, GGUFValueType.UINT32)
    with pytest.raises(ValueError, match="bytes"):
        w.add_tensor("t", np.zeros(10, np.uint8), GGMLType.Q8_0, (32,))
    with pytest.raises(ValueError, match="type and shape"):
        w.add_tensor("t", lambda: np.zeros(1))
    with pytest.raises(ValueError, match="longer"):
        w.add_tensor("n" * 64, np.zeros(1, np.float32))
