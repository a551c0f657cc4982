"""`llmrt quantize`: a GGUF file to another type, with llama-quantize's type names and mixes.

A mix (Q4_K_M, Q3_K_S...) names a default type and rules that keep the tensors most sensitive
to quantization at more bits: the output head at Q6_K, some layers' attn_v and ffn_down one or
two steps up (the "use more bits" layers: the first and last eighth, and every third between).
The rules here are llama-quantize's for dense models without an importance matrix; a row whose
length is not a whole block of the chosen type falls back as llama-quantize falls back.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmrt.errors import LlmrtError, UsageError
from llmrt.gguf import GGMLType, GGUFReader, GGUFWriter, atomic_output, dequantize, quantize
from llmrt.gguf.quants import QUANTIZERS

T = GGMLType
# name -> (general.file_type, default tensor type), as llama-quantize lists them
FTYPES: dict[str, tuple[int, GGMLType]] = {
    "F32": (0, T.F32), "F16": (1, T.F16), "BF16": (32, T.BF16),
    "Q4_0": (2, T.Q4_0), "Q4_1": (3, T.Q4_1), "Q5_0": (8, T.Q5_0), "Q5_1": (9, T.Q5_1),
    "Q8_0": (7, T.Q8_0), "Q2_K": (10, T.Q2_K), "Q2_K_S": (21, T.Q2_K), "Q3_K_S": (11, T.Q3_K),
    "Q3_K_M": (12, T.Q3_K), "Q3_K_L": (13, T.Q3_K), "Q4_K_S": (14, T.Q4_K),
    "Q4_K_M": (15, T.Q4_K), "Q5_K_S": (16, T.Q5_K), "Q5_K_M": (17, T.Q5_K), "Q6_K": (18, T.Q6_K),
    "IQ4_NL": (25, T.IQ4_NL),
}  # fmt: skip
PLAIN = (T.F32, T.F16, T.BF16)
# a 256-block type whose rows do not fit falls back to a 32-block one
FALLBACK = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}


def category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for part in ("attn_qkv", "attn_kv_b", "attn_v", "attn_k", "attn_q", "attn_output"):
        if f"{part}.weight" in name:
            return part
    for part in ("ffn_up", "ffn_gate", "ffn_down"):
        if part in name:
            return part
    return "other"


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


@dataclass
class Options:
    ftype: str
    pure: bool = False
    allow_requantize: bool = False
    output_type: GGMLType | None = None
    token_embedding_type: GGMLType | None = None
    threads: int | None = None  # None: the usable cores


@dataclass
class MixState:
    """Counters the rules read: how many attn_v-like tensors there are and which one this is,
    which ffn_down layer comes next, whether the output head is tied to the embedding."""

    n_layer: int
    n_gqa: int
    n_attn_v: int
    tied: bool
    is_70b: bool
    i_attn_v: int = 0
    i_ffn_down: int = 0
    seen: dict[str, int] = field(default_factory=dict)


def loader_order(tensor: Any) -> tuple[int, str]:
    """llama.cpp's order of a model's tensors (which llama-quantize writes, and counts layers
    in): those outside any layer first, then layer by layer, by name within each."""
    parts = tensor.name.split(".")
    layer = int(parts[1]) if parts[0] == "blk" and len(parts) > 1 and parts[1].isdigit() else -1
    return layer, tensor.name


def allows_quantization(name: str, shape: tuple[int, ...]) -> bool:
    return len(shape) >= 2 and name.endswith("weight") and "_norm.weight" not in name


def mixed_type(name: str, shape: tuple[int, ...], t: GGMLType, ftype: str, st: MixState,
               opts: Options) -> GGMLType:  # fmt: skip
    """The type a mix gives one tensor, before the row-length fallback (llama-quantize's
    llama_tensor_get_type_impl, for its non-IQ mixes and IQ4_NL without an importance matrix)."""
    cat = category(name)
    if cat == "output" or (st.tied and cat == "token_embd"):
        if opts.output_type is not None:
            return opts.output_type
        if shape[-1] % t.block_size:
            return T.Q8_0
        return t if t == T.Q8_0 else T.Q6_K
    if cat == "token_embd":
        return opts.token_embedding_type or t
    if cat in ("attn_v", "attn_qkv", "attn_kv_b"):
        i, n = st.i_attn_v, st.n_attn_v
        st.i_attn_v += 1
        if ftype == "Q2_K":
            t = T.Q4_K if st.n_gqa >= 4 else T.Q3_K
        elif ftype == "Q2_K_S" and st.n_gqa >= 4:
            t = T.Q4_K
        elif ftype == "Q3_K_M":
            t = T.Q5_K if i < 2 else T.Q4_K
        elif ftype == "Q3_K_L" or ftype == "IQ4_NL" and st.n_gqa >= 4:
            t = T.Q5_K
        elif ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
            t = T.Q6_K
        elif ftype == "Q4_K_S" and i < 4:
            t = T.Q5_K
        if st.is_70b and t in (T.Q3_K, T.Q4_K):
            t = T.Q5_K
        return t
    if cat == "ffn_down":
        i, n = st.i_ffn_down, st.n_layer
        st.i_ffn_down += 1
        if ftype == "Q2_K":
            return T.Q3_K
        if ftype == "Q2_K_S":
            return T.Q4_K if i < n // 8 else t
        if ftype == "Q3_K_M":
            return T.Q5_K if i < n // 16 else T.Q4_K
        if ftype == "Q3_K_L":
            return T.Q5_K
        if ftype == "Q4_K_M":
            return T.Q6_K if use_more_bits(i, n) else t
        if i < n // 8 and ftype == "IQ4_NL":
            return T.Q5_K
        if ftype == "Q5_K_M" and use_more_bits(i, n):
            return T.Q6_K
        if ftype == "Q4_K_S" and i < n // 8:
            return T.Q5_K
        return t
    if cat == "attn_output":
        return {"Q2_K": T.Q3_K, "Q3_K_M": T.Q4_K, "Q3_K_L": T.Q5_K}.get(ftype, t)
    return t


def row_fallback(t: GGMLType, n_cols: int) -> GGMLType:
    if n_cols % t.block_size == 0:
        return t
    t = FALLBACK.get(t, t) if t.block_size > 32 else t
    return t if n_cols % t.block_size == 0 else T.F16


def target_type(name: str, shape: tuple[int, ...], st: MixState, opts: Options,
                current: GGMLType) -> GGMLType:  # fmt: skip
    if not allows_quantization(name, shape):
        return current
    cat = category(name)
    if opts.token_embedding_type is not None and cat == "token_embd":
        return opts.token_embedding_type
    if opts.output_type is not None and cat == "output":
        return opts.output_type
    t = FTYPES[opts.ftype][1]
    if t in PLAIN:
        return t
    if not opts.pure:
        t = mixed_type(name, shape, t, opts.ftype, st, opts)
    return row_fallback(t, shape[-1])


def encode(values: np.ndarray, t: GGMLType, threads: int = 1) -> np.ndarray:
    """A tensor in type t; quantized a slice of rows per thread (numpy releases the GIL, and
    blocks are independent, so the bytes do not depend on the split)."""
    if t == T.F32:
        return np.ascontiguousarray(values, np.float32)
    if t == T.F16:
        return values.astype(np.float16)
    rows = values.reshape(-1, values.shape[-1])
    if threads < 2 or len(rows) < 2 * threads:
        return quantize(rows, t)
    parts = np.array_split(rows, threads)
    with ThreadPoolExecutor(threads) as pool:
        return np.concatenate(list(pool.map(lambda part: quantize(part, t), parts)))


def quantize_file(
    src: str | Path, dst: str | Path, opts: Options,
    progress: Callable[[str, GGMLType, GGMLType, int, int], None] | None = None,
) -> Path:  # fmt: skip
    """Write `dst`: `src`'s metadata (with the new file type) and tensors, each in the type the
    mix gives it. `progress(name, old type, new type, done, total)` after each tensor."""
    if opts.ftype not in FTYPES:
        raise UsageError(f"unknown type {opts.ftype}; llmrt quantize takes {', '.join(FTYPES)}")
    threads = opts.threads or len(os.sched_getaffinity(0))
    reader = GGUFReader(src)
    md = reader.metadata
    arch = md.get("general.architecture")
    if not isinstance(arch, str):
        raise LlmrtError(f"{src} has no general.architecture: not a model file")
    n_head = int(md.get(f"{arch}.attention.head_count", 1))
    n_head_kv = int(md.get(f"{arch}.attention.head_count_kv", n_head) or n_head)
    n_layer = int(md.get(f"{arch}.block_count", 0))
    names = [t.name for t in reader.tensors]
    st = MixState(
        n_layer=n_layer, n_gqa=n_head // max(n_head_kv, 1),
        n_attn_v=sum(category(n) in ("attn_v", "attn_qkv", "attn_kv_b") for n in names),
        tied="output.weight" not in names,
        is_70b=arch == "llama" and n_layer == 80 and n_head != n_head_kv,
    )  # fmt: skip
    plan: list[tuple[Any, GGMLType]] = []
    for t in sorted(reader.tensors, key=loader_order):
        new = target_type(t.name, tuple(t.shape), st, opts, t.type)
        if new != t.type and t.type not in PLAIN and not opts.allow_requantize:
            raise LlmrtError(f"{t.name} is already {t.type.name}: requantizing loses accuracy; "
                             f"give --allow-requantize to do it anyway")  # fmt: skip
        if opts.ftype == "Q2_K_S" and new == T.Q2_K:  # llama-quantize's rule, for its quality
            raise LlmrtError("Q2_K_S needs an importance matrix (as llama-quantize says), which "
                             "llmrt quantize does not take yet: use Q2_K or Q3_K_S")  # fmt: skip
        if new not in PLAIN and new not in QUANTIZERS:
            raise LlmrtError(f"quantizing to {new.name} is not supported yet (supported: "
                             f"{', '.join(q.name for q in QUANTIZERS)})")  # fmt: skip
        plan.append((t, new))
    with atomic_output(dst) as part, GGUFWriter(part, alignment=reader.alignment) as w:
        types = reader.metadata_types
        for key, value in md.items():
            if key not in ("general.file_type", "general.quantization_version"):
                w.add(key, value, types.get(key))
        w.add("general.quantization_version", 2)
        w.add("general.file_type", FTYPES[opts.ftype][0])
        for i, (t, new) in enumerate(plan):

            def produce(t=t, new=new, i=i) -> np.ndarray:
                if new == t.type:
                    data = np.asarray(t.data)
                else:
                    values = dequantize(np.asarray(t.data), t.type, tuple(t.shape))
                    data = encode(values.reshape(t.shape), new, threads)
                if progress is not None:
                    progress(t.name, t.type, new, i + 1, len(plan))
                return data

            w.add_tensor(t.name, produce, new, tuple(t.shape))
    return Path(dst)
