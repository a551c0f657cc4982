"""The real models read the same through llmrt.gguf as through the `gguf` package: metadata,
tensor infos, every tensor's bytes and every tensor's dequantized values (bit for bit)."""

from __future__ import annotations

import warnings

import gguf
import gguf.quants as gq
import numpy as np
import pytest

from llmrt.gguf import GGMLType, GGUFError, GGUFValueType, dequantize

MODELS = ["smollm2", "gemma3"]
ROWS_PER_STEP = 1 << 14  # compare big tensors in slices of rows, to keep memory small


@pytest.fixture(scope="module", params=MODELS)
def pair(request):
    ours = request.getfixturevalue(request.param)
    return ours, gguf.GGUFReader(ours.path)


def test_header(pair):
    ours, ref = pair
    assert ours.alignment == ref.alignment
    assert ours.data_offset == ref.data_offset
    assert ours.version == 3


def test_metadata_equal(pair):
    ours, ref = pair
    fields = {k: f for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert list(ours.metadata) == list(fields)
    for key, f in fields.items():
        value, spec = ours.metadata[key], ours.metadata_types[key]
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            assert spec == (GGUFValueType.ARRAY, GGUFValueType(int(f.types[-1])))
            expect = f.contents()
            if isinstance(value, np.ndarray):
                assert value.dtype.kind in "iufb"
                assert np.array_equal(value, np.asarray(expect, dtype=value.dtype))
            else:
                assert value == expect
        else:
            assert spec == GGUFValueType(int(f.types[0]))
            expect = f.contents()
            assert type(value) is type(expect) or isinstance(value, (int, float))
            if spec == GGUFValueType.FLOAT32:
                assert np.float32(value) == np.float32(expect)
            else:
                assert value == expect


def test_tensor_infos_and_bytes(pair):
    ours, ref = pair
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for a, b in zip(ours.tensors, ref.tensors, strict=True):
        assert int(a.type) == int(b.tensor_type)
        assert a.ne == tuple(int(d) for d in b.shape)  # gguf-py's `shape` is ggml order
        assert a.offset == b.data_offset
        assert a.nbytes == b.n_bytes
        assert np.array_equal(a.data, np.asarray(b.data).reshape(-1).view(np.uint8))


def test_every_tensor_dequantizes_like_gguf(pair):
    ours, _ = pair
    types = set()
    for t in ours.tensors:
        types.add(t.type)
        for start in range(0, t.n_rows, ROWS_PER_STEP):
            stop = min(t.n_rows, start + ROWS_PER_STEP)
            raw = t.rows(start, stop)
            got = dequantize(raw, t.type, (stop - start, t.ne[0]))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expect = np.asarray(gq.dequantize(raw, gguf.GGMLQuantizationType(int(t.type))))
            expect = expect.astype(np.float32).reshape(got.shape)
            assert np.array_equal(got.view(np.uint32), expect.view(np.uint32)), t.name
    assert GGMLType.F32 in types and len(types) >= 3


def test_data_is_zero_copy(smollm2):
    t = smollm2.tensor("token_embd.weight")
    assert not t.data.flags.writeable and not t.data.flags.owndata
    assert t.shape == (49152, 576) and t.ne == (576, 49152) and t.type == GGMLType.Q8_0
    assert t.rows(5, 10).shape == (5, t.row_nbytes)


def test_unknown_tensor_name(smollm2):
    with pytest.raises(GGUFError, match="no tensor named 'nope'"):
        smollm2.tensor("nope")
