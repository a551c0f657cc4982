// Every step that does not read a quantized weight or attend (llmrt.lower.steps' table): copies,
// elementwise math, norms, rope, softmax, argmax, row gathers and scatters, activation products.
// Activations are contiguous f32 unless noted. Elementwise kernels take a work-item per element
// (or pair, or output) and n, the count, so the host may round the grid up to whole groups (a
// loop over a capped grid ran 5x slower on PoCL, whose vectorizer needs straight-line work-items);
// row kernels take one work-group per row and any group size up to WG_MAX. Results follow core/reference.py (the oracle), roundings included where they show.
#include "common.h"

// a / b for non-negative a, b, in 32 bits when the launch's indices fit (`narrow`, the same for
// every work-item): 64-bit division is a long software routine on most GPUs.
inline long idiv(long a, long b, int narrow) {
    return narrow ? (long)((uint)a / (uint)b) : a / b;
}

// A strided gather of up to 4 dimensions (n1..n3: sizes of dimensions 1-3, s0..s3: element
// strides) into a contiguous tensor, or with `scatter` a contiguous tensor's elements scattered
// so. mode 0: 4-byte elements, 1: 2-byte, 2: f32 -> f16, 3: f16 -> f32.
__kernel void copy_strided(__global const uchar* src_b, ulong src_o, __global uchar* dst_b,
                           ulong dst_o, long n, int mode, long n1, long n2, long n3, long s0,
                           long s1, long s2, long s3, int scatter) {
    const int narrow = n <= 0xffffffffL;
    const long i = get_global_id(0);
    if (i >= n) return;
    const long q3 = idiv(i, n3, narrow), q2 = idiv(q3, n2, narrow), i0 = idiv(q2, n1, narrow);
    const long o = i0 * s0 + (q2 - i0 * n1) * s1 + (q3 - q2 * n2) * s2 + (i - q3 * n3) * s3;
    const long d = scatter ? o : i, s = scatter ? i : o;
    if (mode == 0) {
        PTR(uint, dst_b, dst_o)[d] = CPTR(uint, src_b, src_o)[s];
    } else if (mode == 1) {
        PTR(ushort, dst_b, dst_o)[d] = CPTR(ushort, src_b, src_o)[s];
    } else if (mode == 2) {
        st_f16(PTR(ushort, dst_b, dst_o), d, CPTR(float, src_b, src_o)[s]);
    } else {
        PTR(float, dst_b, dst_o)[d] = ld_f16(CPTR(ushort, src_b, src_o), s);
    }
}

// y = a (op) b with b broadcast over a (op 0 add, 1 mul). kind 0: b has a's shape; 1: b is a
// row of nb elements repeated; 2: general, a's dimensions 1-3 (a1..a3) and b's 0-3 (b0..b3)
// padded to 4 (a dimension of b is 1 or a's).
__kernel void binary(__global const uchar* a_b, ulong a_o, __global const uchar* b_b, ulong b_o,
                     __global uchar* y_b, ulong y_o, long n, int op, int kind, long nb, long a1,
                     long a2, long a3, long b0, long b1, long b2, long b3) {
    __global const float* a = CPTR(float, a_b, a_o);
    __global const float* b = CPTR(float, b_b, b_o);
    __global float* y = PTR(float, y_b, y_o);
    const int narrow = n <= 0xffffffffL;
    const long i = get_global_id(0);
    if (i >= n) return;
    long bi;
    if (kind == 0) {
        bi = i;
    } else if (kind == 1) {
        bi = i - idiv(i, nb, narrow) * nb;
    } else {
        // a's index (i0, i1, i2, i3); b's dimension is 1 (index 0) or a's (the same index)
        const long q3 = idiv(i, a3, narrow), q2 = idiv(q3, a2, narrow);
        const long i0 = idiv(q2, a1, narrow);
        const long i1 = q2 - i0 * a1, i2 = q3 - q2 * a2, i3 = i - q3 * a3;
        bi = (((b0 > 1 ? i0 : 0) * b1 + (b1 > 1 ? i1 : 0)) * b2 + (b2 > 1 ? i2 : 0)) * b3 +
             (b3 > 1 ? i3 : 0);
    }
    y[i] = op == 0 ? a[i] + b[bi] : a[i] * b[bi];
}

inline float silu(float x) { return x / (1.0f + exp(-x)); }

