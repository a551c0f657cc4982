"""GGUFWriter: writes GGUF v3 (or v2) files, streaming tensor data one tensor at a time.

Our own rather than a layer over `gguf.GGUFWriter`, because: the runtime does not depend on the
`gguf` package (it is a test oracle); `convert` and `quantize` need exact control of each
metadata value's type so that a file read by `GGUFReader` writes back byte for byte (the reader's
`metadata_types` go straight in); and tensors should stream from mmap views or lazy producers
without the whole model in memory. The format is small enough that this is ~200 lines.

    w = GGUFWriter(path)
    w.add("general.architecture", "llama")
    w.add("llama.context_length", 8192, GGUFValueType.UINT32)
    w.add_tensor("token_embd.weight", raw_uint8, GGMLType.Q8_0, shape=(49152, 576))
    w.add_tensor("output_norm.weight", np.ones(576, np.float32))     # F32 from the dtype
    w.write()
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

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
from llmrt.gguf.reader import ValueTypeSpec

_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
_DTYPE_TO_VALUE = {(dt.kind, dt.itemsize): t for t, dt in VALUE_DTYPES.items()}
_DTYPE_TO_GGML = {
    np.dtype("float32"): GGMLType.F32,
    np.dtype("float16"): GGMLType.F16,
    np.dtype("float64"): GGMLType.F64,
    np.dtype("int8"): GGMLType.I8,
    np.dtype("int16"): GGMLType.I16,
    np.dtype("int32"): GGMLType.I32,
    np.dtype("int64"): GGMLType.I64,
}

TensorSource = np.ndarray | Callable[[], np.ndarray]


def infer_type(value: Any) -> ValueTypeSpec:
    """The value type `add` uses when none is given (ints: the smallest of UINT32, INT32, ...)."""
    if isinstance(value, (bool, np.bool_)):
        return GGUFValueType.BOOL
    if isinstance(value, np.generic):
        return _DTYPE_TO_VALUE[(value.dtype.kind, value.dtype.itemsize)]
    if isinstance(value, int):
        if 0 <= value < 1 << 32:
            return GGUFValueType.UINT32
        if -(1 << 31) <= value < 1 << 31:
            return GGUFValueType.INT32
        return GGUFValueType.INT64 if value < 0 else GGUFValueType.UINT64
    if isinstance(value, float):
        return GGUFValueType.FLOAT32
    if isinstance(value, (str, bytes)):
        return GGUFValueType.STRING
    if isinstance(value, np.ndarray):
        item = _DTYPE_TO_VALUE.get((value.dtype.kind, value.dtype.itemsize))
        if item is None:
            raise ValueError(f"no GGUF array type for numpy dtype {value.dtype}")
        return (GGUFValueType.ARRAY, item)
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, (list, tuple, np.ndarray)) for v in value):
            return (GGUFValueType.ARRAY, tuple(infer_type(v) for v in value))
        if not value or all(isinstance(v, str) for v in value):
            return (GGUFValueType.ARRAY, GGUFValueType.STRING)
        return (GGUFValueType.ARRAY, infer_type(value[0]))
    raise ValueError(f"no GGUF value type for {type(value).__name__}")


def encode_value(value: Any, spec: ValueTypeSpec) -> bytes:
    """The bytes of `value` as type `spec` (without the leading type tag)."""
    if isinstance(spec, tuple):
        _, item = spec
        n = struct.pack("<Q", len(value))
        if isinstance(item, tuple):  # arrays of arrays, one spec per item
            if len(item) != len(value):
                raise ValueError("nested array spec does not match the value")
            # Each inner array is (item type, count, items): no tag of its own.
            parts = [encode_value(v, s) for v, s in zip(value, item, strict=True)]
            return _tag(GGUFValueType.ARRAY) + n + b"".join(parts)
        item = GGUFValueType(item)
        if item == GGUFValueType.ARRAY:  # nested, details to be inferred
            parts = []
            for v in value:
                parts.append(encode_value(v, infer_type(v)))
            return _tag(item) + n + b"".join(parts)
        if item == GGUFValueType.STRING:
            return _tag(item) + n + b"".join(encode_value(v, item) for v in value)
        arr = np.asarray(value, dtype=VALUE_DTYPES[item])
        return _tag(item) + n + arr.tobytes()
    spec = GGUFValueType(spec)
    if spec == GGUFValueType.STRING:
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
        return struct.pack("<Q", len(raw)) + raw
    if spec == GGUFValueType.ARRAY:
        return encode_value(value, infer_type(value))[4:]
    try:
        return struct.pack(_SCALAR_FORMATS[spec], value)
    except struct.error as exc:
        raise ValueError(f"{value!r} does not fit a {spec.name}: {exc}") from None


def _tag(spec: ValueTypeSpec) -> bytes:
    t = spec[0] if isinstance(spec, tuple) else spec
    return struct.pack("<I", int(t))


class GGUFWriter:
    """Collects metadata and tensors, then `write()` writes the file (or use it as a context
    manager: the file is written when the block ends without an exception).

    `alignment` is used unless a `general.alignment` value is added; when it differs from the
    default 32 and none was added, the key is added so that readers agree.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, alignment: int = DEFAULT_ALIGNMENT, version: int = 3
    ) -> None:
        if version not in SUPPORTED_VERSIONS:
            raise ValueError(f"GGUF version {version} is not supported")
        self.path = Path(path)
        self.version = version
        self.alignment = alignment
        self._kv: dict[str, tuple[ValueTypeSpec, bytes]] = {}
        self._tensors: list[tuple[str, GGMLType, tuple[int, ...], int, TensorSource]] = []
        self._names: set[str] = set()

    def add(self, key: str, value: Any, type: ValueTypeSpec | None = None) -> None:
        """Add a metadata pair; `type` defaults to `infer_type(value)`."""
        if key in self._kv:
            raise ValueError(f"duplicate metadata key {key!r}")
        spec = infer_type(value) if type is None else type
        self._kv[key] = (spec, encode_value(value, spec))
        if key == Keys.ALIGNMENT:
            if spec != GGUFValueType.UINT32 or value <= 0 or value & (value - 1):
                raise ValueError(f"{Keys.ALIGNMENT} must be a UINT32 power of two")
            self.alignment = int(value)

    def add_tensor(
        self,
        name: str,
        data: TensorSource,
        type: GGMLType | int | None = None,
        shape: Sequence[int] | None = None,
    ) -> None:
        """Add a tensor. `data` is raw uint8 blocks (give `type` and `shape`), an array of a
        plain dtype (float32, float16, ...: type and shape from the array), or a callable that
        returns either when the file is written (give `type` and `shape`), for streaming."""
        if name in self._names:
            raise ValueError(f"duplicate tensor name {name!r}")
        if len(name.encode("utf-8")) > MAX_NAME_BYTES:
            raise ValueError(f"tensor name {name!r} is longer than {MAX_NAME_BYTES} bytes")
        if isinstance(data, np.ndarray):
            if type is None:
                type = _DTYPE_TO_GGML.get(data.dtype)
                if type is None:
                    raise ValueError(f"give the ggml type of {name!r} ({data.dtype} data)")
            if shape is None:
                shape = data.shape
        if type is None or shape is None:
            raise ValueError(f"give the type and shape of {name!r}")
        t = GGMLType(type)
        shape = tuple(int(s) for s in shape)
        if len(shape) > MAX_DIMS:
            raise ValueError(f"{name!r} has more than {MAX_DIMS} dimensions")
        nbytes = t.row_nbytes(math.prod(shape)) if shape else t.type_size
        if shape and shape[-1] % t.block_size:
            raise ValueError(f"rows of {name!r} are not whole {t.name} blocks")
        if isinstance(data, np.ndarray) and data.nbytes != nbytes:
            raise ValueError(f"{name!r}: {data.nbytes} bytes of data for {nbytes} expected")
        self._names.add(name)
        self._tensors.append((name, t, shape, nbytes, data))

    def __enter__(self) -> GGUFWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.write()

    def _header(self) -> tuple[bytes, list[int]]:
        kv = dict(self._kv)
        if self.alignment != DEFAULT_ALIGNMENT and Keys.ALIGNMENT not in kv:
            kv[Keys.ALIGNMENT] = (GGUFValueType.UINT32, struct.pack("<I", self.alignment))
        parts = [GGUF_MAGIC, struct.pack("<IQQ", self.version, len(self._tensors), len(kv))]
        for key, (spec, raw) in kv.items():
            k = key.encode("utf-8")
            parts += [struct.pack("<Q", len(k)), k, _tag(spec), raw]
        offsets, pos = [], 0
        for name, t, shape, nbytes, _ in self._tensors:
            n = name.encode("utf-8")
            ne = tuple(reversed(shape))
            parts += [struct.pack("<Q", len(n)), n, struct.pack(f"<I{len(ne)}Q", len(ne), *ne)]
            parts.append(struct.pack("<IQ", int(t), pos))
            offsets.append(pos)
            pos = _align(pos + nbytes, self.alignment)
        return b"".join(parts), offsets

    def write(self) -> None:
        """Write the file: header, padding, then each tensor's bytes in the order added."""
        header, _ = self._header()
        with open(self.path, "wb") as f:
            f.write(header)
            f.write(bytes(_align(len(header), self.alignment) - len(header)))
            for name, _, _, nbytes, source in self._tensors:
                data = source() if callable(source) else source
                raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
                if raw.size != nbytes:
                    raise ValueError(f"{name!r} produced {raw.size} bytes, {nbytes} expected")
                f.write(memoryview(raw))
                f.write(bytes(_align(nbytes, self.alignment) - nbytes))


def _align(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A `.part` file beside `path` to write, renamed to `path` when the block ends without an
    exception and removed when it raises: a failed conversion leaves no half-written model."""
    target = Path(path)
    part = target.with_name(target.name + ".part")
    try:
        yield part
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, target)
