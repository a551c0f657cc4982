"""Op cases, the NMSE metric, and running one case on a device against the reference."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmrt.device import Device
from llmrt.gguf import GGMLType, quantize
from llmrt.ir import ROPE_NEOX, ROPE_NORMAL, Graph, Tensor
from llmrt.reference import ReferenceProgram, host_weight

F32, F16, I32 = GGMLType.F32, GGMLType.F16, GGMLType.I32
# ggml test-backend-ops thresholds
NMSE_ELEMENTWISE = 1e-7
NMSE_SOFTMAX = 1e-6
NMSE_MATMUL = 5e-4

QUANTIZED_TYPES = (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0,
                   GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K)  # fmt: skip
WEIGHT_TYPES = (F32, F16, GGMLType.BF16, *QUANTIZED_TYPES)


@dataclass(frozen=True)
class WeightData:
    """A weight made for a case, shaped like the `llmrt.gguf.TensorInfo` that `upload` takes."""

    name: str
    type: GGMLType
    shape: tuple[int, ...]
    raw: np.ndarray  # uint8 blocks, [rows, row_nbytes]

    @property
    def ne(self) -> tuple[int, ...]:
        return tuple(reversed(self.shape))

    @property
    def n_rows(self) -> int:
        return self.raw.shape[0]

    @property
    def row_nbytes(self) -> int:
        return self.raw.shape[1]

    @property
    def nbytes(self) -> int:
        return self.raw.size

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def data(self) -> np.ndarray:
        return self.raw.reshape(-1)

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.raw[start:stop]


@dataclass(frozen=True)
class OpCase:
    """One case: `build(g, inputs)` adds the op under test; leaves come from `leaves`.

    `leaves` maps a name to ("input"|"weight"|"state", shape, ggml type, value kind) where the
    value kind picks how values are drawn: "uniform" in [-1, 1], "ids:N" integers below N, "pos"
    positions, "mask" a causal 0/-inf mask.
    """

    id: str
    leaves: dict[str, tuple[str, tuple[int, ...], GGMLType, str]]
    build: Callable[[Graph, dict[str, Tensor]], Tensor]
    max_nmse: float = NMSE_ELEMENTWISE
    exact: bool = False
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def nmse(ref: np.ndarray, out: np.ndarray) -> float:
    """ggml's metric: sum((ref - out)^2) / sum(ref^2)."""
    ref64, out64 = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    denom = float(np.sum(ref64 * ref64))
    err = float(np.sum((ref64 - out64) ** 2))
    return err / denom if denom > 0 else err