// ggml's CPU GELU (reference.gelu_tanh): the tanh approximation of x rounded to f16, the result
// rounded to f16, exact (0 or x) outside [-10, 10]. 0.5 h (1 + tanh z) is written h / (1 + e^-2z):
// the same value without tanh, which PoCL evaluates several times slower, and without the
// cancellation of 1 + tanh z for negative z (there numpy's tanh gives -1 and so 0; this too).
inline float gelu_f16(float x) {
    const float h = round_f16(clamp(x, -10.0f, 10.0f));
    const float z = 0.7978845608028654f * h * (1.0f + 0.044715f * h * h);
    const float y = round_f16(h / (1.0f + exp(-2.0f * z)));
    return x <= -10.0f ? 0.0f : (x >= 10.0f ? x : y);
}

// op 0: x * scale, 1: silu, 2: gelu
__kernel void unary(__global const uchar* x_b, ulong x_o, __global uchar* y_b, ulong y_o, long n,
                    int op, float scale) {
    __global const float* x = CPTR(float, x_b, x_o);
    __global float* y = PTR(float, y_b, y_o);
    const long i = get_global_id(0);
    if (i >= n) return;
    const float v = x[i];
    y[i] = op == 0 ? v * scale : (op == 1 ? silu(v) : gelu_f16(v));
}

// op 0: silu(g) * u, 1: gelu(g) * u
__kernel void glu(__global const uchar* g_b, ulong g_o, __global const uchar* u_b, ulong u_o,
                  __global uchar* y_b, ulong y_o, long n, int op) {
    __global const float* g = CPTR(float, g_b, g_o);
    __global const float* u = CPTR(float, u_b, u_o);
    __global float* y = PTR(float, y_b, y_o);
    const long i = get_global_id(0);
    if (i >= n) return;
    const float v = g[i];
    y[i] = (op == 0 ? silu(v) : gelu_f16(v)) * u[i];
}

// One work-group per row of ncols (norm_den), times w[col] when has_w.
__kernel void norm_rows(__global const uchar* x_b, ulong x_o, __global uchar* y_b, ulong y_o,
                        __global const uchar* w_b, ulong w_o, int ncols, float eps, int mode,
                        int has_w) {
    __local float red[WG_MAX];
    const long row = get_group_id(0);
    const int l = get_local_id(0), nl = get_local_size(0);
    __global const float* x = CPTR(float, x_b, x_o) + row * ncols;
    __global float* y = PTR(float, y_b, y_o) + row * ncols;
    __global const float* w = CPTR(float, w_b, w_o);
    float m1, corr;
    const float den = norm_den(x, ncols, eps, mode, red, &m1, &corr);
    for (int i = l; i < ncols; i += nl) {
        const float v = ((x[i] - m1) - corr) / den;
        y[i] = has_w ? v * w[i] : v;
    }
}

// norm_rows that also writes its output as q8 blocks (ncols % 32 == 0) into the q8 buffer
// xq (common.h's q8_store4: four columns a work-item, eight a block); the f32 output only where
// has_y (a norm whose only readers are integer mat-vecs need not write it). The second dimension
// of the grid: work-groups sharing a row (norm_q8_row_group's parts).
__kernel void norm_rows_q8(__global const uchar* x_b, ulong x_o, __global uchar* y_b, ulong y_o,
                           __global const uchar* w_b, ulong w_o, int ncols, float eps, int mode,
                           int has_w, int has_y, __global uchar* xq_b, ulong xq_o, long dso) {
    __local float red[WG_MAX];
    __local int redi[WG_MAX];
    const long row = get_group_id(0);
    norm_q8_row_group(CPTR(float, x_b, x_o), PTR(float, y_b, y_o), CPTR(float, w_b, w_o), row,
                      ncols, eps, mode, has_w, has_y, PTR(uchar, xq_b, xq_o), dso, red, redi,
                      get_group_id(1), get_num_groups(1));
}

// x [nblk * 32] f32 -> the q8 buffer xq (q8_store4): four values a work-item, eight a block;
// the local size a multiple of 8.
__kernel void quant_q8(__global const uchar* x_b, ulong x_o, __global uchar* xq_b, ulong xq_o,
                       long dso, long nblk) {
    __local float redf[WG_MAX];
    __local int redi[WG_MAX];
    const long i = get_global_id(0), blk = i >> 3;
    const int active = blk < nblk;
    const float4 v = active ? vload4(i, CPTR(float, x_b, x_o)) : (float4)(0.0f);
    q8_store4(v, active, PTR(uchar, xq_b, xq_o), dso, blk, redf, redi);
}

