"""`llmrt convert`: a Hugging Face checkpoint folder to a GGUF file, as llama.cpp's
convert_hf_to_gguf.py writes it.

Tensors stream one at a time from the memory-mapped checkpoint into the file (peak memory is the
largest tensor, not the model). Output types follow llama.cpp's: f32 everywhere; f16, bf16 or
q8_0 for matrices with 1-D tensors (norms, biases) kept in f32; `auto` takes bf16 when the
checkpoint is stored in bf16, f16 otherwise.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from llmrt.convert.architectures import hf_architecture
from llmrt.convert.checkpoint import Checkpoint, LazyTensor
from llmrt.convert.vocab import tokenizer_metadata
from llmrt.errors import LlmrtError, UsageError
from llmrt.gguf import GGMLType, GGUFValueType, GGUFWriter, atomic_output
from llmrt.gguf.split import SPLIT_COUNT, SPLIT_NO, SPLIT_TENSORS, shard_path
from llmrt.quantize import encode

OUTTYPES = {"f32": GGMLType.F32, "f16": GGMLType.F16, "bf16": GGMLType.BF16, "q8_0": GGMLType.Q8_0}
FILE_TYPE = {GGMLType.F32: 0, GGMLType.F16: 1, GGMLType.Q8_0: 7, GGMLType.BF16: 32}


def tensor_type(outtype: GGMLType, shape: tuple[int, ...]) -> GGMLType:
    """The type a tensor of `shape` is written in: 1-D ones stay f32, as llama.cpp keeps them;
    a matrix whose rows are not whole q8_0 blocks falls back to f16."""
    if len(shape) < 2 or outtype == GGMLType.F32:
        return GGMLType.F32
    if outtype == GGMLType.Q8_0 and shape[-1] % 32:
        return GGMLType.F16
    return outtype


def size_label(n_params: int) -> str:
    """The parameter count as llama.cpp labels a model: at least two significant digits
    (3.2M, 135M, 1.2B, 8.0B)."""
    scale, suffix = next(((s, x) for s, x in ((1e12, "T"), (1e9, "B"), (1e6, "M"))
                          if n_params > s), (1e3, "K"))  # fmt: skip
    value = n_params / scale
    decimals = max(2 - len(str(round(value)).lstrip("0")), 0)
    return f"{value:.{decimals}f}{suffix}"


def convert(
    folder: str | Path,
    outfile: str | Path,
    outtype: str = "auto",
    vocab_only: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    split_max_size: int | None = None,
) -> Path:
    """Write `outfile` from the checkpoint in `folder` (or its shards NAME-0000i-of-0000n.gguf
    when `split_max_size` bytes would be passed); returns the path of the file, or the first
    shard. `progress(name, done, total)` is called after each tensor."""
    ckpt = Checkpoint(folder)
    hf_name, arch = hf_architecture(ckpt.config)
    tensors = [] if vocab_only else list(ckpt.tensors())
    if outtype == "auto":
        stored = next((t.dtype for t in tensors), "F16")
        outtype = "bf16" if stored == "BF16" else "f16"
    if outtype not in OUTTYPES:
        raise UsageError(f"--outtype takes {', '.join(OUTTYPES)} or auto, not {outtype}")
    out_t = OUTTYPES[outtype]
    config = ckpt.config
    n_vocab = int(config["vocab_size"])
    n_params = sum(math.prod(t.shape) for t in tensors if arch.gguf_name(t.name))
    md: dict[str, Any] = {
        "general.architecture": arch.gguf_arch,
        "general.type": "model",
        "general.name": Path(folder).resolve().name.replace("-", " ").title(),
        **({"general.size_label": size_label(n_params)} if n_params else {}),
        **arch.metadata(config),
        "general.file_type": FILE_TYPE[out_t],
        "general.quantization_version": 2,
        **tokenizer_metadata(ckpt, n_vocab),
    }
    plan: list[tuple[str, LazyTensor, GGMLType]] = []
    for t in tensors:
        name = arch.gguf_name(t.name)
        if name == "":
            raise LlmrtError(f"{hf_name}: no GGUF name for tensor {t.name}")
        if name is not None:
            plan.append((name, t, tensor_type(out_t, t.shape)))
    shards = split_plan([ttype.row_nbytes(math.prod(t.shape)) for _, t, ttype in plan],
                        split_max_size)  # fmt: skip
    outfile = Path(outfile)
    paths = [outfile] if len(shards) == 1 else [shard_path(outfile, i, len(shards))
                                                for i in range(len(shards))]  # fmt: skip
    with contextlib.ExitStack() as stack:
        for k, (path, members) in enumerate(zip(paths, shards, strict=True)):
            w = stack.enter_context(GGUFWriter(stack.enter_context(atomic_output(path))))
            for key, value in md.items() if k == 0 else ():
                w.add(key, value)
            if len(shards) > 1:  # llama.cpp's split keys, after the model's own
                w.add(SPLIT_NO, k, GGUFValueType.UINT16)
                w.add(SPLIT_COUNT, len(shards), GGUFValueType.UINT16)
                w.add(SPLIT_TENSORS, len(plan), GGUFValueType.INT32)
            for i in members:
                name, t, ttype = plan[i]

                def produce(name=name, t=t, ttype=ttype, i=i) -> np.ndarray:
                    values = t.load()
                    if arch.transform is not None:
                        values = arch.transform(name, values, config)
                    data = encode(values, ttype)
                    if progress is not None:
                        progress(name, i + 1, len(plan))
                    return data

                w.add_tensor(name, produce, ttype, t.shape)
    return paths[0]


def split_plan(sizes: list[int], max_size: int | None) -> list[list[int]]:
    """Tensors in order, a new shard whenever the next one would take the current shard past
    max_size bytes (llama.cpp's rule; a shard holds at least one tensor)."""
    shards: list[list[int]] = [[]]
    held = 0
    for i, size in enumerate(sizes):
        if max_size and shards[-1] and held + size > max_size:
            shards.append([])
            held = 0
        shards[-1].append(i)
        held += size
    return shards
