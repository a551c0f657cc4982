"""The graph IR: tensors are nodes, built through `Graph` methods that infer shapes and check types.

A model builder emits one graph for one batch shape (tokens, KV length); a device compiles it once
(kernels resolved, buffers planned) and replays it with new inputs. Op names follow ggml's so that
a llama.cpp reader feels at home. Shapes are in numpy order (outermost first); `mul_mat(a, b)` is
ggml's: a is [..., M, K] (a weight, possibly quantized), b is [..., T, K], the result [..., T, M].

Leaves are of three kinds: `weight` (constant, from the GGUF file, bound by name when the graph is
compiled), `input` (fed on every run: token ids, positions, masks) and `state` (persistent across
runs, owned by the caller: the KV cache).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmrt.errors import LlmrtError
from llmrt.gguf.constants import GGMLType

F32, F16, I32 = GGMLType.F32, GGMLType.F16, GGMLType.I32


class IRError(LlmrtError):
    """A graph that cannot be built: mismatched shapes or types."""


class Op(enum.Enum):
    # leaves
    WEIGHT = "weight"
    INPUT = "input"
    STATE = "state"
    # data movement
    GET_ROWS = "get_rows"  # rows of a (possibly quantized) table, dequantized to f32
    SET_ROWS = "set_rows"  # write rows into a state tensor (the KV cache); returns the state
    VIEW = "view"  # a strided window on a tensor's storage, no copy
    RESHAPE = "reshape"
    PERMUTE = "permute"
    CONT = "cont"  # a contiguous copy
    CPY = "cpy"  # convert to another type
    # math
    MUL_MAT = "mul_mat"
    ADD = "add"
    MUL = "mul"
    SCALE = "scale"
    RMS_NORM = "rms_norm"
    NORM = "norm"
    ROPE = "rope"
    SOFT_MAX = "soft_max"
    SILU = "silu"
    GELU = "gelu"  # tanh approximation, as ggml_gelu
    SWIGLU = "swiglu"  # silu(gate) * up
    GEGLU = "geglu"  # gelu(gate) * up
    FLASH_ATTN_EXT = "flash_attn_ext"  # softmax(q kᵀ · scale + mask) v, grouped-query heads
    ARGMAX = "argmax"


# Fused forms, made only by core/lower/fuse.py for a device whose supports_op accepts them (model
# builders never emit them): RMS_NORM and NORM with a second operand, the norm's row-vector
# weight (norm(x) * w); MUL_MAT with a third operand, a residual (a·b + r).


ROPE_NORMAL, ROPE_NEOX = 0, 2  # ggml's rope modes: adjacent pairs, or halves of the head


@dataclass(eq=False)
class Tensor:
    """A node of the graph. `params` holds the op's scalar arguments."""

    op: Op
    shape: tuple[int, ...]
    dtype: GGMLType
    srcs: tuple[Tensor, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    layer: int | None = None  # the model layer that owns it, for partial offload (-ngl)
    strides: tuple[int, ...] = ()  # in elements; set for views, else contiguous

    def __post_init__(self) -> None:
        if not self.strides:
            self.strides = contiguous_strides(self.shape)

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def is_contiguous(self) -> bool:
        return self.strides == contiguous_strides(self.shape)

    @property
    def key(self) -> str:
        """The name a leaf is bound by (weights, inputs and state)."""
        return self.params.get("key", self.name)

    def __repr__(self) -> str:
        return f"<{self.op.value} {self.name or ''} {list(self.shape)} {self.dtype.name}>"


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides, step = [], 1
    for dim in reversed(shape):
        strides.append(step)
        step *= dim
    return tuple(reversed(strides))


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise IRError(what)


class Graph:
    """A list of nodes in build order (a valid topological order) and the named outputs."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.nodes: list[Tensor] = []
        self.outputs: dict[str, Tensor] = {}
        self.layer: int | None = None  # nodes built while set belong to this layer

    def _add(self, op: Op, shape: Iterable[int], dtype: GGMLType, srcs=(), name="", **params):
        t = Tensor(op, tuple(int(d) for d in shape), dtype, tuple(srcs), params, name, self.layer)
        self.nodes.append(t)
        return t

    @property
    def leaves(self) -> list[Tensor]:
        return [t for t in self.nodes if t.op in (Op.WEIGHT, Op.INPUT, Op.STATE)]

    def output(self, name: str, t: Tensor) -> Tensor:
        self.outputs[name] = t
        return t

    # leaves
    def weight(self, key: str, shape: Sequence[int], dtype: GGMLType) -> Tensor:
        return self._add(Op.WEIGHT, shape, dtype, name=key, key=key)

    def input(self, key: str, shape: Sequence[int], dtype: GGMLType = F32) -> Tensor:
        return self._add(Op.INPUT, shape, dtype, name=key, key=key)

    def state(self, key: str, shape: Sequence[int], dtype: GGMLType) -> Tensor:
        return self._add(Op.STATE, shape, dtype, name=key, key=key)

    # data movement
    def get_rows(self, table: Tensor, ids: Tensor) -> Tensor:
        _need(ids.dtype == I32 and len(ids.shape) == 1, f"get_rows ids must be i32[n], got {ids}")
        _need(len(table.shape) == 2, f"get_rows table must be 2-D, got {table}")
        return self._add(Op.GET_ROWS, (ids.shape[0], table.shape[1]), F32, (table, ids))

    def set_rows(self, dst: Tensor, ids: Tensor, src: Tensor) -> Tensor:
        _need(dst.op in (Op.STATE, Op.SET_ROWS), f"set_rows writes into state, got {dst}")
        _need(ids.dtype == I32 and ids.shape == src.shape[:1], f"set_rows ids {ids} vs {src}")
        _need(src.shape[1:] == dst.shape[1:], f"set_rows rows {src.shape} do not fit {dst.shape}")
        return self._add(Op.SET_ROWS, dst.shape, dst.dtype, (dst, ids, src))

    def view(self, src: Tensor, shape: Sequence[int], strides: Sequence[int], offset: int = 0):
        """A window on `src`'s storage: element strides and an element offset, like ggml_view."""
        _need(len(shape) == len(strides), "view needs one stride per dimension")
        last = offset + sum((d - 1) * s for d, s in zip(shape, strides, strict=True))
        _need(offset >= 0 and last < src.n_elements, f"view {shape} reaches past {src}")
        t = self._add(Op.VIEW, shape, src.dtype, (src,), offset=offset)
        t.strides = tuple(int(s) for s in strides)
        return t

    def rows(self, src: Tensor, stop: int) -> Tensor:
        """The first `stop` rows of `src` (a view)."""
        return self.view(src, (stop, *src.shape[1:]), src.strides)

    def reshape(self, src: Tensor, *shape: int) -> Tensor:
        _need(src.is_contiguous, f"reshape needs a contiguous tensor, got {src}")
        _need(math.prod(shape) == src.n_elements, f"cannot reshape {src} to {shape}")
        return self._add(Op.RESHAPE, shape, src.dtype, (src,))

    def permute(self, src: Tensor, *axes: int) -> Tensor:
        _need(sorted(axes) == list(range(len(src.shape))), f"bad permutation {axes}")
        t = self._add(Op.PERMUTE, [src.shape[a] for a in axes], src.dtype, (src,), axes=axes)
        t.strides = tuple(src.strides[a] for a in axes)
        return t

    def cont(self, src: Tensor) -> Tensor:
        return self._add(Op.CONT, src.shape, src.dtype, (src,))

    def cpy(self, src: Tensor, dtype: GGMLType) -> Tensor:
        _need(dtype in (F32, F16), f"cpy converts to f32 or f16, not {dtype.name}")
        return self._add(Op.CPY, src.shape, dtype, (src,))

    # math
    def mul_mat(self, a: Tensor, b: Tensor) -> Tensor:
        _need(a.shape[-1] == b.shape[-1], f"mul_mat inner dims differ: {a} × {b}")
        batch_a, batch_b = a.shape[:-2], b.shape[:-2]
        _need(len(batch_a) == len(batch_b), f"mul_mat ranks differ: {a} × {b}")
        for da, db in zip(batch_a, batch_b, strict=True):
            _need(db % da == 0, f"mul_mat cannot broadcast {a} over {b}")
        return self._add(Op.MUL_MAT, (*batch_b, b.shape[-2], a.shape[-2]), F32, (a, b))

    def _binary(self, op: Op, a: Tensor, b: Tensor) -> Tensor:
        _need(a.dtype == F32, f"{op.value} needs f32 input, got {a}")
        _need(
            len(b.shape) <= len(a.shape)
            and all(db in (1, da) for da, db in zip(a.shape[::-1], b.shape[::-1], strict=False)),
            f"{op.value}: {b} does not broadcast to {a}",
        )
        return self._add(op, a.shape, F32, (a, b))

    def add(self, a: Tensor, b: Tensor) -> Tensor:
        return self._binary(Op.ADD, a, b)

    def mul(self, a: Tensor, b: Tensor) -> Tensor:
        return self._binary(Op.MUL, a, b)

    def scale(self, x: Tensor, s: float) -> Tensor:
        return self._add(Op.SCALE, x.shape, F32, (x,), scale=float(s))

    def rms_norm(self, x: Tensor, eps: float) -> Tensor:
        return self._add(Op.RMS_NORM, x.shape, F32, (x,), eps=float(eps))

    def norm(self, x: Tensor, eps: float) -> Tensor:
        return self._add(Op.NORM, x.shape, F32, (x,), eps=float(eps))

    def rope(
        self,
        x: Tensor,
        pos: Tensor,
        *,
        n_dims: int,
        mode: int = ROPE_NORMAL,
        freq_base: float = 10000.0,
        freq_scale: float = 1.0,
        freq_factors: Tensor | None = None,
        attn_factor: float = 1.0,
    ) -> Tensor:
        """Rotary embedding of x [T, H, D] at positions pos i32[T] over the first n_dims of D.

        freq_factors (f32[n_dims/2]) divides each frequency (Llama 3's long-context scaling)."""
        _need(len(x.shape) == 3 and pos.shape == (x.shape[0],), f"rope wants [T,H,D], got {x}")
        _need(n_dims % 2 == 0 and n_dims <= x.shape[2], f"rope n_dims {n_dims} vs {x}")
        srcs = (x, pos) if freq_factors is None else (x, pos, freq_factors)
        return self._add(
            Op.ROPE, x.shape, F32, srcs, n_dims=n_dims, mode=mode, freq_base=float(freq_base),
            freq_scale=float(freq_scale), attn_factor=float(attn_factor),
        )  # fmt: skip

    def soft_max(self, x: Tensor, mask: Tensor | None = None, scale: float = 1.0) -> Tensor:
        """softmax(x · scale + mask) over the last dimension."""
        srcs = (x,) if mask is None else (x, mask)
        return self._add(Op.SOFT_MAX, x.shape, F32, srcs, scale=float(scale))

    def silu(self, x: Tensor) -> Tensor:
        return self._add(Op.SILU, x.shape, F32, (x,))

    def gelu(self, x: Tensor) -> Tensor:
        return self._add(Op.GELU, x.shape, F32, (x,))

    def swiglu(self, gate: Tensor, up: Tensor) -> Tensor:
        _need(gate.shape == up.shape, f"swiglu halves differ: {gate} {up}")
        return self._add(Op.SWIGLU, gate.shape, F32, (gate, up))

    def geglu(self, gate: Tensor, up: Tensor) -> Tensor:
        _need(gate.shape == up.shape, f"geglu halves differ: {gate} {up}")
        return self._add(Op.GEGLU, gate.shape, F32, (gate, up))

    def flash_attn_ext(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, *, scale: float,
        softcap: float = 0.0,
    ) -> Tensor:  # fmt: skip
        """Attention of q [T, Hq, D] over k [S, Hkv, D], v [S, Hkv, Dv] with mask [T, S]
        (0 or -inf, added to the scores); Hq is a multiple of Hkv (grouped-query heads)."""
        (t, hq, d), (s, hkv, dk), (sv, hv, dv) = q.shape, k.shape, v.shape
        _need(d == dk and s == sv and hkv == hv and hq % hkv == 0, f"attention {q} {k} {v}")
        _need(mask is None or mask.shape == (t, s), f"attention mask {mask} is not [{t}, {s}]")
        srcs = (q, k, v) if mask is None else (q, k, v, mask)
        return self._add(
            Op.FLASH_ATTN_EXT, (t, hq, dv), F32, srcs, scale=float(scale), softcap=float(softcap)
        )

    def argmax(self, x: Tensor) -> Tensor:
        return self._add(Op.ARGMAX, x.shape[:-1], I32, (x,))
