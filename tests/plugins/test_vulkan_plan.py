"""The Vulkan backend's plan for synth_gguf's model shapes, without a Vulkan device: which shaders
VulkanProgram dispatches for a decode step and short prompts, on the GPU kernels (with and without
integer dot products) and on lavapipe's per-row kernels; and the plan's buffers: every binding
names a store that exists, no dispatch reads and writes one arena range, and arena ranges live at
the same time never overlap.

The program is planned with a stand-in runtime (what planning touches: kernel family, limits,
buffers for small constant tables) and stand-in weights and caches (a type, a shape and a buffer
size each); the command buffer is never recorded. The expected counts are per-layer formulas,
n_layer * a + b, so a lost fusion or an added dispatch fails them.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from plan_shapes import SHAPES, decode_graph, weight_meta

from llmrt.gguf.constants import GGMLType
from llmrt_vulkan.program import VulkanProgram

Q4_0, Q8_0 = GGMLType.Q4_0, GGMLType.Q8_0
ALIGN = 256
LAVAPIPE_RANGE = 1 << 27  # maxStorageBufferRange: lavapipe's 128 MiB splits the big heads
NVIDIA_RANGE = (1 << 32) - 1


@dataclass(eq=False)
class FakeBuffer:
    size: int
    host: Any = None
    cached: bool = True


class FakeRuntime:
    """What VulkanProgram's planning reads from llmrt_vulkan.runtime.Runtime."""

    def __init__(self, cpu: bool, int_dot: bool, coopmat: str | None = None) -> None:
        self.cpu = cpu
        self.int_dot = int_dot
        self.coopmat, self.coopmat_wide = coopmat, coopmat and f"{coopmat}_wide"
        self.coopmat_attn = coopmat and coopmat.replace("matmul", "flash_attn")
        self.max_shared = 48 << 10
        self.max_range = LAVAPIPE_RANGE if cpu else NVIDIA_RANGE
        self.max_groups = 65535 if cpu else (1 << 31) - 1
        self.unified = cpu
        self.dummy = FakeBuffer(16)
        self.made: list[FakeBuffer] = []  # constant tables planning asks for (rope frequencies)
        self._gelu = FakeBuffer(1 << 17)

    def buffer(self, size: int, host: bool = False) -> FakeBuffer:
        self.made.append(FakeBuffer(max(16, -(-int(size) // 16) * 16)))
        return self.made[-1]

    def write(self, buf: FakeBuffer, data: Any, offset: int = 0) -> None:
        assert offset + data.nbytes <= buf.size

    def gelu_table(self) -> FakeBuffer:
        return self._gelu


@dataclass
class FakeWeight:
    buf: FakeBuffer
    type: GGMLType
    shape: tuple[int, ...]
    row_nbytes: int


@dataclass
class FakeState:
    buf: FakeBuffer
    shape: tuple[int, ...]
    dtype: GGMLType


class PlanOnly(VulkanProgram):
    """A program planned but not recorded: recording needs a device."""

    def _record(self) -> None:
        pass


def fake_bindings(shape_name: str, qtype: GGMLType, n_kv: int) -> dict[str, Any]:
    """Weights sized as the backend's upload makes them, and f16 caches of n_kv cells."""
    bindings: dict[str, Any] = {}
    for name, (shape, type_) in weight_meta(shape_name, qtype).items():
        row = type_.row_nbytes(shape[-1])
        nbytes = row * math.prod(shape[:-1]) + 16  # upload's slack past the last block
        bindings[name] = FakeWeight(FakeBuffer(nbytes), type_, shape, row)
    n_embd, n_layer, n_head, n_head_kv = SHAPES[shape_name][:4]
    cache = (n_kv, n_head_kv, n_embd // n_head)
    for il in range(n_layer):
        for kv in ("k", "v"):
            nbytes = math.prod(cache) * 2
            bindings[f"cache_{kv}.{il}"] = FakeState(FakeBuffer(nbytes), cache, GGMLType.F16)
    return bindings


def plan(shape_name: str, qtype: GGMLType, kernels: str, n_tokens: int, n_kv: int = 256,
         coopmat: str | None = None):  # fmt: skip
    rt = FakeRuntime(kernels.startswith("lavapipe"), kernels.endswith("dot"), coopmat)
    bindings = fake_bindings(shape_name, qtype, n_kv)
    graph = decode_graph(shape_name, qtype, n_tokens, n_kv)
    return PlanOnly(rt, graph, bindings), rt, bindings


# Expected dispatches: shader -> (per layer, once), for n_layer * per_layer + once. "mv" and
# "q8p" stand for the integer mat-vec reading q8 activations that another dispatch wrote (norm,
# quantize_q8, attn_combine) and the one making them in its prologue (matvec_q8p), "_dot" added
# with integer dot products.
# Every plan has 2 get_rows (token embeddings; the one row whose logits are wanted) and one
# attention per layer; a layer has 7 weight mat-vecs (q, k, v, o, gate, up, down).
GPU: dict[tuple[str, int], dict[str, tuple[int, int]]] = {
    # decode: norms (with their weight), swiglu and the split attention's merge in the prologues
    # of the mat-vecs reading them; rope and the KV-cache writes in the q/k/v mat-vecs'
    # epilogues, residual adds in the o/down ones: one mat-vec and one attention per layer
    ("smollm2-135m", 1): {"q8p": (7, 1)},
    ("llama32-1b", 1): {"q8p": (7, 1)},
    # the 8B: min(rows, 4096 activations) is past PROLOGUE_SMALL (2048) for every mat-vec but k
    # and v, which share q's norm: no prologue, hence no epilogue (matvec_q8p's); the norms
    # write q8 blocks, swiglu is quantize_q8's (f32 + q8), attn_combine writes q8 blocks,
    # q is roped alone, k roped into its cache rows, v written by set_rows
    ("llama3-8b", 1): {
        "mv": (7, 1), "norm": (2, 1), "quantize_q8": (1, 0), "attn_combine": (1, 0),
        "rope": (2, 0), "set_rows": (1, 0),
    },
    # 8 tokens, 135M: swiglu (2 x 8 x 1536 reads) and the attention merge (8 splits + 1, x 8 x
    # 576) are past PROLOGUE_FLOATS, so o and down read q8 blocks made by attn_combine and
    # quantize_q8; the norms stay in prologues, rope and the cache writes in epilogues
    ("smollm2-135m", 8): {
        "q8p": (5, 1), "mv": (2, 0), "quantize_q8": (1, 0), "attn_combine": (1, 0),
    },
    # 8 tokens, 1B: a norm's 3 x 8 x 2048 reads are past PROLOGUE_FLOATS, so every layer
    # mat-vec reads q8 blocks and has no epilogue (ropes and cache writes dispatched as on the
    # 8B); only the head (one row of logits) keeps the final norm in its prologue
    ("llama32-1b", 8): {
        "mv": (7, 0), "q8p": (0, 1), "norm": (2, 0), "quantize_q8": (1, 0),
        "attn_combine": (1, 0), "rope": (2, 0), "set_rows": (1, 0),
    },
    ("llama3-8b", 8): {
        "mv": (7, 1), "norm": (2, 1), "quantize_q8": (1, 0), "attn_combine": (1, 0),
        "rope": (2, 0), "set_rows": (1, 0),
    },
    # 40 tokens (past MAX_T_MATVEC): tiled matmuls, residual adds and swiglu as eltwise; the
    # head (one row) is an integer mat-vec, with the final norm in its prologue where it fits;
    # attention splits over the cache in 2 parts: 40 tokens x 9 heads (135M) or x 8 groups of 4
    # heads (1B, 8B) are fewer workgroups than ATTN_WORKGROUPS_PROMPT
    ("smollm2-135m", 40): {
        "matmul": (7, 0), "eltwise": (3, 0), "norm": (2, 0), "rope": (2, 0), "set_rows": (1, 0),
        "attn_combine": (1, 0), "q8p": (0, 1),
    },
    ("llama32-1b", 40): {
        "matmul": (7, 0), "eltwise": (3, 0), "norm": (2, 0), "rope": (2, 0), "set_rows": (1, 0),
        "attn_combine": (1, 0), "q8p": (0, 1),
    },
    ("llama3-8b", 40): {
        "matmul": (7, 0), "eltwise": (3, 0), "norm": (2, 1), "rope": (2, 0), "set_rows": (1, 0),
        "attn_combine": (1, 0), "mv": (0, 1),
    },
}  # fmt: skip
# lavapipe: the per-row integer mat-vec for any number of tokens, residual adds in its epilogue;
# the norms write q8 blocks, swiglu is quantize_q8's and attention's output gets a quantize_q8
# (one part: no merge); q is roped alone, k roped into its cache rows, v written by set_rows
LAVAPIPE = {
    "mv": (7, 0), "norm": (2, 1), "quantize_q8": (2, 0), "rope": (2, 0), "set_rows": (1, 0),
}  # fmt: skip
# the head's mat-vec dispatches on lavapipe: a weight past its 128 MiB binding range is split by
# rows (1B Q4_0: 148 MB; 1B Q8_0 and 8B Q4_0: 3 parts; 8B Q8_0, 558 MB: 5); so is the lookup
# of a token's row in the embedding table, of the same size
LAVAPIPE_HEAD = {
    ("smollm2-135m", Q4_0): 1, ("smollm2-135m", Q8_0): 1, ("llama32-1b", Q4_0): 2,
    ("llama32-1b", Q8_0): 3, ("llama3-8b", Q4_0): 3, ("llama3-8b", Q8_0): 5,
}  # fmt: skip
KERNELS = ["gpu_dot", "gpu", "lavapipe_dot", "lavapipe"]


def expected(shape_name: str, qtype: GGMLType, kernels: str, n_tokens: int) -> dict[str, int]:
    n_layer = SHAPES[shape_name][1]
    dot = "_dot" if kernels.endswith("dot") else ""
    if kernels.startswith("lavapipe"):
        table = {**LAVAPIPE, "mv": (7, LAVAPIPE_HEAD[shape_name, qtype])}
        names = {"mv": f"matvec_q8{dot}_rows"}
        attention = "flash_attn_rows"
    else:
        table = GPU[shape_name, n_tokens]
        names = {"mv": f"matvec_q8{dot}", "q8p": f"matvec_q8p{dot}"}
        attention = "flash_attn"
    counts = {names.get(k, k): n_layer * a + b for k, (a, b) in table.items()}
    # the activations' row for the head, and the embedding's lookup a binding's range at a time
    counts["get_rows"] = 1 + (LAVAPIPE_HEAD[shape_name, qtype] if kernels.startswith("lava") else 1)
    counts[attention] = n_layer
    return counts


@pytest.mark.parametrize("n_tokens", [1, 8, 40])
@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("qtype", [Q4_0, Q8_0], ids=["q4_0", "q8_0"])
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_dispatches_per_shader(shape_name, qtype, kernels, n_tokens):
    prog, _, _ = plan(shape_name, qtype, kernels, n_tokens)
    got = Counter(d.shader for d in prog.dispatches)
    assert dict(got) == expected(shape_name, qtype, kernels, n_tokens)


@pytest.mark.parametrize("n_tokens", [1, 40, 300])
@pytest.mark.parametrize("qtype", [Q4_0, Q8_0], ids=["q4_0", "q8_0"])
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_prompt_matmuls_take_the_cooperative_matrix_variant(shape_name, qtype, n_tokens):
    """On a device with matrix units the plan is the same dispatch for dispatch, bindings
    included, with the tiled matmuls' shader swapped for the runtime's matmul_coop variant: its
    _wide one, whose workgroups take 256 tokens instead of 64, for a prompt of 256 tokens or
    more where that still makes 64 workgroups (not the 135M's products, whose rows are 576 to
    1536); a decode step has none to swap. And a prompt's attention (heads of 64 and 128, f16
    caches) takes flash_attn_coop, whose workgroups take 32 query rows (tokens x the heads of one
    KV head) where flash_attn's took one token's."""
    plain, _, _ = plan(shape_name, qtype, "gpu_dot", n_tokens)
    coop, _, _ = plan(shape_name, qtype, "gpu_dot", n_tokens, coopmat="matmul_coop")
    swapped = [d.shader for d in plain.dispatches if d.shader == "matmul"]
    assert len(swapped) == (7 * SHAPES[shape_name][1] if n_tokens > 1 else 0)
    n_wide = n_attn = 0
    for a, b in zip(plain.dispatches, coop.dispatches, strict=True):
        wide = n_tokens >= 256 and a.groups[0] * -(-n_tokens // 256) >= 64
        n_wide += wide and a.shader == "matmul"
        attn = a.shader == "flash_attn" and n_tokens >= 16
        n_attn += attn
        swap = {"matmul": "matmul_coop_wide" if wide else "matmul_coop"}
        swap["flash_attn"] = "flash_attn_coop" if attn else "flash_attn"
        assert b.shader == swap.get(a.shader, a.shader)
        groups, push = a.groups, a.push
        if wide and a.shader == "matmul":
            groups = (a.groups[0], -(-n_tokens // 256), 1)
        if attn:  # (query rows / 32) x (query heads / heads a workgroup) x parts of the keys
            nh, hq, splits = a.spec[4], a.push[3], a.push[17]
            groups = (-(-n_tokens * nh // 32) * (hq // nh) * splits, 1, 1)
            push = (*a.push[:16], groups[0], *a.push[17:])
        assert (a.spec, push, groups) == (b.spec, b.push, b.groups)
        where = [[(s.kind, s.offset, s.nbytes, o) for s, o in d.bindings] for d in (a, b)]
        assert where[0] == where[1]
    # the 1B's and 8B's products but k and v (512 and 1024 rows: 16 and 32 workgroups)
    big = shape_name != "smollm2-135m" and n_tokens >= 256
    assert n_wide == (5 * SHAPES[shape_name][1] if big else 0)
    assert n_attn == (SHAPES[shape_name][1] if n_tokens > 1 else 0)  # one a layer


@pytest.mark.parametrize("kernels", ["gpu_dot", "gpu"])
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_decode_over_a_longer_cache(shape_name, kernels):
    """Past 256 cells the 1B's decode attention splits into 16 parts: merging them (17 x 2048
    reads) no longer fits the o mat-vec's prologue, and attn_combine comes back."""
    n_layer = SHAPES[shape_name][1]
    dot = "_dot" if kernels.endswith("dot") else ""
    prog, _, _ = plan(shape_name, Q4_0, kernels, 1, n_kv=1024)
    got = Counter(d.shader for d in prog.dispatches)
    if shape_name == "llama32-1b":
        want = {f"matvec_q8p{dot}": 6 * n_layer + 1, f"matvec_q8{dot}": n_layer,
                "attn_combine": n_layer, "flash_attn": n_layer, "get_rows": 2}  # fmt: skip
    else:
        want = expected(shape_name, Q4_0, kernels, 1)
    assert dict(got) == want


@pytest.mark.parametrize("n_tokens", [1, 8, 40])
@pytest.mark.parametrize("kernels", ["gpu", "lavapipe"])
@pytest.mark.parametrize("qtype", [Q4_0, Q8_0], ids=["q4_0", "q8_0"])
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_bindings_exist_and_live_arena_ranges_never_overlap(shape_name, qtype, kernels, n_tokens):
    prog, rt, bindings = plan(shape_name, qtype, kernels, n_tokens)
    buffers = {id(b.buf) for b in bindings.values()} | {id(b) for b in rt.made}
    buffers.add(id(rt.gelu_table()))
    caches = {id(b.buf) for b in bindings.values() if isinstance(b, FakeState)}
    assert {id(b) for b in prog.constants} <= buffers
    first: dict[int, int] = {}  # arena store -> first and last dispatch touching it
    last: dict[int, int] = {}
    stores: dict[int, Any] = {}
    for i, d in enumerate(prog.dispatches):
        touched = [s for s, _ in d.bindings] + d.reads + d.writes
        for s, extra in d.bindings:
            assert 0 <= extra < s.nbytes, (i, d.shader)
        for s in touched:
            # no "virtual" value (one left to a mat-vec's prologue) is ever bound
            assert s.kind in ("arena", "inputs", "buffer"), (i, d.shader, s.kind)
            if s.kind == "arena":
                assert s.offset % ALIGN == 0 and s.offset + s.nbytes <= prog.arena_peak
                first.setdefault(id(s), i)
                last[id(s)] = i
                stores[id(s)] = s
            elif s.kind == "inputs":
                assert s.offset + s.nbytes <= prog.inputs_size
            else:
                assert id(s.buf) in buffers and s.offset == 0 and s.nbytes == s.buf.size
        # in place only where the shader is by design: set_rows writing rows of a cache
        both = {id(s) for s in d.reads} & {id(s) for s in d.writes}
        for s in d.writes:
            if id(s) in both:
                assert d.shader == "set_rows" and s.kind == "buffer" and id(s.buf) in caches
    for ref in prog.outputs.values():  # the logits stay until they are read back
        if ref.storage.kind == "arena":
            last[id(ref.storage)] = len(prog.dispatches)
    spans = sorted((first[k], last[k], stores[k].offset, stores[k].offset + stores[k].nbytes)
                   for k in stores)  # fmt: skip
    for i, (f0, l0, b0, e0) in enumerate(spans):
        for f1, l1, b1, e1 in spans[i + 1 :]:
            if f1 > l0:
                break
            assert e0 <= b1 or e1 <= b0, (
                f"arena [{b0}, {e0}) live {f0}-{l0}, [{b1}, {e1}) {f1}-{l1}"
            )
