"""Models split over several GGUF files, in llama.cpp's layout (gguf-split, convert_hf_to_gguf.py
--split-max-size): `NAME-00001-of-00003.gguf` and so on; the first file holds all metadata, every
file holds `split.no`, `split.count` and `split.tensors.count`, and each holds whole tensors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from llmrt.errors import GGUFError
from llmrt.gguf.reader import GGUFReader

SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS = "split.no", "split.count", "split.tensors.count"
_SHARD = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def shard_path(path: Path, index: int, count: int) -> Path:
    """The name of shard `index` (from 0) of `count` for an output named `path`."""
    return path.with_name(f"{path.stem}-{index + 1:05d}-of-{count:05d}.gguf")


def parse_size(text: str) -> int:
    """--split-max-size as llama.cpp reads it: bytes, or a count with K, M or G (powers of 1000)."""
    scale = {"K": 1000, "M": 1000**2, "G": 1000**3}.get(text[-1:].upper(), 1)
    digits = text[:-1] if scale > 1 else text
    if not digits.isdigit() or int(digits) <= 0:
        raise ValueError(f"a size such as 500M or 2G, not {text!r}")
    return int(digits) * scale


class ModelFiles:
    """The tensors and metadata of a model in one GGUF file or in the shards of a split one,
    read through the first: `metadata` is the first file's, `tensors` every file's in order."""

    def __init__(self, path: str | Path) -> None:
        first = GGUFReader(path)
        self.path = first.path
        self.readers = [first]
        self.metadata: dict[str, Any] = first.metadata
        count = int(first.metadata.get(SPLIT_COUNT, 1))
        if count > 1:
            m = _SHARD.match(self.path.name)
            if m is None or int(m["no"]) != 1:
                shard = int(first.metadata.get(SPLIT_NO, 0)) + 1
                what = f"is shard {shard} of a split model: give the first, NAME-00001-of-..."
                raise GGUFError(None, what, str(self.path))
            for i in range(1, count):
                reader = GGUFReader(
                    self.path.with_name(f"{m['stem']}-{i + 1:05d}-of-{count:05d}.gguf")
                )
                if int(reader.metadata.get(SPLIT_NO, -1)) != i:
                    raise GGUFError(None, f"split.no is not {i}", str(reader.path))
                self.readers.append(reader)
        self.tensors = [t for r in self.readers for t in r.tensors]
        expected = first.metadata.get(SPLIT_TENSORS)
        if expected is not None and count > 1 and int(expected) != len(self.tensors):
            raise GGUFError(None, f"the shards hold {len(self.tensors)} tensors, "
                            f"split.tensors.count says {expected}", str(self.path))  # fmt: skip
