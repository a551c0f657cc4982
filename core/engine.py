"""Loading a model onto a device, and contexts: the KV cache, batches, prefill and decode.

A `Context` owns a unified KV cache of `n_ctx` cells shared by any number of sequences (as
llama.cpp's): each cell remembers the position and sequence of the token written there, and the
attention mask of a batch is computed from that. Graphs are built and compiled once per shape
(tokens in the batch, visible cells rounded up to KV_STEP, logits rows wanted) and replayed.
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from llmrt.device import Device, DeviceType, Executable, get_devices, registry
from llmrt.errors import LlmrtError, OutOfDeviceMemory, UsageError
from llmrt.gguf.constants import GGMLType
from llmrt.gguf.split import ModelFiles
from llmrt.ir.sched import SplitProgram, layer_devices, place
from llmrt.models import Shape, get_architecture

KV_STEP = 256  # visible KV cells are padded to this, so decode reuses a graph for 256 steps
KV_TYPES = {"f16": GGMLType.F16, "f32": GGMLType.F32}
# llama.cpp's sequence state files (llama_state_seq_save_file): 'ggsq', its version, the tokens
STATE_SEQ_MAGIC, STATE_SEQ_VERSION = 0x67677371, 3
KV_MAGIC = b"llmrt-kv"  # what follows the tokens in ours: a JSON header, positions, cache rows
# llama.cpp's pooling types, by their number in a GGUF's `{arch}.pooling_type` (4 is rank)
POOLING = {0: "none", 1: "mean", 2: "cls", 3: "last"}
DEVICE_RESERVE = 512 << 20  # bytes a GPU keeps free beyond the weights (KV cache, activations)


class ContextFull(LlmrtError):
    """The batch does not fit in the free cells of the KV cache."""


class Model:
    """A GGUF model with its weights on a device, and its tokenizer."""

    def __init__(
        self, path: str | os.PathLike[str], device: str | Device | Sequence[str | Device] = "auto",
        n_gpu_layers: int = -1, threads: int | None = None,
        tensor_split: Sequence[float] | None = None, split_mode: str = "layer", main_gpu: int = 0,
    ) -> None:  # fmt: skip
        self.path = Path(path)
        if self.path.is_dir():
            raise LlmrtError(f"{self.path} is a directory, not a GGUF file")
        if not self.path.is_file():
            raise LlmrtError(f"model file not found: {self.path}")
        self.reader = ModelFiles(self.path)  # one GGUF file, or the shards of a split one
        self.metadata = self.reader.metadata
        arch_name = self.metadata.get("general.architecture")
        if not isinstance(arch_name, str):
            raise LlmrtError(f"{self.path} has no general.architecture: not a model file")
        self.arch = get_architecture(arch_name)
        self.hp = self.arch.hparams(self.metadata)
        # the devices the layers are split over (--device a,b), the first one the primary
        self.devices = pick_devices(get_devices(device), split_mode, main_gpu)
        self.device = self.devices[0]
        self.host = registry().host()
        # -t: the host threads of the backends that run this model (None: each one's default)
        for backend in {d.backend for d in self.devices} - {self.host.backend}:
            backend.set_threads(threads)
        self.threads = self.host.backend.set_threads(threads)
        if tensor_split is None and len(self.devices) > 1:
            tensor_split = default_split(self.devices)
        self.layers = layer_devices(self.hp.n_layer, n_gpu_layers, self.devices, self.host,
                                    tensor_split)  # fmt: skip
        self.weight_meta = {t.name: (t.shape, t.type) for t in self.reader.tensors}
        # Where each weight and cache tensor lives: placed from the decode graph (one token),
        # since every shape reads the same leaves from the same layers (a shape that reads one
        # elsewhere gets it bound there when its graph is built).
        probe = self.arch.build(self.hp, Shape(1, KV_STEP, 1, KV_STEP), self.weight_meta)
        self.placement = place(probe, self.layers, self.host)
        self.leaf_devices = self.placement.leaf_devices()
        self._check_memory()
        self.bindings: dict[Device, dict[str, Any]] = {d: {} for d in set(self.layers)}
        self.bind(self.leaf_devices)
        # the decode graph runs on more than one device with partial offload, or where a device
        # declines an op (llama.cpp's "graph splits")
        self.decode_segments = self.placement.segments()
        self.split = len(self.decode_segments) > 1

    def bind(self, leaf_devices: dict[str, set[Device]]) -> None:
        """Upload each weight to the devices that read it, where it is not there already."""
        tensors = None
        for key, devices in leaf_devices.items():
            for dev in devices:
                held = self.bindings.setdefault(dev, {})
                if key in held or key not in self.weight_meta:
                    continue  # bound already, or a state (a context allocates those)
                tensors = tensors or {t.name: t for t in self.reader.tensors}
                held[key] = dev.upload(tensors[key])

    def _check_memory(self) -> None:
        """Fail before uploading anything when a discrete GPU lacks the free memory that the
        weights placed on it need: one line with what is needed, what is free and which -ngl
        would fit (DEVICE_RESERVE is kept free for the KV cache and activations)."""
        for dev in {d for d in self.layers if d is not self.host}:
            try:
                info = dev.info()
            except Exception:
                continue
            # a driver that cannot say what is free (OpenCL's) is held to what the device has
            known = info.memory_free if info.memory_free is not None else info.memory_total
            if info.type is not DeviceType.GPU or known is None:
                continue
            what = "is free" if info.memory_free is not None else "is all it has"
            tensors = self.reader.tensors
            need = sum(t.nbytes for t in tensors if dev in self.leaf_devices.get(t.name, ()))
            free = known - DEVICE_RESERVE
            if need <= free:
                continue
            n_layer = self.hp.n_layer
            per_layer = [0] * n_layer
            for t in tensors:
                parts = t.name.split(".")
                if parts[0] == "blk" and len(parts) > 1 and parts[1].isdigit():
                    per_layer[int(parts[1]) % n_layer] += t.nbytes
            fit, total = 0, 0
            for k in range(1, n_layer + 1):
                total += per_layer[n_layer - k]
                if total > free:
                    break
                fit = k
            raise OutOfDeviceMemory(
                f"not enough memory on {dev.id}: the weights need {need / 2**30:.2f} GiB, "
                f"{max(free, 0) / 2**30:.2f} GiB {what} (keeping {DEVICE_RESERVE >> 20} MiB "
                f"for the KV cache and activations); -ngl {fit} would fit"
            )

    @cached_property
    def tokenizer(self) -> Any:
        from llmrt.tokenizer import Tokenizer

        return Tokenizer.from_metadata(self.metadata)

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.reader.tensors)

    @property
    def size_bytes(self) -> int:
        return sum(t.nbytes for t in self.reader.tensors)

    def context(self, **kwargs: Any) -> Context:
        return Context(self, **kwargs)

    @property
    def pooling(self) -> str | None:
        """The pooling the GGUF names for embeddings (`{arch}.pooling_type`), or None."""
        value = self.metadata.get(f"{self.hp.arch}.pooling_type")
        return POOLING.get(int(value)) if isinstance(value, int) else None

    def embed(
        self, prompt: str | Sequence[int], pooling: str | None = None, normalize: int = 2,
        n_ctx: int = 4096,
    ) -> np.ndarray:  # fmt: skip
        """The embedding of a prompt (text or token ids): f32[n_embd], or f32[n_tokens, n_embd]
        with pooling "none". `pooling`: none, mean, cls or last (None: the GGUF's, else mean);
        `normalize` as llama.cpp's embd_normalize (2: Euclidean, -1: none)."""
        ids = self.tokenize(prompt, parse_special=True) if isinstance(prompt, str) else prompt
        return self.context(n_ctx=n_ctx).embed(list(ids), pooling, normalize=normalize)

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False):
        return self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def generate(
        self, prompt: str | Sequence[int], n_predict: int = 128, *, n_ctx: int = 4096,
        **sampling: Any,
    ) -> Iterator[str]:  # fmt: skip
        """Stream the text generated after `prompt` (text or token ids). Keyword arguments are
        `llmrt.sampling.SamplingParams` fields (temperature=0 for greedy, seed, top_k, ...)."""
        from llmrt.sampling import Sampler, SamplingParams

        ids = self.tokenize(prompt, parse_special=True) if isinstance(prompt, str) else prompt
        ctx = self.context(n_ctx=n_ctx)
        sampler = Sampler(SamplingParams(**sampling), self.hp.n_vocab)
        decoder = self.tokenizer.decoder()
        for token in generate(ctx, list(ids), n_predict, sampler, self.tokenizer.eog_ids):
            if token not in self.tokenizer.eog_ids:
                yield decoder.add(token)
        yield decoder.flush()