// quant_q8 on a CPU device, a work-item per block of 32 (common.h's q8_store32): a CPU runs a
// work-group as a loop, and pays for quant_q8's local memory and barriers.
__kernel void quant_q8_blocks(__global const uchar* x_b, ulong x_o, __global uchar* xq_b,
                              ulong xq_o, long dso, long nblk) {
    const long b = get_global_id(0);
    if (b >= nblk) return;
    __global const float* x = CPTR(float, x_b, x_o) + b * 32;
    float v[32];
    for (int i = 0; i < 8; ++i) vstore4(vload4(i, x), i, v);
    q8_store32(v, PTR(uchar, xq_b, xq_o), dso, b);
}

// Rotary embedding of x [T, H, D] (rows of D) over the first n_dims of each row; mode 2 neox
// (pairs i, i + n_dims/2), else adjacent pairs (2i, 2i + 1). A work-item per rotated pair or
// per copied element past n_dims: each row has n_dims/2 + D - n_dims items, n items in all.
// Angles: rope_cos_sin (common.h); r and fs are float-floats (hi, lo) from the host.
__kernel void rope(__global const uchar* x_b, ulong x_o, __global const uchar* pos_b, ulong pos_o,
                   __global const uchar* ff_b, ulong ff_o, __global uchar* y_b, ulong y_o, int H,
                   int D, int n_dims, int mode, int has_ff, float r_hi, float r_lo, float fs_hi,
                   float fs_lo, float attn_factor, long n) {
    __global const float* x = CPTR(float, x_b, x_o);
    __global const int* pos = CPTR(int, pos_b, pos_o);
    __global const float* ff = CPTR(float, ff_b, ff_o);
    __global float* y = PTR(float, y_b, y_o);
    const int nh = n_dims / 2, per_row = nh + D - n_dims;
    const int narrow = n <= 0xffffffffL;
    const long it = get_global_id(0);
    if (it >= n) return;
    const long row = idiv(it, per_row, narrow);
    const int j = (int)(it - row * per_row);
    const long base = row * D;
    if (j >= nh) {
        const int d = n_dims + j - nh;
        y[base + d] = x[base + d];
        return;
    }
    const int t = (int)idiv(row, H, narrow);
    const float2 cs = rope_cos_sin(pos[t], j, (float2)(r_hi, r_lo), (float2)(fs_hi, fs_lo),
                                   has_ff ? ff[j] : 1.0f, attn_factor);
    const int d0 = mode == 2 ? j : 2 * j, d1 = mode == 2 ? j + nh : 2 * j + 1;
    const float x0 = x[base + d0], x1 = x[base + d1];
    y[base + d0] = x0 * cs.x - x1 * cs.y;
    y[base + d1] = x0 * cs.y + x1 * cs.x;
}

