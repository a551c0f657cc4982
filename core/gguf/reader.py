"""GGUFReader: parses and validates a GGUF v2/v3 file through mmap; tensor data are zero-copy views.

The whole header is checked when the file is opened, so that later code can trust it: every count
and length is checked against the bytes left in the file before anything is allocated for it,
nested arrays are limited in depth, tensors must be of a known type, aligned, inside the file and
not overlapping. Anything wrong raises `GGUFError` with the byte offset and what was wrong. The work
is proportional to the metadata: tensor data are not touched until a `TensorInfo.data` view is read.

Value mapping: strings -> str (bytes that are not UTF-8 are kept as surrogate escapes, so that the
writer reproduces them exactly), integers -> int, floats -> float, bool -> bool, arrays of strings
-> list[str], arrays of numbers or bools -> read-only numpy views of the file with the matching
little-endian dtype, arrays of arrays -> list.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from llmrt.errors import GGUFError
from llmrt.gguf.constants import (
    DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    MAX_DIMS,
    MAX_NAME_BYTES,
    SUPPORTED_VERSIONS,
    VALUE_DTYPES,
    GGMLType,
    GGUFValueType,
    Keys,
)

# The type of a metadata value: a GGUFValueType for scalars; for arrays (ARRAY, item) where item is
# the GGUFValueType of the items, or for arrays of arrays a tuple with one such type per item.
ValueTypeSpec = Union[GGUFValueType, tuple]  # noqa: UP007 (a runtime alias on 3.10)

MAX_ARRAY_DEPTH = 8  # deeper nesting is refused rather than recursed into
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_SCALARS: dict[GGUFValueType, struct.Struct] = {
    GGUFValueType.UINT8: struct.Struct("<B"),
    GGUFValueType.INT8: struct.Struct("<b"),
    GGUFValueType.UINT16: struct.Struct("<H"),
    GGUFValueType.INT16: struct.Struct("<h"),
    GGUFValueType.UINT32: struct.Struct("<I"),
    GGUFValueType.INT32: struct.Struct("<i"),
    GGUFValueType.FLOAT32: struct.Struct("<f"),
    GGUFValueType.UINT64: struct.Struct("<Q"),
    GGUFValueType.INT64: struct.Struct("<q"),
    GGUFValueType.FLOAT64: struct.Struct("<d"),
}
_VALUE_TYPE_IDS = frozenset(int(t) for t in GGUFValueType)
_GGML_TYPE_IDS = frozenset(int(t) for t in GGMLType)
_INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True, eq=False)
class TensorInfo:
    """One tensor of a GGUF file: where its data lie and how to read them.

    `ne` is ggml's order (ne[0] innermost); `shape` is numpy's (outermost first, ne reversed).
    `offset` is absolute in the file. `data` is a read-only zero-copy uint8 view of the bytes.
    """

    name: str
    type: GGMLType
    ne: tuple[int, ...]
    offset: int
    nbytes: int
    _buf: Any = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.ne))

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.ne:
            n *= d
        return n

    @property
    def n_rows(self) -> int:
        """Rows of ne[0] elements (all outer dimensions flattened)."""
        return self.n_elements // self.ne[0] if self.ne and self.ne[0] else 0

    @property
    def row_nbytes(self) -> int:
        return self.type.row_nbytes(self.ne[0] if self.ne else 1)

    @property
    def data(self) -> np.ndarray:
        return np.frombuffer(self._buf, dtype=np.uint8, count=self.nbytes, offset=self.offset)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Zero-copy uint8 view of rows [start, stop) as shape (stop - start, row_nbytes)."""
        if not 0 <= start <= stop <= self.n_rows:
            raise GGUFError(None, f"rows {start}:{stop} out of range for {self.name!r}")
        rb = self.row_nbytes
        view = np.frombuffer(
            self._buf, dtype=np.uint8, count=(stop - start) * rb, offset=self.offset + start * rb
        )
        return view.reshape(stop - start, rb)


