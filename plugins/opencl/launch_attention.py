"""Launches for the ``fattn`` step (kernels/attention.cl): flash attention, split over the KV
length when heads x tokens would leave the device idle, then a merge of the splits.

A work-group takes a block of query rows of one KV head (its grouped query heads, over several
tokens: they share every K and V load) and a range of keys. Its row count is a compile-time
define, as are the head sizes and cache types, so each shape builds its own small program. A
GPU's one-token step takes fattn_vec (each key's row read across a stream of work-items) where it
fits, else fattn.

The decode fusions (llmrt.lower.passes) add to the step: ``params["nr"]`` (the one-token
attention ropes q and the new K row itself and writes the new K/V rows: attention.cl's NEWROW)
and ``params["q8"]`` (the output also as q8 blocks: XQ8, or a quant_q8 launch after it where the
kernel cannot).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyopencl as cl

from llmrt.errors import LlmrtError, UnsupportedOp
from llmrt.gguf.constants import GGMLType
from llmrt.lower.steps import Step
from llmrt_opencl import backend, launch_weights
from llmrt_opencl.launch_ops import q8_arg, quant_q8_launch, rope_args
from llmrt_opencl.program import Launch, OpenCLProgram

FILE = "attention.cl"
# work-items per group, and keys per tile (attention.cl's NT, a power of two): NT, or NT_WIDE for
# heads whose V rows need more (a work-item takes 4 of a row's columns). 32 rather than 64 on the
# H100 (benchmarks/opencl_profile.py at a 512-token depth, 2026-12-05): a step's attention 1.30 ->
# 0.91 ms (135M shape), 0.70 -> 0.52 (1B); 128 was slower (2.15, 1.13): a decode group's tile
# loop is latency, and smaller tiles give more splits (groups) over the same keys.
NT, NT_WIDE = 32, 64
# a one-token step's (decode) tile: 64, where the V phase splits a tile's keys among twice the
# work-items (tg128 on the H100, 2026-12-06: 135M 544 -> 559, 1B 602 -> 612, 8B 222 -> 226 t/s,
# while prompts with 64 lost 3-6 % of pp512: they keep NT)
DECODE_NT = 64
# a one-token step on a GPU takes fattn_vec (a key's row read across a stream of work-items)
# where its shapes fit: work-groups of VEC_WG work-items (at most the device's), VEC_KU keys in
# flight a stream, a split of the keys for every VEC_SPLIT_KEYS of them. On the H100 (tg128,
# BENCHMARKS.md 2026-12-06, eleventh session): groups of 64 with splits of 256 keys lost to fattn
# (1B at depth 512: 377 against 602 t/s; a decode step has few KV heads, so few groups); 256 and
# 64 gave the 8B 258 and 246 against fattn's 232 and 231, the 1B 693 and 659 against 550 and 625;
# 512 did not fit the 8B's registers
DECODE_VEC = True
VEC_WG, VEC_KU, VEC_SPLIT_KEYS = 256, 4, 64
MERGE_LAST = True  # fattn_vec's splits merged by the last to finish, not by a fattn_merge launch
LOCAL_BYTES = 15 * 1024  # for a group's q rows and tile scores (16 KiB in all, with the rest)
MAX_ROWS = 16
# split the keys until there are about this many groups per compute unit (a CPU thread runs a
# group at a time, and on PoCL a split's merge launch costs more than idle cores save)
GROUPS_PER_UNIT = {False: 4, True: 1}
MAX_SPLITS = 64
# a prompt's attention on a GPU where every head size is at most this (fattn_prompt: a query row a
# work-item, its q and outputs in registers; 64 fits its registers) and a KV head has at least
# PROMPT_ROWS[0] query rows: work-groups of PROMPT_ROWS[1] rows where that gives every compute
# unit two, else of [0]. 0, so fattn takes every prompt, until benchmarks/prompt_paths.py MODEL
# opencl:0 measures fattn_prompt ahead on a GPU: it has run on PoCL alone (BENCHMARKS.md)
PROMPT_MAX_D = 0
PROMPT_ROWS = (32, 64)


def _tile(dv: int, t: int) -> int:
    nt = DECODE_NT if t == 1 else NT
    return nt if dv <= 4 * nt else NT_WIDE


def _rows(prog: OpenCLProgram, t: int, group: int, d: int, nt: int, new_row: int = 0) -> int:
    """Query rows per work-group: all of a decode token's grouped heads, at most what local
    memory holds (each row: its q and a tile of scores, f32; 1 KiB left for the rest, and
    new_row bytes for the new K/V row and the rotation's pairs)."""
    local = int(prog.device_info["local_mem_size"]) - 1024 - new_row
    return max(1, min(MAX_ROWS, min(LOCAL_BYTES, local) // (4 * (d + nt)), t * group))


def _fits(kernel: Any, nt: int) -> bool:
    """Whether the device runs `kernel` with nt work-items a group: a driver may allow fewer
    than its device maximum for a kernel that needs many registers."""
    dev = kernel.program.get_info(cl.program_info.DEVICES)[0]
    return kernel.get_work_group_info(cl.kernel_work_group_info.WORK_GROUP_SIZE, dev) >= nt


def _vec(prog: OpenCLProgram, t: int, group: int, d: int, dv: int, new_row: int) -> dict | None:
    """fattn_vec's defines for a one-token step on a GPU (VT, LPK, KU, NR), or None where it
    does not fit: LPK the most work-items (a power of two, 32 at most) that split both rows in
    float4 slices; NR the most of the token's grouped heads whose q rows, the streams' partials
    and (without warp shuffles) the score sums fit in local memory."""
    if not DECODE_VEC or t != 1 or _cpu(prog):
        return None
    lpk = 32
    while (d // 4) % lpk or (dv // 4) % lpk:
        lpk //= 2
    vt = min(VEC_WG, int(prog.device_info["max_work_group_size"]))
    shuffles = bool(prog.device_info.get("nv_dp4a")) and backend.NV_SHFL  # as programs build
    if vt % lpk or (shuffles and vt % 32):  # a shuffle's warp is whole
        return None
    local = int(prog.device_info["local_mem_size"]) - 1024 - new_row
    per_row = 4 * (d + vt // lpk * (dv + 2) + (0 if shuffles else VEC_KU * vt))
    nr = min(MAX_ROWS, group, local // per_row)
    return {"VT": vt, "LPK": lpk, "KU": VEC_KU, "NR": nr} if nr >= 1 else None


def _cpu(prog: OpenCLProgram) -> bool:
    """A CPU device (PoCL) takes fattn_row."""
    return bool(prog.device_info["cpu"])


def _splits(prog: OpenCLProgram, groups: int, s: int, cpu: bool, nt: int) -> tuple[int, int]:
    """(number of splits, keys per split, a multiple of the tile): enough groups to fill the
    device, each split at least one tile."""
    units = int(prog.device_info["compute_units"])
    want = min(MAX_SPLITS, -(-GROUPS_PER_UNIT[cpu] * units // groups), -(-s // nt))
    if want <= 1:
        return 1, s
    chunk = -(-s // want)
    chunk = -(-chunk // nt) * nt
    return -(-s // chunk), chunk


def _fused_args(prog: OpenCLProgram, step: Step, xq: bool) -> tuple:
    """The new row's and the q8 output's arguments (attention.cl's FUSED_ARGS), stand-ins where
    the step has none."""
    p, q = step.params, step.ins[0]
    if "nr" in p:
        kn, vn, pos, ids, kc, vc, *ff = step.ins[p["nr"] :]
        n_dims, neox, *consts = rope_args(p["rope"])
        rows = (*prog.arg(kn), *prog.arg(vn), *prog.arg(pos), *prog.arg(ids), *prog.arg(kc),
                *prog.arg(vc), *prog.arg(ff[0] if ff else q), n_dims, neox, np.int32(bool(ff)),
                *consts)  # fmt: skip
    else:
        rows = (*prog.arg(q) * 7, np.int32(0), np.int32(0), np.int32(0), *[np.float32(0)] * 5)
    return (*rows, *_q8_args(prog, step, xq))


def _q8_args(prog: OpenCLProgram, step: Step, xq: bool) -> tuple:
    """Where the output's q8 blocks go (XQ8), or stand-ins."""
    assert step.out is not None
    return (
        q8_arg(prog, step.params["q8"], step.out.n) if xq else (*prog.arg(step.ins[0]), np.int64(0))
    )


def _vec_args(prog: OpenCLProgram, args: tuple, new_row: bool, o_args: tuple = ()) -> tuple:
    """fattn's arguments as fattn_vec takes them: the activations' one buffer (the partials' and
    counters' too), the caches (where the new row goes too), with ATTN_O the projection's weight
    and its norm's, then the numbers as a constant block (attention.cl's FATTN_VEC_PARAMS, then
    ATTN_O_PARAMS)."""
    (q, k, v, mask, out, part, kn, vn, pos, ids, kc, vc, ff, xq, cnt, *o), numbers = prog.packed(
        (*args, *o_args))  # fmt: skip
    activations, weights = [q, mask, out, part, kn, vn, pos, ids, ff, xq, cnt], []
    if o:
        wo, res, yo, o_part, o_cnt, nw, ny, nq = o
        activations += [res, yo, o_part, o_cnt, ny, nq]
        weights = [wo, nw]
    if len({id(b) for b in activations}) != 1:
        raise LlmrtError("an OpenCL attention's activations are in more than one buffer")
    if new_row and (kc is not k or vc is not v):
        raise LlmrtError("an OpenCL attention's new K/V row goes to other buffers than it reads")
    return (q, k, v, *weights, numbers)


def _o_args(prog: OpenCLProgram, o: Step, units: int) -> tuple:
    """ATTN_O's arguments past fattn_vec's own: the output projection's weight, row bytes and
    rows, its residual and output row, its partials (a row a row block) and counter in the arena,
    then its norm epilogue's (lower.mat_vec_epilogues gave it one) or stand-ins."""
    ns, mo = o.params.get("norm"), o.params["m"]
    return (*prog.arg(o.ins[0]), np.int64(o.params["row_bytes"]), np.int32(mo),
            *prog.arg(o.ins[1]), *prog.arg(o.out), *prog.shared("o partials", 4 * units * mo),
            *prog.counters(4), np.int32(ns is not None),
            *launch_weights.norm_args(prog, ns, o.out))  # fmt: skip


def _prompt_rows(prog: OpenCLProgram, step: Step) -> int:
    """Query rows a work-group of fattn_prompt, or 0 where the step takes fattn (or fattn_row)."""
    t, hq, d = step.ins[0].shape
    _, hkv, dv = step.ins[2].shape
    rows = t * (hq // hkv)
    if _cpu(prog) or "nr" in step.params or max(d, dv) > PROMPT_MAX_D or rows < PROMPT_ROWS[0]:
        return 0
    few, many = PROMPT_ROWS
    wide = -(-rows // many) * hkv >= 2 * int(prog.device_info["compute_units"])
    return many if wide and many <= int(prog.device_info["max_work_group_size"]) else few


def _fattn(prog: OpenCLProgram, step: Step) -> list[Launch]:
    p, out_view = step.params, step.out
    assert out_view is not None
    n_attn = p.get("nr", len(step.ins))  # ins past this: the new row and where it goes
    q, k, v = step.ins[:3]
    mask = step.ins[3] if n_attn > 3 else None
    t, hq, d = q.shape
    s, hkv, dv = v.shape
    if d % 4 or dv % 4 or dv > 4 * NT_WIDE:
        raise UnsupportedOp(f"fattn: head sizes {d}, {dv} (multiples of 4 up to {4 * NT_WIDE})")
    nt = _tile(dv, t)
    new_row = "nr" in p
    group = hq // hkv
    cpu = _cpu(prog)
    prompt_rows = _prompt_rows(prog, step)
    nr = (min(MAX_ROWS, t * group) if cpu
          else _rows(prog, t, group, d, nt, 4 * (2 * d + dv) if new_row else 0))  # fmt: skip
    defines = {"NT": nt, "D": d, "DV": dv, "NR": nr, "KF16": int(k.dtype == GGMLType.F16),
               "VF16": int(v.dtype == GGMLType.F16), "NEWROW": int(new_row)}  # fmt: skip
    prompt = None  # fattn_prompt writes no q8 (XQ8 0): a quant_q8 launch follows where asked
    if prompt_rows:
        prompt = prog.kernel(FILE, "fattn_prompt", {**defines, "PT": prompt_rows, "XQ8": 0})
        if not _fits(prompt, prompt_rows):
            prompt_rows, prompt = 0, None
    name, split_keys = "fattn", nt
    vec = None if prompt_rows else _vec(prog, t, group, d, dv, 4 * (2 * d + dv) if new_row else 0)
    # a driver may build fattn_vec for fewer work-items (registers): fattn then
    if vec is not None and _fits(prog.kernel(FILE, "fattn_vec", {**defines, **vec}), vec["VT"]):
        name, nt, nr, split_keys = "fattn_vec", vec["VT"], vec["NR"], VEC_SPLIT_KEYS
        defines.update(vec)
    kernel = None if cpu or prompt_rows else prog.kernel(FILE, name, defines)
    if kernel is not None and not _fits(kernel, nt):
        cpu, kernel = True, None  # fattn_row runs with groups of one
    blocks = -(-(t * group) // nr)
    nsplit, chunk = (1, s) if prompt_rows else _splits(prog, blocks * hkv, s, cpu, split_keys)
    # where the output's q8 blocks come from: the kernel (one split: fattn_row any head size,
    # fattn where its q rows' local memory holds the output rows; not fattn_prompt), else
    # fattn_merge (a row per work-group), else a quant_q8 launch after
    merge_local = dv <= int(prog.device_info["max_work_group_size"])
    # fattn_vec's last split to finish merges them (MERGE_LAST), its q8 rows in the q rows' memory
    vec_launch = kernel is not None and name == "fattn_vec"
    merge_last = vec_launch and nsplit > 1 and MERGE_LAST and dv <= d
    xq = "q8" in p and not prompt_rows and (merge_local if nsplit > 1 else (cpu or dv <= d))
    xq = xq or ("q8" in p and merge_last)
    defines["XQ8"] = int(xq)
    if merge_last:
        defines["MERGE_LAST"] = 1
    # the output projection taken in (lower.attn_o) where fattn_vec writes every row's q8 blocks
    # in the work-group that finishes its rows
    finishes = vec_launch and xq and (nsplit == 1 or merge_last)
    with_o = _with_o(prog, step, name, defines, nt) if finishes else None
    if with_o is not None:
        kernel = with_o
    elif kernel is not None and (xq or merge_last):
        kernel = prog.kernel(FILE, name, defines)
    out = prog.arg(out_view)
    part, nbytes = out, t * hq * nsplit * (dv + 2) * 4
    if nsplit > 1:  # the splits' partial results: in the arena for fattn_vec (no other buffer)
        part = prog.shared(("fattn partials", vec_launch), nbytes, vec_launch)
    args = (
        *prog.arg(q), *prog.arg(k), *prog.arg(v), *prog.arg(mask if mask is not None else q),
        *out, *part, np.int32(t), np.int32(hq), np.int32(hkv), np.int32(s),
        np.int64(k.strides[0]), np.int64(k.strides[1]), np.int64(v.strides[0]),
        np.int64(v.strides[1]), np.float32(p["scale"]), np.float32(p["softcap"]),
        np.int32(mask is not None), np.int32(chunk), *_fused_args(prog, step, xq),
    )  # fmt: skip
    if vec_launch:  # the split counters (the last split resets its own)
        args += prog.counters(4 * blocks * hkv) if merge_last else out
        o_args = _o_args(prog, p["o"], blocks * hkv) if with_o is not None else ()
        args = _vec_args(prog, args, new_row, o_args)
    if prompt:
        size = (-(-(t * group) // prompt_rows) * prompt_rows, hkv, 1)
        launches = [Launch(prompt, size, (prompt_rows, 1, 1), args)]
    elif cpu:
        launches = [Launch(prog.kernel(FILE, "fattn_row", defines), (blocks, hkv, nsplit),
                           (1, 1, 1), args)]  # fmt: skip
    else:
        launches = [Launch(kernel, (blocks * nt, hkv, nsplit), (nt, 1, 1), args)]
    merged = nsplit == 1 or merge_last
    return launches + _after(prog, step, defines, part, None if merged else nsplit, xq, with_o)


def _with_o(prog: OpenCLProgram, step: Step, name: str, defines: dict, nt: int) -> Any:
    """fattn_vec with the step's output projection (lower.attn_o; attention.cl's ATTN_O), or None
    where it has none or the driver builds that kernel for fewer than nt work-items (registers):
    the projection's mat-vec then launches after it."""
    o = step.params.get("o")
    if o is None:
        return None
    kernel = launch_weights.q8_kernel(prog, o.params["type"], name, FILE, **defines, ATTN_O=1)
    return kernel if _fits(kernel, nt) else None


def _after(prog: OpenCLProgram, step: Step, defines: dict, part: tuple, nsplit: int | None,
           xq: bool, with_o: Any) -> list[Launch]:  # fmt: skip
    """The launches after the attention kernel: fattn_merge where its `nsplit` splits are not
    merged by the last of them (a row a work-group where a row fits one), a quant_q8 where no
    kernel wrote the q8 blocks (`xq`), the output projection's mat-vec where the kernel did not
    take it (`with_o`)."""
    p, out, launches = step.params, prog.arg(step.out), []
    (t, hq, _), dv = step.ins[0].shape, step.ins[2].shape[2]
    if nsplit is not None:
        local = (dv, 1) if dv <= int(prog.device_info["max_work_group_size"]) else None
        merge = prog.kernel(FILE, "fattn_merge", defines)
        args = (*part, *out, np.int32(nsplit), *_q8_args(prog, step, xq))
        launches.append(Launch(merge, (dv, t * hq), local, args))
    if "q8" in p and not xq:
        launches.append(quant_q8_launch(prog, step.out, p["q8"]))
    if "o" in p and with_o is None:
        launches += launch_weights.LAUNCHES["mmvq"](prog, p["o"])
    return launches


LAUNCHES: dict[str, Callable[[OpenCLProgram, Step], list[Launch]]] = {"fattn": _fattn}