@dataclass
class Timings:
    """Counters for llama.cpp's timing lines."""

    t_load_ms: float = 0.0
    n_prompt: int = 0
    t_prompt_ms: float = 0.0
    n_eval: int = 0
    t_eval_ms: float = 0.0
    t_sample_ms: float = 0.0
    n_sample: int = 0


@dataclass
class Batch:
    """Tokens to evaluate, each with its position, sequence and whether its logits are wanted."""

    tokens: np.ndarray
    pos: np.ndarray
    seq: np.ndarray
    logits: np.ndarray  # bool per token

    @staticmethod
    def of(tokens: Sequence[int], start: int, seq: int = 0, all_logits: bool = False) -> Batch:
        n = len(tokens)
        want = np.ones(n, bool) if all_logits else np.arange(n) == n - 1
        return Batch(
            np.asarray(tokens, np.int32),
            np.arange(start, start + n, dtype=np.int32),
            np.full(n, seq, np.int32),
            want,
        )


class Context:
    """A KV cache and the compiled graphs that read and write it."""

    def __init__(
        self, model: Model, n_ctx: int = 4096, n_ubatch: int = 512, kv_type: str = "f16"
    ) -> None:
        if n_ctx < 0:
            raise UsageError(f"the context size must be >= 0 (0: the model's), got {n_ctx}")
        if n_ctx == 0:
            n_ctx = model.hp.n_ctx_train
        if n_ubatch <= 0:
            raise UsageError(f"batch size must be positive, got {n_ubatch}")
        if kv_type not in KV_TYPES:
            raise UsageError(f"KV cache type must be one of {', '.join(KV_TYPES)}, not {kv_type}")
        self.model, self.n_ctx, self.n_ubatch = model, n_ctx, n_ubatch
        self.kv_type = KV_TYPES[kv_type]
        hp = model.hp
        cache = (n_ctx, hp.n_head_kv, hp.head_dim)
        # each cache on the one device that placement gave it (the host where the layer's device
        # declines writing or viewing it); every graph built later is placed with it pinned there
        self.state_device: dict[str, Device] = {}
        for il in range(hp.n_layer):
            for kind in ("k", "v"):
                key = f"cache_{kind}.{il}"
                (dev,) = model.leaf_devices.get(key, {model.layers[il]})
                self.state_device[key] = dev
        self._check_memory({key: {dev} for key, dev in self.state_device.items()})
        self.state: dict[Device, dict[str, Any]] = {}
        for key, dev in self.state_device.items():
            self.state.setdefault(dev, {})[key] = dev.new_state(cache, self.kv_type)
        self.cell_pos = np.full(n_ctx, -1, np.int64)
        self.cell_seq = np.full(n_ctx, -1, np.int64)
        # kept in step with the cells, so that a decode step scans none of them: cells in use,
        # one past the highest of them, and each sequence's length (filled in on demand)
        self._n_used = 0
        self._hi = 0
        self._seq_next: dict[int, int] = {}
        self.graphs: dict[tuple[int, int, int, bool], Executable] = {}
        self.timings = Timings()

    def _check_memory(self, where: dict[str, set[Device]]) -> None:
        """Fail before allocating when a device lacks the free memory its part of the KV cache
        needs: one line with what is needed, what is free and which -c would fit (a tenth of
        the free memory is left for activations and scratch)."""
        hp = self.model.hp
        cell_bytes = hp.n_head_kv * hp.head_dim * (2 if self.kv_type == GGMLType.F16 else 4)
        per_cell: dict[Device, int] = {}
        for devices in where.values():
            for dev in devices:
                per_cell[dev] = per_cell.get(dev, 0) + cell_bytes
        for dev, per in per_cell.items():
            try:
                free = dev.info().memory_free
            except Exception:  # a driver that cannot say: the allocation itself will tell
                continue
            if free is None or per * self.n_ctx <= 0.9 * free:
                continue
            fit = int(0.9 * free // per) // KV_STEP * KV_STEP
            raise OutOfDeviceMemory(
                f"not enough memory on {dev.id} for a context of {self.n_ctx} tokens: its KV "
                f"cache needs {per * self.n_ctx / 2**30:.2f} GiB, {free / 2**30:.2f} GiB is "
                f"free; -c {fit} would fit"
                + (" (-ctk f16 halves the cache)" if self.kv_type == GGMLType.F32 else "")
            )

    # --- cache bookkeeping ---
    def seq_len(self, seq: int = 0) -> int:
        """One past the highest position held for a sequence (0 when it holds none)."""
        n = self._seq_next.get(seq)
        if n is None:
            held = self.cell_pos[self.cell_seq == seq]
            n = self._seq_next[seq] = int(held.max()) + 1 if held.size else 0
        return n

    def remove(self, seq: int | None = None, start: int = 0, stop: int | None = None) -> None:
        """Forget positions [start, stop) of a sequence (of every sequence when seq is None)."""
        hit = (self.cell_pos >= start) & (self.cell_pos < (stop if stop is not None else 1 << 62))
        if seq is not None:
            hit &= self.cell_seq == seq
        self.cell_pos[hit] = -1
        self.cell_seq[hit] = -1
        used = np.flatnonzero(self.cell_pos >= 0)
        self._n_used = len(used)
        self._hi = int(used[-1]) + 1 if len(used) else 0
        self._seq_next.clear()

    def clear(self) -> None:
        self.remove(None)

    @property
    def n_free(self) -> int:
        return self.n_ctx - self._n_used

    # --- a sequence's state (llama.cpp's llama_state_seq_*) ---
    def read_seq(self, seq: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """A sequence's cells in position order: their positions, and each cache tensor's rows
        for them, as host arrays (read from whatever device holds each layer's cache)."""
        cells = np.flatnonzero(self.cell_seq == seq)
        cells = cells[np.argsort(self.cell_pos[cells], kind="stable")]
        rows = {}
        for key, dev in self.state_device.items():
            rows[key] = self.state[dev][key].read()[cells]
        return self.cell_pos[cells].copy(), rows

    def write_seq(self, seq: int, pos: np.ndarray, rows: dict[str, np.ndarray]) -> None:
        """Replace a sequence's cells by `pos` with these cache rows (from `read_seq`)."""
        pos = np.asarray(pos, np.int64)
        if set(rows) != set(self.state_device):
            raise UsageError("the saved state does not have this model's cache tensors")
        for key, dev in self.state_device.items():
            want = self.state[dev][key].shape[1:]
            if rows[key].shape != (len(pos), *want):
                shape = [len(pos), *want]
                raise UsageError(f"the saved {key} rows are {list(rows[key].shape)}, this "
                                 f"context's {shape}")  # fmt: skip
        self.remove(seq)
        if len(pos) > self.n_free:
            raise ContextFull(f"the state has {len(pos)} cells, {self.n_free} are free")
        cells = np.flatnonzero(self.cell_pos < 0)[: len(pos)]
        for key, dev in self.state_device.items():
            buf = self.state[dev][key]
            whole = buf.read()
            whole[cells] = rows[key]
            dev.write_state(buf, whole)
        self.cell_pos[cells] = pos
        self.cell_seq[cells] = seq
        used = np.flatnonzero(self.cell_pos >= 0)
        self._n_used = len(used)
        self._hi = int(used[-1]) + 1 if len(used) else 0
        self._seq_next.clear()

    def save_seq_file(self, path: str | os.PathLike[str], seq: int, tokens: Sequence[int]) -> int:
        """Write a sequence's KV cache to a file; returns the bytes written. The layout starts
        as llama.cpp's llama_state_seq_save_file ('ggsq', version 3, the token count and the
        tokens, i32), so tools that read its token section read ours; the cache that follows is
        llmrt's: a JSON header (architecture, cache shape and type), the cells' positions and
        each cache tensor's rows (llama.cpp's own layout is tied to its ggml tensors)."""
        pos, rows = self.read_seq(seq)
        keys = list(self.state_device)
        hp = self.model.hp
        head = json.dumps({
            "arch": hp.arch, "n_layer": hp.n_layer, "n_embd": hp.n_embd, "n_cells": len(pos),
            "keys": keys, "shape": list(rows[keys[0]].shape[1:]),
            "dtype": str(rows[keys[0]].dtype),
        }).encode()  # fmt: skip
        tokens = np.asarray(tokens, "<i4")
        with open(path, "wb") as f:
            f.write(struct.pack("<III", STATE_SEQ_MAGIC, STATE_SEQ_VERSION, len(tokens)))
            f.write(tokens.tobytes())
            f.write(KV_MAGIC + struct.pack("<I", len(head)) + head)
            f.write(np.asarray(pos, "<i8").tobytes())
            for key in keys:
                f.write(np.ascontiguousarray(rows[key]).tobytes())
            return f.tell()

    def load_seq_file(self, path: str | os.PathLike[str], seq: int) -> tuple[list[int], int]:
        """Read a file of `save_seq_file` into a sequence (what it held is forgotten); returns
        the tokens saved with it and the bytes read. A file of another model, or not one of
        these, raises a one-line UsageError."""
        with open(path, "rb") as f:
            data = f.read()
        name = os.path.basename(os.fspath(path))

        def bad(why: str) -> UsageError:
            return UsageError(f"{name} is not a slot state of this model: {why}")

        if len(data) < 12:
            raise bad("too short")
        magic, version, n_tokens = struct.unpack_from("<III", data)
        if magic != STATE_SEQ_MAGIC or version != STATE_SEQ_VERSION:
            raise bad("no 'ggsq' version 3 header")
        at = 12 + 4 * n_tokens
        if len(data) < at + len(KV_MAGIC) + 4 or data[at : at + len(KV_MAGIC)] != KV_MAGIC:
            raise bad("its cache is not llmrt's")
        tokens = np.frombuffer(data, "<i4", n_tokens, 12).tolist()
        at += len(KV_MAGIC)
        (n_head,) = struct.unpack_from("<I", data, at)
        try:
            head = json.loads(data[at + 4 : at + 4 + n_head])
            keys, n_cells = list(head["keys"]), int(head["n_cells"])
            shape, dtype = tuple(int(d) for d in head["shape"]), np.dtype(head["dtype"])
        except (ValueError, KeyError, TypeError) as exc:
            raise bad(f"a broken header ({exc})") from None
        hp = self.model.hp
        if (head.get("arch"), head.get("n_layer"), head.get("n_embd")) != (
            hp.arch,
            hp.n_layer,
            hp.n_embd,
        ):
            raise bad(f"it was saved from a {head.get('arch')} with {head.get('n_layer')} layers")
        if dtype not in (np.float16, np.float32) or n_cells < 0:
            raise bad("a broken header")
        at += 4 + n_head
        size = n_cells * int(np.prod(shape)) * dtype.itemsize
        if len(data) != at + 8 * n_cells + size * len(keys):
            raise bad("its size does not match its header")
        pos = np.frombuffer(data, "<i8", n_cells, at)
        at += 8 * n_cells
        rows = {}
        for key in keys:
            rows[key] = np.frombuffer(data, dtype, n_cells * int(np.prod(shape)), at)
            rows[key] = rows[key].reshape(n_cells, *shape)
            at += size
        self.write_seq(seq, pos, rows)
        return tokens, len(data)

    # --- evaluation ---
    def decode(
        self, batch: Batch, prompt: bool | None = None, embeddings: bool = False
    ) -> np.ndarray:
        """Evaluate a batch in ubatches; returns logits [n wanted, n_vocab] in batch order, or
        with `embeddings` the final hidden states [n wanted, n_embd] (after the output norm;
        the lm head is not computed).

        `prompt` says which timing line the work counts in (default: a batch of more than one
        token is prompt evaluation, a single token is generation)."""
        n = len(batch.tokens)
        n_vocab = self.model.hp.n_vocab
        width = self.model.hp.n_embd if embeddings else n_vocab
        if n == 0:
            return np.zeros((0, width), np.float32)
        if n > self.n_free:
            raise ContextFull(
                f"the context is full: {n} tokens do not fit in the {self.n_free} free of "
                f"{self.n_ctx} cells (raise -c)"
            )
        if int(batch.tokens.min()) < 0 or int(batch.tokens.max()) >= n_vocab:
            raise UsageError(f"token id out of range [0, {n_vocab})")
        t0 = time.perf_counter()
        out = []
        for s in range(0, n, self.n_ubatch):
            part = slice(s, min(n, s + self.n_ubatch))
            want = batch.logits[part]
            if want.any():
                out.append(self._decode_ubatch(batch.tokens[part], batch.pos[part],
                                               batch.seq[part], want, embeddings))  # fmt: skip
            else:
                # A ubatch whose logits nobody wants (the head of a long prompt) still computes
                # its last row's: no backend is ever asked for a graph with an empty output.
                last = np.zeros(len(want), bool)
                last[-1] = True
                self._decode_ubatch(batch.tokens[part], batch.pos[part], batch.seq[part], last,
                                    embeddings)  # fmt: skip
        dt = (time.perf_counter() - t0) * 1e3
        if prompt if prompt is not None else n > 1:
            self.timings.n_prompt += n
            self.timings.t_prompt_ms += dt
        else:
            self.timings.n_eval += n
            self.timings.t_eval_ms += dt
        if not out:
            return np.zeros((0, width), np.float32)
        return np.concatenate(out) if len(out) > 1 else out[0]

    def _decode_ubatch(self, tokens, pos, seq, want, embeddings: bool = False) -> np.ndarray:
        n = len(tokens)
        if n == 1:
            s = int(seq[0])
            self._seq_next[s] = max(self.seq_len(s), int(pos[0]) + 1)
        else:
            for s in set(seq.tolist()):
                self._seq_next[s] = max(self.seq_len(s), int(pos[seq == s].max()) + 1)
        if self._n_used == self._hi:  # no holes: the free cells follow the used ones
            cells = np.arange(self._hi, self._hi + n)
        else:
            cells = np.flatnonzero(self.cell_pos < 0)[:n]
        self.cell_pos[cells] = pos
        self.cell_seq[cells] = seq
        self._n_used += n
        self._hi = max(self._hi, int(cells[-1]) + 1)
        n_kv = min(self.n_ctx, -(-self._hi // KV_STEP) * KV_STEP)
        out_rows = np.flatnonzero(want).astype(np.int32)
        inputs = {
            "tokens": tokens,
            "pos": pos,
            "kv_cells": cells.astype(np.int32),
            "out_rows": out_rows,
            **self._masks(pos, seq, n_kv),
        }
        exe = self._executable(n, n_kv, len(out_rows), embeddings)
        return np.asarray(exe.run(inputs)["embd" if embeddings else "logits"], np.float32)

    def _masks(self, pos: np.ndarray, seq: np.ndarray, n_kv: int) -> dict[str, np.ndarray]:
        cell_pos, cell_seq = self.cell_pos[:n_kv], self.cell_seq[:n_kv]
        visible = (cell_seq[None, :] == seq[:, None]) & (cell_pos[None, :] <= pos[:, None])
        zero, hidden = np.float32(0.0), np.float32(-np.inf)
        masks = {"mask": np.where(visible, zero, hidden)}
        window = self.model.hp.swa_window
        if self.model.hp.swa_pattern:
            near = pos[:, None] - cell_pos[None, :] < window
            masks["mask_swa"] = np.where(visible & near, zero, hidden)
        return masks

    def _executable(self, n_tokens: int, n_kv: int, n_out: int, embd: bool = False) -> Executable:
        key = (n_tokens, n_kv, n_out, embd)
        exe = self.graphs.get(key)
        if exe is None:
            model = self.model
            shape = Shape(n_tokens, n_kv, n_out, self.n_ctx, self.kv_type, embeddings=embd)
            graph = model.arch.build(model.hp, shape, model.weight_meta)
            if embd and "embd" not in graph.outputs:  # a third party's builder may not have it
                raise UsageError(
                    f"the {model.hp.arch} architecture gives no embeddings (its graph has no "
                    "`embd` output)"
                )
            # every graph is placed (supports_op may depend on the shape); one that lands on one
            # device is compiled whole, without the split program's hand-offs
            placed = place(graph, model.layers, model.host, states=self.state_device)
            model.bind(placed.leaf_devices())
            bindings = {
                dev: {**model.bindings.get(dev, {}), **self.state.get(dev, {})}
                for dev in set(model.bindings) | set(self.state)
            }
            segments = placed.segments()
            if len(segments) == 1:
                exe = segments[0].compile(graph, bindings.get(segments[0], {}))
            else:
                exe = SplitProgram(graph, placed, bindings)
            self.graphs[key] = exe
        return exe

    # --- convenience for one sequence ---
    def eval(
        self, tokens: Sequence[int], seq: int = 0, all_logits: bool = False,
        prompt: bool | None = None,
    ) -> np.ndarray:  # fmt: skip
        """Append tokens to a sequence; returns the last token's logits (or every token's)."""
        logits = self.decode(Batch.of(tokens, self.seq_len(seq), seq, all_logits), prompt)
        return logits if all_logits else logits[-1]

    def embed(
        self, tokens: Sequence[int], pooling: str | None = None, seq: int = 0, normalize: int = 2
    ) -> np.ndarray:
        """The embedding of a prompt, evaluated as sequence `seq` from position 0 (whatever the
        sequence held is forgotten; afterwards it holds the prompt): f32[n_embd] pooled and
        normalized, or with pooling "none" every token's hidden state, f32[n_tokens, n_embd],
        not normalized (as llama-server). `pooling`: none, mean, cls or last (None: the model's
        from its GGUF, else mean); `normalize`: llama.cpp's embd_normalize."""
        pooling = check_pooling(pooling if pooling is not None else self.model.pooling or "mean")
        self.remove(seq)
        check_prompt_fits(self, tokens)
        want = pooling in ("mean", "none")
        batch = Batch.of(tokens, 0, seq, all_logits=want)
        if pooling == "cls":
            batch.logits[:] = False
            batch.logits[0] = True
        rows = self.decode(batch, prompt=True, embeddings=True)
        return pool_embeddings(rows, pooling, normalize)


@dataclass
class GenerationResult:
    tokens: list[int] = field(default_factory=list)
    stop: str = ""  # "eog", "length"


def check_pooling(pooling: str) -> str:
    if pooling not in POOLING.values():
        raise UsageError(f"pooling must be none, mean, cls or last, not {pooling!r}")
    return pooling


def pool_embeddings(rows: np.ndarray, pooling: str, normalize: int = 2) -> np.ndarray:
    """Pool the hidden states of a prompt's tokens as llama.cpp does: `rows` are every token's
    (mean, none), the first's (cls) or the last's (last). Pooled vectors are normalized with
    llama.cpp's embd_normalize (common_embd_normalize: -1 none, 0 max-abs scaled to int16,
    1 taxicab, 2 Euclidean, p > 2 p-norm); "none" gives the rows as they are."""
    rows = np.asarray(rows, np.float32)
    if pooling == "none":
        return rows
    v = rows.mean(axis=0) if pooling == "mean" else rows[-1 if pooling == "last" else 0]
    return normalize_embedding(v, normalize)


def normalize_embedding(v: np.ndarray, p: int = 2) -> np.ndarray:
    x = np.asarray(v, np.float64)
    if p == -1:
        norm = 1.0
    elif p == 0:
        norm = float(np.abs(x).max(initial=0.0)) / 32760.0
    elif p == 2:
        norm = float(np.sqrt((x * x).sum()))
    else:
        norm = float((np.abs(x) ** p).sum() ** (1.0 / p))
    return (x * (1.0 / norm if norm > 0 else 0.0)).astype(np.float32)


def check_prompt_fits(ctx: Context, prompt: Sequence[int]) -> None:
    """Raise a one-line error for an empty prompt or one the context cannot hold."""
    if len(prompt) == 0:
        raise UsageError("the prompt is empty")
    if len(prompt) > ctx.n_free:
        raise ContextFull(
            f"the prompt has {len(prompt)} tokens, more than the context holds "
            f"({ctx.n_free} free of {ctx.n_ctx}; raise -c)"
        )


def generate(
    ctx: Context,
    prompt: Sequence[int],
    n_predict: int,
    sampler: Any,
    eog: set[int] | frozenset[int] = frozenset(),
    seq: int = 0,
    result: GenerationResult | None = None,
) -> Iterator[int]:
    """Evaluate the prompt, then yield sampled tokens until an end-of-generation token (yielded
    too) or n_predict tokens (n_predict < 0: until the context is full)."""
    result = result if result is not None else GenerationResult()
    check_prompt_fits(ctx, prompt)
    for tok in prompt:
        sampler.accept(int(tok))
    logits = ctx.eval(prompt, seq, prompt=True)
    count = 0
    while n_predict < 0 or count < n_predict:
        t0 = time.perf_counter()
        tok = sampler.sample(logits)
        ctx.timings.t_sample_ms += (time.perf_counter() - t0) * 1e3
        ctx.timings.n_sample += 1
        count += 1
        result.tokens.append(tok)
        yield tok
        if tok in eog:
            result.stop = "eog"
            return
        if count == n_predict:  # the last token is not evaluated: nothing would read its logits
            break
        if ctx.n_free == 0:
            result.stop = "context"
            return
        logits = ctx.eval([tok], seq, prompt=False)
    result.stop = "length"


def load(
    model: str | os.PathLike[str] | None = None,
    device: str | Device | Sequence[str | Device] = "auto",
    n_gpu_layers: int = -1,
    threads: int | None = None,
    tensor_split: Sequence[float] | None = None,
    split_mode: str = "layer",
    main_gpu: int = 0,
) -> Model:
    """Load a GGUF file, or a known model by name (fetched once into the cache; see
    `llmrt pull --list`). No model: the default model. `device`: one device, or several to split
    the layers over ("cuda:0,cuda:1", "vulkan:0,cpu"), in `tensor_split` proportions (None: by
    free memory); `split_mode` "none" runs on the `main_gpu`-th of them alone (llama.cpp's -sm
    and -mg). `threads`: host threads for the kernels (None: the physical cores)."""
    from llmrt import pull

    return Model(pull.resolve(model), device, n_gpu_layers, threads, tensor_split, split_mode,
                 main_gpu)  # fmt: skip


def pick_devices(devices: list[Device], split_mode: str, main_gpu: int) -> list[Device]:
    """llama.cpp's --split-mode: "layer" keeps every device, "none" the main one alone."""
    if split_mode not in ("layer", "none", "row"):
        raise UsageError(f"--split-mode takes none, layer or row, not {split_mode!r}")
    if split_mode == "row":
        raise UsageError("--split-mode row is not supported: llmrt splits a model by layer")
    if not 0 <= main_gpu < len(devices):
        raise UsageError(
            f"--main-gpu {main_gpu} names no device: {len(devices)} given "
            f"({', '.join(d.id for d in devices)}), counted from 0"
        )
    return [devices[main_gpu]] if split_mode == "none" else devices


def default_split(devices: Sequence[Device]) -> list[float]:
    """llama.cpp's default --tensor-split: each device's free memory (equal shares where a
    device cannot say)."""
    free = []
    for dev in devices:
        try:
            free.append(dev.info().memory_free)
        except Exception:
            free.append(None)
    if any(f is None or f <= 0 for f in free):
        return [1.0] * len(devices)
    return [float(f) for f in free]