// rope(q) -> qo; rope(k) -> rows ids[t] of the K cache; v -> rows ids[t] of the V cache: the
// two ropes and two set_rows of an attention layer in one launch, a work-item per element of
// q, k and v (nq + nk + nv of them). q [T, Hq, D], k [T, Hk, D]; a cache row is krow (vrow)
// elements, rows kstride (vstride) apart, f16 where kf16 (vf16); an id outside the cache writes
// nothing. Angles as in rope (rope_elem, common.h).
__kernel void rope_qkv(__global const uchar* q_b, ulong q_o, __global const uchar* k_b, ulong k_o,
                       __global const uchar* v_b, ulong v_o, __global const uchar* pos_b,
                       ulong pos_o, __global const uchar* ff_b, ulong ff_o, __global uchar* qo_b,
                       ulong qo_o, __global uchar* kc_b, ulong kc_o, __global uchar* vc_b,
                       ulong vc_o, __global const uchar* ids_b, ulong ids_o, int Hq, int Hk, int D,
                       int n_dims, int neox, int has_ff, float r_hi, float r_lo, float fs_hi,
                       float fs_lo, float attn_factor, long nq, long nk, long nv, int vrow,
                       long kstride, long vstride, long cells, int kf16, int vf16) {
    __global const int* pos = CPTR(int, pos_b, pos_o);
    __global const int* ids = CPTR(int, ids_b, ids_o);
    __global const float* ff = CPTR(float, ff_b, ff_o);
    const float2 r = (float2)(r_hi, r_lo), fs = (float2)(fs_hi, fs_lo);
    const int narrow = nq + nk + nv <= 0xffffffffL;
    const long i = get_global_id(0);
    if (i < nq) {
        const long row = idiv(i, D, narrow);
        const int d = (int)(i - row * D), t = (int)idiv(row, Hq, narrow);
        PTR(float, qo_b, qo_o)[i] = rope_elem(CPTR(float, q_b, q_o) + row * D, d, n_dims, neox,
                                              pos[t], ff, has_ff, r, fs, attn_factor);
    } else if (i < nq + nk) {
        const long j = i - nq, row = idiv(j, D, narrow), krow = (long)Hk * D;
        const int d = (int)(j - row * D), t = (int)idiv(row, Hk, narrow);
        const long id = ids[t];
        if (id < 0 || id >= cells) return;
        const float y = rope_elem(CPTR(float, k_b, k_o) + row * D, d, n_dims, neox, pos[t], ff,
                                  has_ff, r, fs, attn_factor);
        const long o = id * kstride + (j - (long)t * krow);
        if (kf16) st_f16(PTR(ushort, kc_b, kc_o), o, y);
        else PTR(float, kc_b, kc_o)[o] = y;
    } else if (i < nq + nk + nv) {
        const long j = i - nq - nk, t = idiv(j, vrow, narrow);
        const long id = ids[t];
        if (id < 0 || id >= cells) return;
        const long o = id * vstride + (j - t * vrow);
        const float y = CPTR(float, v_b, v_o)[j];
        if (vf16) st_f16(PTR(ushort, vc_b, vc_o), o, y);
        else PTR(float, vc_b, vc_o)[o] = y;
    }
}

// rope_qkv on a CPU device: a work-item per token (rope_qkv's arguments, T of them), each rotated
// pair's cos and sin once for all the token's q and k heads, then its V row; D <= 256.
__kernel void rope_qkv_rows(__global const uchar* q_b, ulong q_o, __global const uchar* k_b,
                            ulong k_o, __global const uchar* v_b, ulong v_o,
                            __global const uchar* pos_b, ulong pos_o, __global const uchar* ff_b,
                            ulong ff_o, __global uchar* qo_b, ulong qo_o, __global uchar* kc_b,
                            ulong kc_o, __global uchar* vc_b, ulong vc_o,
                            __global const uchar* ids_b, ulong ids_o, int Hq, int Hk, int D,
                            int n_dims, int neox, int has_ff, float r_hi, float r_lo,
                            float fs_hi, float fs_lo, float attn_factor, long nq, long nk,
                            long nv, int vrow, long kstride, long vstride, long cells, int kf16,
                            int vf16) {
    const long t = get_global_id(0);
    if (t >= nq / ((long)Hq * D)) return;
    __global const float* ff = CPTR(float, ff_b, ff_o);
    const int pos = CPTR(int, pos_b, pos_o)[t];
    float2 cs[128];
    for (int p = 0; p < n_dims / 2; ++p)
        cs[p] = rope_cos_sin(pos, p, (float2)(r_hi, r_lo), (float2)(fs_hi, fs_lo),
                             has_ff ? ff[p] : 1.0f, attn_factor);
    __global const float* q = CPTR(float, q_b, q_o) + t * Hq * D;
    __global float* qo = PTR(float, qo_b, qo_o) + t * Hq * D;
    for (int i = 0; i < Hq * D; ++i) qo[i] = rope_elem_cs(q + (i / D) * D, i % D, n_dims, neox, cs);
    const long id = CPTR(int, ids_b, ids_o)[t];
    if (id < 0 || id >= cells) return;
    __global const float* k = CPTR(float, k_b, k_o) + t * Hk * D;
    for (int i = 0; i < Hk * D; ++i) {
        const float y = rope_elem_cs(k + (i / D) * D, i % D, n_dims, neox, cs);
        if (kf16) st_f16(PTR(ushort, kc_b, kc_o), id * kstride + i, y);
        else PTR(float, kc_b, kc_o)[id * kstride + i] = y;
    }
    __global const float* v = CPTR(float, v_b, v_o) + t * vrow;
    for (int i = 0; i < vrow; ++i) {
        if (vf16) st_f16(PTR(ushort, vc_b, vc_o), id * vstride + i, v[i]);
        else PTR(float, vc_b, vc_o)[id * vstride + i] = v[i];
    }
}

