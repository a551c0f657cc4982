"""Fuzzing the reader with a seeded mutator: malformed files raise GGUFError (with the offset)
and nothing else, in bounded time and memory.

The mutated files come from the real models' headers: small copies (real metadata with arrays
cut short, real tensor names and types over small random data, one key of every value type) whose
fields are located by a walker, so that mutations hit counts, string lengths, type ids, dims and
tensor offsets, not only random bytes; plus truncations of the untouched SmolLM2 header.
"""

from __future__ import annotations

import struct
import time
import tracemalloc

import numpy as np
import pytest
from gguf_files import mini_copy, walk

from llmrt.gguf import GGUFError, GGUFReader, dequantize

N_MUTANTS = 2400
NASTY_U64 = [0, 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 10**9, 10**12]
NASTY_U32 = [0, 1, 3, 4, 5, 13, 31, 33, 36, 38, 42, 255, 1 << 16, 2**31, 2**32 - 1]
MEMORY_FACTOR = 16  # peak Python/numpy allocation while opening, per byte of file
MEMORY_SLACK = 1 << 20


@pytest.fixture(scope="module")
def bases(smollm2, gemma3, tmp_path_factory) -> list[bytes]:
    out = []
    for i, (reader, alignment) in enumerate([(smollm2, 32), (gemma3, 32), (smollm2, 64)]):
        path = tmp_path_factory.mktemp("fuzz") / f"base{i}.gguf"
        mini_copy(reader, path, seed=i, alignment=alignment)
        GGUFReader(path)  # the bases themselves are valid
        out.append(path.read_bytes())
    return out


def _put(buf: bytearray, at: int, size: int, value: int) -> None:
    buf[at : at + size] = (value % (1 << (8 * size))).to_bytes(size, "little")


def mutate(base: bytes, fields, rng: np.random.Generator) -> bytes:
    buf = bytearray(base)
    kinds = fields.by_kind
    choice = rng.integers(0, 9)
    if choice == 0:  # truncation
        return bytes(buf[: int(rng.integers(0, len(buf)))])
    if choice == 1:  # bit flips anywhere in the header
        end = kinds["header_end"][0][0]
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(0, end))
            buf[i] ^= 1 << int(rng.integers(0, 8))
        return bytes(buf)
    if choice == 2:  # huge or odd counts and string lengths
        at, size = _pick(kinds, ("count", "length"), rng)
        _put(buf, at, size, int(rng.choice(NASTY_U64)) + int(rng.integers(-2, 3)))
        return bytes(buf)
    if choice == 3:  # unknown or wrong type ids
        at, size = _pick(kinds, ("value_type", "ggml_type"), rng)
        _put(buf, at, size, int(rng.choice(NASTY_U32)) + int(rng.integers(0, 3)))
        return bytes(buf)
    if choice == 4:  # dims and dimension counts
        at, size = _pick(kinds, ("dim", "n_dims"), rng)
        pool = NASTY_U64 if size == 8 else NASTY_U32
        _put(buf, at, size, int(rng.choice(pool)) + int(rng.integers(0, 3)))
        return bytes(buf)
    if choice == 5:  # tensors past the end, overlapping or misaligned
        offs = kinds["tensor_offset"]
        at, size = offs[int(rng.integers(0, len(offs)))]
        mode = rng.integers(0, 3)
        if mode == 0:
            value = len(buf) + int(rng.integers(-64, 64))
        elif mode == 1:
            other = offs[int(rng.integers(0, len(offs)))][0]
            value = struct.unpack_from("<Q", buf, other)[0] + 32 * int(rng.integers(0, 2))
        else:
            value = struct.unpack_from("<Q", buf, at)[0] + int(rng.integers(1, 32))
        _put(buf, at, size, value)
        return bytes(buf)
    if choice == 6:  # wrong magic or version
        if rng.random() < 0.5:
            _put(buf, 0, 4, int(rng.integers(0, 2**32)))
        else:
            _put(buf, 4, 4, int(rng.choice([0, 1, 4, 5, 2**24 * 3, 2**32 - 1])))
        return bytes(buf)
    if choice == 7:  # scalar values (alignment, bools)
        at, size = _pick(kinds, ("scalar",), rng)
        _put(buf, at, size, int(rng.choice(NASTY_U64)) + int(rng.integers(0, 3)))
        return bytes(buf)
    # random bytes overwritten at a field start, then a truncation
    at, _ = _pick(kinds, ("count", "length", "value_type", "dim", "tensor_offset"), rng)
    buf[at : at + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
    return bytes(buf[: int(rng.integers(at, len(buf) + 1))])


def _pick(kinds, names, rng):
    pool = [f for n in names for f in kinds.get(n, [])]
    return pool[int(rng.integers(0, len(pool)))]


def check_one(path, size: int, measure: bool) -> str:
    if measure:
        tracemalloc.start()
    try:
        r = GGUFReader(path)
        for t in r.tensors:  # a file that opens must be usable
            dequantize(t.data, t.type, t.shape)
        outcome = "ok"
    except GGUFError as exc:
        assert exc.offset is not None or "no such file" in exc.what, str(exc)
        assert f"at byte {exc.offset}" in str(exc)
        assert 0 <= exc.offset <= size, str(exc)
        outcome = "error"
    finally:
        if measure:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert peak <= MEMORY_FACTOR * size + MEMORY_SLACK, (peak, size)
    return outcome


def test_fuzz_reader(bases, tmp_path):
    rng = np.random.default_rng(20241125)
    fields = [walk(b) for b in bases]
    path = tmp_path / "mutant.gguf"
    outcomes = {"ok": 0, "error": 0}
    start = time.perf_counter()
    for i in range(N_MUTANTS):
        k = i % len(bases)
        data = mutate(bases[k], fields[k], rng)
        path.write_bytes(data)
        outcomes[check_one(path, len(data), measure=i % 8 == 0)] += 1
    print(outcomes)
    assert outcomes["error"] > N_MUTANTS // 2, outcomes  # the mutations do hit
    assert time.perf_counter() - start < 120  # no hang (a generous bound for slow CI)


def test_truncated_real_header(smollm2_path, smollm2, tmp_path):
    header = smollm2_path.read_bytes()[: smollm2.data_offset]
    rng = np.random.default_rng(7)
    path = tmp_path / "cut.gguf"
    cuts = sorted({int(c) for c in rng.integers(1, len(header), 40)}) + [len(header)]
    for cut in cuts:
        path.write_bytes(header[:cut])
        with pytest.raises(GGUFError, match=r"at byte \d+"):
            GGUFReader(path)