def _values(kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if kind.startswith("ids:"):
        return rng.integers(0, int(kind[4:]), shape, dtype=np.int32)
    if kind == "perm":  # distinct row indices (set_rows must not write one row twice)
        return rng.permutation(shape[0] * 3)[: shape[0]].astype(np.int32)
    if kind == "pos":
        return (np.arange(shape[0]) * 7 + 3).astype(np.int32)
    if kind == "mask":
        t, s = shape
        visible = np.arange(s)[None, :] <= (np.arange(t)[:, None] + s - t)
        return np.where(visible, 0.0, -np.inf).astype(np.float32)
    return rng.uniform(-1, 1, shape).astype(np.float32)


def _make(case: OpCase) -> tuple[Graph, Tensor, dict[str, Any], dict[str, Any], dict[str, Any]]:
    rng = np.random.default_rng(case.seed)
    g = Graph(case.id)
    tensors: dict[str, Tensor] = {}
    inputs: dict[str, Any] = {}
    weights: dict[str, WeightData] = {}
    states: dict[str, np.ndarray] = {}
    for name, (kind, shape, dtype, values) in case.leaves.items():
        data = _values(values, shape, rng)
        if kind == "input":
            tensors[name] = g.input(name, shape, dtype)
            inputs[name] = data
        elif kind == "weight":
            tensors[name] = g.weight(name, shape, dtype)
            n_rows = math.prod(shape[:-1])
            raw = quantize(data.reshape(n_rows, shape[-1]), dtype).reshape(n_rows, -1)
            weights[name] = WeightData(name, dtype, shape, raw)
        else:
            tensors[name] = g.state(name, shape, dtype)
            states[name] = data.astype(np.float16 if dtype == F16 else np.float32)
    out = case.build(g, tensors)
    g.output("out", out)
    return g, out, inputs, weights, states


def check_case(device: Device, case: OpCase) -> str:
    """Run `case` on `device` and on the reference; "ok", "unsupported", or AssertionError."""
    g, out, inputs, weights, states = _make(case)
    if not all(device.supports_op(node) for node in g.nodes):
        return "unsupported"
    ref_bindings = {k: host_weight(w) for k, w in weights.items()}
    ref_bindings.update({k: v.copy() for k, v in states.items()})
    expected = ReferenceProgram(g, ref_bindings).run(inputs)["out"]
    bindings = {k: device.upload(w) for k, w in weights.items()}
    for k, v in states.items():
        bindings[k] = device.new_state(v.shape, F16 if v.dtype == np.float16 else F32)
        device.write_state(bindings[k], v)
    got = np.asarray(device.compile(g, bindings).run(inputs)["out"])
    assert got.shape == tuple(out.shape), f"{case.id}: shape {got.shape}, expected {out.shape}"
    if case.exact:
        assert np.array_equal(got, expected), f"{case.id}: differs from the reference"
        return "ok"
    assert np.all(np.isfinite(got) == np.isfinite(expected)), f"{case.id}: NaN/Inf mismatch"
    finite = np.isfinite(expected)
    err = nmse(expected[finite], got[finite])
    assert err <= case.max_nmse, f"{case.id}: nmse {err:.3g} > {case.max_nmse:.3g}"
    return "ok"


# ---- the cases ----------------------------------------------------------------------------------


def _x(shape, dtype=F32, values="uniform"):
    return ("input", tuple(shape), dtype, values)


def _mul_mat_cases() -> Iterator[OpCase]:
    for dtype in WEIGHT_TYPES:
        k_options = (256, 512) if dtype.block_size == 256 else (32, 96, 256)
        # the last three: a prompt in whole 64 x 64 tiles, one cut at both edges of them, and
        # one whose K is not a whole number of the tiles' K steps (4 blocks of 32 for legacy quants)
        for m, k, t in ((1, k_options[0], 1), (67, k_options[-1], 1), (33, k_options[0], 7),
                        (128, k_options[-1], 64), (100, k_options[-1], 75),
                        (70, k_options[1], 66)):  # fmt: skip
            yield OpCase(
                f"mul_mat(type_a={dtype.name.lower()},m={m},k={k},t={t})",
                {"a": ("weight", (m, k), dtype, "uniform"), "b": _x((t, k))},
                lambda g, x: g.mul_mat(x["a"], x["b"]),
                NMSE_MATMUL,
            )
    # activations × activations with broadcast batches (attention-like), f16 too
    for dtype in (F32, F16):
        yield OpCase(
            f"mul_mat(type_a={dtype.name.lower()},batch=3x4,m=9,k=64,t=5)",
            {"a": ("state", (3, 9, 64), dtype, "uniform"), "b": _x((12, 5, 64))},
            lambda g, x: g.mul_mat(x["a"], x["b"]),
            NMSE_MATMUL,
        )


def _get_rows_cases() -> Iterator[OpCase]:
    for dtype in WEIGHT_TYPES:
        k = 256 if dtype.block_size == 256 else 96
        yield OpCase(
            f"get_rows(type={dtype.name.lower()},n=40,k={k},ids=13)",
            {"table": ("weight", (40, k), dtype, "uniform"), "ids": _x((13,), I32, "ids:40")},
            lambda g, x: g.get_rows(x["table"], x["ids"]),
            NMSE_ELEMENTWISE,
        )


def _elementwise_cases() -> Iterator[OpCase]:
    shapes = ((1, 1), (7, 65), (4, 5, 33))
    for shape in shapes:
        s = "x".join(map(str, shape))
        two = {"a": _x(shape), "b": _x(shape[-1:])}
        yield OpCase(f"add(shape={s},broadcast)", two, lambda g, x: g.add(x["a"], x["b"]))
        yield OpCase(f"mul(shape={s},broadcast)", two, lambda g, x: g.mul(x["a"], x["b"]))
        one = {"a": _x(shape)}
        yield OpCase(f"scale(shape={s})", one, lambda g, x: g.scale(x["a"], 0.37))
        yield OpCase(f"rms_norm(shape={s})", one, lambda g, x: g.rms_norm(x["a"], 1e-6))
        yield OpCase(f"norm(shape={s})", one, lambda g, x: g.norm(x["a"], 1e-5))
        yield OpCase(f"silu(shape={s})", one, lambda g, x: g.silu(x["a"]))
        yield OpCase(f"gelu(shape={s})", one, lambda g, x: g.gelu(x["a"]))
        pair = {"a": _x(shape), "b": _x(shape)}
        yield OpCase(f"swiglu(shape={s})", pair, lambda g, x: g.swiglu(x["a"], x["b"]))
        yield OpCase(f"geglu(shape={s})", pair, lambda g, x: g.geglu(x["a"], x["b"]))
        yield OpCase(f"argmax(shape={s})", one, lambda g, x: g.argmax(x["a"]), exact=True)


def _layout_cases() -> Iterator[OpCase]:
    yield OpCase(
        "cont(permute(4x6x8,axes=1,0,2))", {"a": _x((4, 6, 8))},
        lambda g, x: g.cont(g.permute(x["a"], 1, 0, 2)),
    )  # fmt: skip
    yield OpCase(
        "add(permute(5x3x9,axes=1,0,2),row)", {"a": _x((5, 3, 9)), "b": _x((9,))},
        lambda g, x: g.add(g.permute(x["a"], 1, 0, 2), x["b"]),
    )  # fmt: skip
    yield OpCase(
        "rms_norm(view(10x16,rows=3..8,stride=2))", {"a": _x((10, 16))},
        lambda g, x: g.rms_norm(g.view(x["a"], (3, 16), (32, 1), 48), 1e-5),
    )  # fmt: skip
    yield OpCase(
        "reshape(6x20->2x3x20)", {"a": _x((6, 20))},
        lambda g, x: g.scale(g.reshape(x["a"], 2, 3, 20), 2.0),
    )  # fmt: skip
    for dtype in (F32, F16):
        yield OpCase(
            f"cpy(f32->{dtype.name.lower()},7x33)", {"a": _x((7, 33))},
            lambda g, x, d=dtype: g.cpy(x["a"], d), NMSE_ELEMENTWISE if dtype == F32 else 1e-6,
        )  # fmt: skip
        yield OpCase(
            f"set_rows(cache={dtype.name.lower()},40x2x16,rows=5)+view",
            {"cache": ("state", (40, 2, 16), dtype, "uniform"), "ids": _x((5,), I32, "perm"),
             "src": _x((5, 2, 16))},
            lambda g, x: g.rows(g.set_rows(x["cache"], x["ids"], x["src"]), 40),
            1e-6,
        )  # fmt: skip


def _rope_cases() -> Iterator[OpCase]:
    for mode, mname in ((ROPE_NORMAL, "normal"), (ROPE_NEOX, "neox")):
        for t, h, d, n_dims in ((1, 1, 64, 64), (7, 3, 64, 64), (5, 4, 128, 96)):
            yield OpCase(
                f"rope(mode={mname},t={t},h={h},d={d},n_dims={n_dims})",
                {"x": _x((t, h, d)), "pos": _x((t,), I32, "pos")},
                lambda g, x, m=mode, nd=n_dims: g.rope(
                    x["x"], x["pos"], n_dims=nd, mode=m, freq_base=10000.0
                ),  # fmt: skip
                1e-6,
            )
    yield OpCase(
        "rope(mode=normal,freq_factors,t=4,h=2,d=32)",
        {"x": _x((4, 2, 32)), "pos": _x((4,), I32, "pos"), "ff": ("weight", (16,), F32, "uniform")},
        lambda g, x: g.rope(
            x["x"], x["pos"], n_dims=32, freq_base=500000.0, freq_factors=g.scale(x["ff"], 1.0)
        ),  # fmt: skip
        1e-6,
    )


def _softmax_attention_cases() -> Iterator[OpCase]:
    for t, s in ((1, 1), (3, 17), (8, 64)):
        yield OpCase(
            f"soft_max(t={t},s={s},mask,scale=0.125)",
            {"x": _x((2, t, s)), "mask": _x((t, s), F32, "mask")},
            lambda g, x: g.soft_max(x["x"], x["mask"], 0.125),
            NMSE_SOFTMAX,
        )
    # decode attention also over four and two query heads a KV head (the GPU kernels read a KV
    # row once for all of them), over caches long enough to be split; prompts of more query rows
    # than one tile of the tiled kernels takes, cut at the tiles' edges
    for t, hq, hkv, s, d, kv in ((1, 9, 3, 256, 64, F16), (7, 4, 1, 33, 256, F16),
                                 (5, 2, 2, 16, 32, F32), (1, 8, 2, 300, 128, F16),
                                 (1, 4, 2, 160, 32, F32), (70, 8, 2, 100, 64, F16),
                                 (130, 4, 1, 200, 128, F16), (20, 2, 2, 20, 32, F16)):  # fmt: skip
        for softcap in (0.0, 30.0):
            yield OpCase(
                f"flash_attn_ext(t={t},hq={hq},hkv={hkv},s={s},d={d},kv={kv.name.lower()},"
                f"softcap={softcap:g})",
                {"q": _x((t, hq, d)), "k": ("state", (s, hkv, d), kv, "uniform"),
                 "v": ("state", (s, hkv, d), kv, "uniform"), "mask": _x((t, s), F32, "mask")},
                lambda g, x, c=softcap, dd=d: g.flash_attn_ext(
                    x["q"], x["k"], x["v"], x["mask"], scale=1 / math.sqrt(dd), softcap=c),
                NMSE_MATMUL,
            )  # fmt: skip


def _fused_pattern_cases() -> Iterator[OpCase]:
    """Patterns that backends fuse (core/lower/fuse.py): a norm times its weight, a product plus a
    residual. The reference runs them unfused; a device that fuses runs its fused kernel."""
    for shape in ((1, 64), (7, 96)):
        s = "x".join(map(str, shape))
        leaves = {"x": _x(shape), "w": ("weight", shape[-1:], F32, "uniform")}
        yield OpCase(f"mul(rms_norm({s}),weight)", leaves,
                     lambda g, x: g.mul(g.rms_norm(x["x"], 1e-6), x["w"]))  # fmt: skip
        yield OpCase(f"mul(norm({s}),weight)", leaves,
                     lambda g, x: g.mul(g.norm(x["x"], 1e-5), x["w"]))  # fmt: skip
    for dtype in (F32, F16, GGMLType.Q4_0, GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q6_K):
        k = 256
        for t in (1, 7):
            leaves = {"a": ("weight", (96, k), dtype, "uniform"), "b": _x((t, k)),
                      "r": _x((t, 96))}  # fmt: skip
            name = f"type_a={dtype.name.lower()},m=96,k={k},t={t}"
            yield OpCase(
                f"add(mul_mat({name}),residual)", leaves,
                lambda g, x: g.add(g.mul_mat(x["a"], x["b"]), x["r"]), NMSE_MATMUL,
            )  # fmt: skip
            yield OpCase(
                f"add(residual,mul_mat({name}))", leaves,
                lambda g, x: g.add(x["r"], g.mul_mat(x["a"], x["b"])), NMSE_MATMUL,
            )  # fmt: skip


def cases() -> list[OpCase]:
    """The built-in cases plus those plugins add through `register_conformance_cases`."""
    from llmrt.plugins import get_plugins

    found = [
        *_mul_mat_cases(), *_get_rows_cases(), *_elementwise_cases(), *_layout_cases(),
        *_rope_cases(), *_softmax_attention_cases(), *_fused_pattern_cases(),
    ]  # fmt: skip
    get_plugins().call("register_conformance_cases", register=found.append)
    return found
