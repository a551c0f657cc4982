"""A Hugging Face checkpoint folder: its config and its tensors, read lazily from safetensors.

`model.safetensors` or shards named by `model.safetensors.index.json`; `pytorch_model.bin` only
through torch (weights_only). A safetensors file is an 8-byte header length, a JSON header (dtype,
shape, byte range of each tensor) and the data: read here with numpy's memmap, because the
`safetensors` package's numpy API has no bfloat16, the type most checkpoints are stored in.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmrt.errors import LlmrtError

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


@dataclass(frozen=True)
class LazyTensor:
    """A tensor not read yet: `load()` returns it as float32 (bf16 widened exactly)."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # the checkpoint's: F32, F16, BF16
    read: Callable[[], np.ndarray]

    def load(self) -> np.ndarray:
        data = self.read()
        if self.dtype == "BF16":
            return (data.astype(np.uint32) << 16).view(np.float32).reshape(self.shape)
        return data.astype(np.float32).reshape(self.shape)


def _safetensors(path: Path) -> Iterator[LazyTensor]:
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError) as exc:
        raise LlmrtError(f"{path}: not a readable safetensors file ({exc})") from None
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = DTYPES.get(info["dtype"])
        if dtype is None:
            raise LlmrtError(f"{path}: tensor {name} has dtype {info['dtype']}, not a float")
        start, stop = info["data_offsets"]
        shape = tuple(info["shape"])
        if stop - start != math.prod(shape) * np.dtype(dtype).itemsize or stop > data.size:
            raise LlmrtError(f"{path}: tensor {name}'s byte range does not fit its shape")

        def read(start=start, stop=stop, dtype=dtype) -> np.ndarray:
            return data[start:stop].view(dtype)

        yield LazyTensor(name, shape, info["dtype"], read)


def _pytorch_bin(path: Path) -> Iterator[LazyTensor]:
    try:
        import torch
    except ImportError:
        raise LlmrtError(
            f"{path.name} is a PyTorch file: reading it needs torch (pip install torch), or "
            f"give the checkpoint as safetensors"
        ) from None
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
    for name, t in state.items():
        kind = names.get(t.dtype)
        if kind is None:
            raise LlmrtError(f"{path}: tensor {name} has dtype {t.dtype}, not a float")

        def read(t=t, kind=kind) -> np.ndarray:
            raw = t.view(torch.int16) if kind == "BF16" else t
            return raw.numpy().view(np.uint16) if kind == "BF16" else raw.numpy()

        yield LazyTensor(name, tuple(t.shape), kind, read)


class Checkpoint:
    """The folder `save_pretrained` wrote: config.json, tokenizer files, weights."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise LlmrtError(f"{self.folder} is not a folder (a Hugging Face checkpoint)")
        self.config: dict[str, Any] = self.json("config.json", required=True)

    def json(self, name: str, required: bool = False) -> dict[str, Any]:
        path = self.folder / name
        if not path.is_file():
            if required:
                raise LlmrtError(f"{self.folder} has no {name}: not a Hugging Face checkpoint")
            return {}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LlmrtError(f"cannot read {path}: {exc}") from None

    def weight_files(self) -> list[Path]:
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            shards = sorted(set(self.json(index.name)["weight_map"].values()))
            return [self.folder / s for s in shards]
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (self.folder / name).is_file():
                return [self.folder / name]
        raise LlmrtError(f"{self.folder} has no model.safetensors (nor shards, nor "
                         f"pytorch_model.bin)")  # fmt: skip

    def tensors(self) -> Iterator[LazyTensor]:
        for path in self.weight_files():
            yield from _pytorch_bin(path) if path.suffix == ".bin" else _safetensors(path)
