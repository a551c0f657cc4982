"""Weight steps split by rows, for devices that cap one buffer's size (OpenCL's
CL_DEVICE_MAX_MEM_ALLOC_SIZE, a quarter of memory on many phones' GPUs; Vulkan's storage-buffer
range): a weight larger than the cap is held as parts of whole rows (``row_chunks``, which the
device's upload and the steps agree on), and each product or lookup reading it becomes one a part.

A one-token part of a product writes its slice of the output in place (its residual's slice
added), since a token's outputs are contiguous; a part of a longer product writes a scratch of
its own, which a ``copy`` step scatters into its columns of the output, and one ``binary`` add
takes the residual after the last part. Nothing is merged across parts later: a part's output is
not the whole value a GLU, norm or epilogue reads. A part of a lookup (``get_rows_w``, with
``params["rows"]``: its first row and count) writes the output rows whose ids fall in it.
"""

from __future__ import annotations

from collections.abc import Callable

from llmrt.gguf.constants import GGMLType
from llmrt.lower.steps import ITEMSIZE, Plan, Step
from llmrt.lower.view import Storage, View

ROW_ALIGN = 256  # a part's rows, where a part of that many rows fits the cap


def row_chunks(m: int, row_bytes: int, max_bytes: int) -> list[tuple[int, int]]:
    """(first row, rows) of each part of an m-row weight held in buffers of at most max_bytes."""
    if m * row_bytes <= max_bytes:
        return [(0, m)]
    rows = max_bytes // row_bytes
    rows = rows // ROW_ALIGN * ROW_ALIGN or max(1, rows)
    return [(r0, min(rows, m - r0)) for r0 in range(0, m, rows)]


def _rows(v: View, r0: int, rows: int) -> View:
    """Rows r0..r0+rows of a one-token output (or residual) view."""
    return View(v.storage, v.offset + r0, (*v.shape[:-1], rows), v.strides, v.dtype)


def _table_parts(st: Step, max_bytes: int) -> list[Step]:
    """A lookup of a weight table, one a part of it."""
    (table, ids), (n_rows, k) = st.ins, st.params["shape"][-2:]
    row_bytes = st.params["type"].row_nbytes(k)
    parts = row_chunks(n_rows, row_bytes, max_bytes)
    if len(parts) == 1:
        return [st]
    return [
        Step(st.op, [_part(table, r0, n, row_bytes), ids], st.out, dict(st.params, rows=(r0, n)))
        for r0, n in parts
    ]


def _part(w: View, r0: int, rows: int, row_bytes: int) -> View:
    """Rows r0..r0+rows of a weight matrix (its offset in bytes, or elements of a float type)."""
    offset = w.offset + r0 * row_bytes // ITEMSIZE.get(w.dtype, 1)
    return View(w.storage, offset, (rows, w.shape[-1]), w.strides, w.dtype)


def split_weight_steps(plan: Plan, storage: Callable[..., Storage], max_bytes: int) -> None:
    """Every ``mmv``, ``gemm`` and ``get_rows_w`` of `plan` whose weight exceeds `max_bytes`,
    one a part (in place); the other steps as they are."""
    out: list[Step] = []
    for st in plan.steps:
        p = st.params
        if st.op == "get_rows_w":
            out += _table_parts(st, max_bytes)
            continue
        if st.op not in ("mmv", "gemm") or p["m"] * p["row_bytes"] <= max_bytes:
            out.append(st)
            continue
        w, x, *res = st.ins
        t, m, y = p["t"], p["m"], st.out
        parts, scatters = [], []
        for r0, rows in row_chunks(m, p["row_bytes"], max_bytes):
            wv = _part(w, r0, rows, p["row_bytes"])
            params = dict(p, m=rows)
            if t == 1:
                ins = [wv, x, *(_rows(r, r0, rows) for r in res)]
                parts.append(Step(st.op, ins, _rows(y, r0, rows), params))
                continue
            part = View.whole(storage("arena", 4 * t * rows), (t, rows), GGMLType.F32)
            parts.append(Step(st.op, [wv, x], part, params))
            cols = View(y.storage, y.offset + r0, (t, rows), (m, 1), GGMLType.F32)
            scatters.append(Step("copy", [part], cols, {"mode": 0}))
        out += parts + scatters
        if t > 1 and res:
            out.append(Step("binary", [y, res[0]], y, {"op": 0}))
    plan.steps[:] = out