// softmax(x * scale + mask[row % mask_rows]) over rows of S; one work-group per row. The row
// goes through y: scaled and masked, then exp, then divided by the sum. A row masked entirely
// gives NaN, as the reference does.
__kernel void soft_max(__global const uchar* x_b, ulong x_o, __global const uchar* m_b, ulong m_o,
                       __global uchar* y_b, ulong y_o, int S, int mask_rows, float scale,
                       int has_mask) {
    __local float red[WG_MAX];
    const long row = get_group_id(0);
    const int l = get_local_id(0), nl = get_local_size(0);
    __global const float* x = CPTR(float, x_b, x_o) + row * S;
    __global const float* m = CPTR(float, m_b, m_o) + (has_mask ? (row % mask_rows) * S : 0);
    __global float* y = PTR(float, y_b, y_o) + row * S;
    float mx = -INFINITY;
    for (int i = l; i < S; i += nl) {
        const float v = x[i] * scale + (has_mask ? m[i] : 0.0f);
        y[i] = v;
        mx = fmax(mx, v);
    }
    mx = wg_max(mx, red);
    float s = 0.0f;
    for (int i = l; i < S; i += nl) {
        const float e = exp(y[i] - mx);
        y[i] = e;
        s += e;
    }
    s = wg_sum(s, red);
    for (int i = l; i < S; i += nl) y[i] = y[i] / s;
}

// (v, i) beats (b, bi) as numpy's argmax ranks them: NaN above all, then larger, then earlier.
inline int argmax_better(float v, int i, float b, int bi) {
    if (isnan(v)) return !isnan(b) || i < bi;
    if (isnan(b)) return 0;
    return v > b || (v == b && i < bi);
}