class _Cursor:
    """Bounds-checked little-endian reads from a buffer; every failure is a GGUFError."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: Any, end: int) -> None:
        self.buf = buf
        self.pos = 0
        self.end = end

    def need(self, n: int, what: str) -> None:
        if n > self.end - self.pos:
            raise GGUFError(
                self.pos, f"{what} needs {n} bytes but only {self.end - self.pos} are left"
            )

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def raw_string(self, what: str) -> bytes:
        start = self.pos
        n = self.u64(f"length of {what}")
        if n > self.end - self.pos:
            raise GGUFError(start, f"{what} has length {n}, past the end of the file")
        b = self.buf[self.pos : self.pos + n]
        self.pos += n
        return b

    def string(self, what: str) -> str:
        return self.raw_string(what).decode("utf-8", "surrogateescape")

    def strict_string(self, what: str) -> str:
        start = self.pos
        b = self.raw_string(what)
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GGUFError(start, f"{what} is not valid UTF-8 ({exc.reason})") from None


class GGUFReader:
    """A parsed, validated GGUF file. Opening costs time in proportion to the metadata only.

    Attributes: `path`, `version`, `alignment`, `metadata` (key -> value, in file order),
    `metadata_types` (key -> ValueTypeSpec), `tensors` (in file order), `data_offset` (start of
    the tensor data section), `file_size`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, ValueTypeSpec] = {}
        self.tensors: list[TensorInfo] = []
        self._by_name: dict[str, TensorInfo] = {}
        self._value_at: dict[str, int] = {}  # where each metadata value starts, for errors
        self._buf = self._map()
        try:
            self._parse()
        except GGUFError as exc:
            raise GGUFError(exc.offset, exc.what, str(self.path)) from None

    def _map(self) -> Any:
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                self.file_size = size
                if size == 0:
                    raise GGUFError(0, "the file is empty", str(self.path))
                return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise GGUFError(None, "no such file", str(self.path)) from None
        except IsADirectoryError:
            raise GGUFError(None, "is a directory, not a GGUF file", str(self.path)) from None
        except OSError as exc:
            raise GGUFError(None, f"cannot open: {exc.strerror or exc}", str(self.path)) from None

    # -- public API -------------------------------------------------------------------------

    def tensor(self, name: str) -> TensorInfo:
        """The tensor called `name`; a GGUFError (not KeyError) when there is none."""
        info = self._by_name.get(name)
        if info is None:
            raise GGUFError(None, f"no tensor named {name!r}", str(self.path))
        return info

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    # -- parsing ----------------------------------------------------------------------------

    def _parse(self) -> None:
        c = _Cursor(self._buf, self.file_size)
        c.need(4, "magic")
        magic = self._buf[0:4]
        if magic != GGUF_MAGIC:
            raise GGUFError(0, f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
        c.pos = 4
        version = c.u32("version")
        if version not in SUPPORTED_VERSIONS:
            if version & 0xFFFF == 0 and (version >> 24) in SUPPORTED_VERSIONS:
                raise GGUFError(4, "big-endian GGUF files are not supported")
            raise GGUFError(4, f"unsupported GGUF version {version} (supported: 2, 3)")
        self.version = version
        n_tensors_at = c.pos
        n_tensors = c.u64("tensor count")
        n_kv_at = c.pos
        n_kv = c.u64("metadata count")
        # A metadata pair takes at least 8 (key length) + 4 (type) + 1 bytes, a tensor info at
        # least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset): a count that cannot fit
        # in the bytes left is refused before any list is sized by it.
        if n_kv > (c.end - c.pos) // 13:
            raise GGUFError(n_kv_at, f"metadata count {n_kv} cannot fit in the file")
        if n_tensors > (c.end - c.pos - 13 * n_kv) // 24:
            raise GGUFError(n_tensors_at, f"tensor count {n_tensors} cannot fit in the file")

        for _ in range(n_kv):
            self._read_kv(c)
        self.alignment = self._alignment()

        infos = [self._read_tensor_info(c) for _ in range(n_tensors)]
        self.data_offset = -(-c.pos // self.alignment) * self.alignment
        self._place_tensors(infos)

    def _read_kv(self, c: _Cursor) -> None:
        at = c.pos
        key = c.strict_string("metadata key")
        if key in self.metadata:
            raise GGUFError(at, f"duplicate metadata key {key!r}")
        type_at = c.pos
        vtype = c.u32(f"value type of {key!r}")
        if vtype not in _VALUE_TYPE_IDS:
            raise GGUFError(type_at, f"unknown value type {vtype} for key {key!r}")
        self._value_at[key] = c.pos
        value, spec = self._read_value(c, GGUFValueType(vtype), key, 0)
        self.metadata[key] = value
        self.metadata_types[key] = spec

    def _read_value(
        self, c: _Cursor, vtype: GGUFValueType, key: str, depth: int
    ) -> tuple[Any, ValueTypeSpec]:
        at = c.pos
        if vtype == GGUFValueType.STRING:
            return c.string(f"string value of {key!r}"), vtype
        if vtype == GGUFValueType.BOOL:
            c.need(1, f"bool value of {key!r}")
            b = self._buf[at]
            if b > 1:
                raise GGUFError(at, f"bool value {b} of {key!r} is not 0 or 1")
            c.pos += 1
            return bool(b), vtype
        if vtype != GGUFValueType.ARRAY:
            fmt = _SCALARS[vtype]
            c.need(fmt.size, f"{vtype.name} value of {key!r}")
            (v,) = fmt.unpack_from(self._buf, at)
            c.pos += fmt.size
            return v, vtype
        return self._read_array(c, key, depth)

    def _read_array(self, c: _Cursor, key: str, depth: int) -> tuple[Any, ValueTypeSpec]:
        at = c.pos
        if depth >= MAX_ARRAY_DEPTH:
            raise GGUFError(at, f"arrays in {key!r} are nested deeper than {MAX_ARRAY_DEPTH}")
        itype_id = c.u32(f"array item type of {key!r}")
        if itype_id not in _VALUE_TYPE_IDS:
            raise GGUFError(at, f"unknown array item type {itype_id} in {key!r}")
        itype = GGUFValueType(itype_id)
        count_at = c.pos
        n = c.u64(f"array length of {key!r}")
        left = c.end - c.pos
        if itype == GGUFValueType.STRING:
            if n > left // 8:
                raise GGUFError(count_at, f"array {key!r} of {n} strings cannot fit in the file")
            return self._read_strings(c, n, key), (GGUFValueType.ARRAY, itype)
        if itype == GGUFValueType.ARRAY:
            if n > left // 12:
                raise GGUFError(count_at, f"array {key!r} of {n} arrays cannot fit in the file")
            items, specs = [], []
            for _ in range(n):
                v, s = self._read_array(c, key, depth + 1)
                items.append(v)
                specs.append(s)
            return items, (GGUFValueType.ARRAY, tuple(specs))
        dtype = VALUE_DTYPES[itype]
        if n > left // dtype.itemsize:
            raise GGUFError(count_at, f"array {key!r} of {n} {itype.name} cannot fit in the file")
        if itype == GGUFValueType.BOOL:
            raw = np.frombuffer(self._buf, dtype=np.uint8, count=n, offset=c.pos)
            if n and int(raw.max()) > 1:
                bad = c.pos + int(np.argmax(raw > 1))
                raise GGUFError(bad, f"bool array {key!r} holds a byte that is not 0 or 1")
        arr = np.frombuffer(self._buf, dtype=dtype, count=n, offset=c.pos)
        c.pos += n * dtype.itemsize
        return arr, (GGUFValueType.ARRAY, itype)

    def _read_strings(self, c: _Cursor, n: int, key: str) -> list[str]:
        # The hot loop of opening a file (a vocabulary has up to ~260k strings): kept inline.
        buf, pos, end = self._buf, c.pos, c.end
        unpack = _U64.unpack_from
        out: list[str] = []
        append = out.append
        for _ in range(n):
            if end - pos < 8:
                c.pos = pos
                c.need(8, f"string length in array {key!r}")
            (ln,) = unpack(buf, pos)
            pos += 8
            if ln > end - pos:
                raise GGUFError(pos - 8, f"string in array {key!r} has length {ln}, past the end")
            append(buf[pos : pos + ln].decode("utf-8", "surrogateescape"))
            pos += ln
        c.pos = pos
        return out

    def _alignment(self) -> int:
        if Keys.ALIGNMENT not in self.metadata:
            return DEFAULT_ALIGNMENT
        value = self.metadata[Keys.ALIGNMENT]
        at = self._value_at[Keys.ALIGNMENT]
        if self.metadata_types[Keys.ALIGNMENT] != GGUFValueType.UINT32:
            raise GGUFError(at, f"{Keys.ALIGNMENT} must be a UINT32")
        if value == 0 or value & (value - 1):
            raise GGUFError(at, f"{Keys.ALIGNMENT} is {value}, not a power of two")
        return value

    def _read_tensor_info(self, c: _Cursor) -> tuple[int, str, GGMLType, tuple[int, ...], int]:
        at = c.pos
        name_bytes = c.raw_string("tensor name")
        try:
            name = name_bytes.decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFError(at, "tensor name is not valid UTF-8") from None
        if len(name_bytes) > MAX_NAME_BYTES:
            raise GGUFError(at, f"tensor name {name[:80]!r} is longer than {MAX_NAME_BYTES} bytes")
        if name in self._by_name:
            raise GGUFError(at, f"duplicate tensor name {name!r}")
        dims_at = c.pos
        n_dims = c.u32(f"dimension count of {name!r}")
        if n_dims > MAX_DIMS:
            raise GGUFError(dims_at, f"tensor {name!r} has {n_dims} dimensions, over {MAX_DIMS}")
        c.need(8 * n_dims, f"dimensions of {name!r}")
        ne = struct.unpack_from(f"<{n_dims}Q", self._buf, c.pos)
        c.pos += 8 * n_dims
        n_elements = 1
        for d in ne:
            if d > _INT64_MAX:
                raise GGUFError(dims_at, f"tensor {name!r} has a dimension of {d}")
            n_elements *= d
        if n_elements > _INT64_MAX:
            raise GGUFError(dims_at, f"tensor {name!r} has too many elements ({ne})")
        type_at = c.pos
        type_id = c.u32(f"type of {name!r}")
        if type_id not in _GGML_TYPE_IDS:
            raise GGUFError(type_at, f"tensor {name!r} has unknown ggml type id {type_id}")
        gtype = GGMLType(type_id)
        ne0 = ne[0] if ne else 1
        if ne0 % gtype.block_size:
            raise GGUFError(
                dims_at,
                f"tensor {name!r}: row of {ne0} is not a multiple of the {gtype.name} "
                f"block size {gtype.block_size}",
            )
        rel = c.u64(f"data offset of {name!r}")
        # Placeholder so duplicates are caught while reading; replaced in _place_tensors.
        self._by_name[name] = None  # type: ignore[assignment]
        return at, name, gtype, tuple(ne), rel

    def _place_tensors(self, infos: list[tuple[int, str, GGMLType, tuple[int, ...], int]]) -> None:
        if infos and self.data_offset > self.file_size:
            raise GGUFError(self.file_size, "the file ends before its tensor data section")
        for at, name, gtype, ne, rel in infos:
            if rel % self.alignment:
                raise GGUFError(
                    at, f"tensor {name!r} data offset {rel} is not aligned to {self.alignment}"
                )
            n_elements = 1
            for d in ne:
                n_elements *= d
            nbytes = n_elements // gtype.block_size * gtype.type_size
            start = self.data_offset + rel
            if nbytes > self.file_size or start > self.file_size - nbytes:
                raise GGUFError(
                    at,
                    f"tensor {name!r} data ({nbytes} bytes at {start}) go past the end of the file "
                    f"({self.file_size} bytes)",
                )
            info = TensorInfo(name, gtype, ne, start, nbytes, self._buf)
            self.tensors.append(info)
            self._by_name[name] = info
        spans = sorted(
            ((t.offset, t.offset + t.nbytes, t.name) for t in self.tensors if t.nbytes),
            key=lambda s: s[0],
        )
        for (_, end_a, name_a), (start_b, _, name_b) in zip(spans, spans[1:], strict=False):
            if start_b < end_a:
                raise GGUFError(start_b, f"tensor {name_b!r} overlaps tensor {name_a!r}")