// Index of the largest element of each row of S (the first of equals); one work-group per row.
__kernel void argmax(__global const uchar* x_b, ulong x_o, __global uchar* y_b, ulong y_o,
                     int S) {
    __local float rv[WG_MAX];
    __local int ri[WG_MAX];
    const long row = get_group_id(0);
    const uint l = get_local_id(0), nl = get_local_size(0);
    __global const float* x = CPTR(float, x_b, x_o) + row * S;
    float best = -INFINITY;
    int bi = 0x7fffffff;
    for (int i = l; i < S; i += nl) {
        const float v = x[i];
        if (argmax_better(v, i, best, bi)) {
            best = v;
            bi = i;
        }
    }
    rv[l] = best;
    ri[l] = bi;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint s = wg_pow2_half(nl); s > 0; s >>= 1) {
        if (l < s && l + s < nl && argmax_better(rv[l + s], ri[l + s], rv[l], ri[l])) {
            rv[l] = rv[l + s];
            ri[l] = ri[l + s];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (l == 0) PTR(int, y_b, y_o)[row] = ri[0] == 0x7fffffff ? 0 : ri[0];
}

// dst[ids[r]] = src[r] for rows of `row` elements (src contiguous f32; dst rows dst_stride
// elements apart, f16 when f16 != 0). An id outside [0, dst_rows) writes nothing.
__kernel void set_rows(__global const uchar* src_b, ulong src_o, __global const uchar* ids_b,
                       ulong ids_o, __global uchar* dst_b, ulong dst_o, long n, int row,
                       long dst_stride, long dst_rows, int f16) {
    __global const float* src = CPTR(float, src_b, src_o);
    __global const int* ids = CPTR(int, ids_b, ids_o);
    const int narrow = n <= 0xffffffffL;
    const long i = get_global_id(0);
    if (i >= n) return;
    const long r = idiv(i, row, narrow), j = i - r * row;
    const long id = ids[r];
    if (id < 0 || id >= dst_rows) return;
    const long o = id * dst_stride + j;
    if (f16) st_f16(PTR(ushort, dst_b, dst_o), o, src[i]);
    else PTR(float, dst_b, dst_o)[o] = src[i];
}

// out[r] = table[ids[r]] for rows of ncols (table contiguous, f16 when f16 != 0; out f32).
// An id outside [0, rows) gives a row of zeros.
__kernel void get_rows_f32(__global const uchar* t_b, ulong t_o, __global const uchar* ids_b,
                           ulong ids_o, __global uchar* y_b, ulong y_o, long n, int ncols,
                           long rows, int f16) {
    __global const int* ids = CPTR(int, ids_b, ids_o);
    __global float* y = PTR(float, y_b, y_o);
    const int narrow = n <= 0xffffffffL;
    const long i = get_global_id(0);
    if (i >= n) return;
    const long r = idiv(i, ncols, narrow), j = i - r * ncols;
    const long id = ids[r];
    float v = 0.0f;
    if (id >= 0 && id < rows) {
        v = f16 ? ld_f16(CPTR(ushort, t_b, t_o), id * ncols + j)
                : CPTR(float, t_b, t_o)[id * ncols + j];
    }
    y[i] = v;
}

// Activations x activations with ggml's batch broadcast: Y[b, t, m] = sum_k A[b / r, m, k] *
// B[b, t, k] for b < nb. A f32, or f16 when a_f16 (then B is rounded to f16 first, as the
// reference's mul_mat does). Products summed in float.
inline float mm_a(__global const uchar* a_b, ulong a_o, int a_f16, long i) {
    return a_f16 ? ld_f16(CPTR(ushort, a_b, a_o), i) : CPTR(float, a_b, a_o)[i];
}

// A work-item per output: few token rows (decode), where a tile of 16 rows would idle.
__kernel void mm_act(__global const uchar* a_b, ulong a_o, int a_f16, __global const uchar* b_b,
                     ulong b_o, __global uchar* y_b, ulong y_o, int nb, int r, int T, int M,
                     int K) {
    __global const float* B = CPTR(float, b_b, b_o);
    __global float* Y = PTR(float, y_b, y_o);
    const long n = (long)nb * T * M;
    const int narrow = n <= 0xffffffffL;
    const long i = get_global_id(0);
    if (i >= n) return;
    const long bt = idiv(i, M, narrow), b = idiv(bt, T, narrow);
    const int m = (int)(i - bt * M), t = (int)(bt - b * T);
    __global const float* br = B + ((long)b * T + t) * K;
    const long ao = ((long)(b / r) * M + m) * K;
    float s = 0.0f;
    if (a_f16) {
        for (int k = 0; k < K; ++k) s += mm_a(a_b, a_o, 1, ao + k) * round_f16(br[k]);
    } else {
        for (int k = 0; k < K; ++k) s += mm_a(a_b, a_o, 0, ao + k) * br[k];
    }
    Y[i] = s;
}

// Tiles of 16 m x 16 t outputs per work-group (local 16 x 16), A and B staged through local
// memory 16 columns of K at a time. Global (M and T rounded up to 16, nb).
#define MM_TILE 16
__kernel void mm_act_tiled(__global const uchar* a_b, ulong a_o, int a_f16,
                           __global const uchar* b_b, ulong b_o, __global uchar* y_b, ulong y_o,
                           int nb, int r, int T, int M, int K) {
    __local float as[MM_TILE][MM_TILE + 1];
    __local float bs[MM_TILE][MM_TILE + 1];
    const int lx = get_local_id(0), ly = get_local_id(1);
    const int m0 = get_group_id(0) * MM_TILE, t0 = get_group_id(1) * MM_TILE;
    const int b = get_global_id(2);
    __global const float* B = CPTR(float, b_b, b_o) + (long)b * T * K;
    const long abase = (long)(b / r) * M * K;
    float s = 0.0f;
    for (int k0 = 0; k0 < K; k0 += MM_TILE) {
        const int k = k0 + lx;
        // row ly of each tile, column lx: consecutive work-items read consecutive k
        const int ma = m0 + ly, tb = t0 + ly;
        as[ly][lx] = (ma < M && k < K) ? mm_a(a_b, a_o, a_f16, abase + (long)ma * K + k) : 0.0f;
        float bv = (tb < T && k < K) ? B[(long)tb * K + k] : 0.0f;
        bs[ly][lx] = a_f16 ? round_f16(bv) : bv;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < MM_TILE; ++kk) s += as[lx][kk] * bs[ly][kk];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const int m = m0 + lx, t = t0 + ly;
    if (m < M && t < T) PTR(float, y_b, y_o)[((long)b * T + t) * M + m] = s;
}
