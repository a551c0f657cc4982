// Kernels that read a weight in its GGUF blocks, row after row (row_bytes each): get_rows_w,
// mmv (a few tokens) and gemm (many tokens); mmvq and gemmq, the same on q8 activations. Built once per weight type with -D WTYPE=<ggml type
// id>; the preprocessor keeps that type's code path. Every type is read in half-chunks of 16
// elements (half a legacy block, or half a 32-element sub-block of a K-quant super-block) by
// dequant16(), which computes each weight value exactly as the numpy dequantization does.
//
// Activations are rounded before the dot product as ggml rounds them (reference.py's
// vec_dot_round): f16 / bf16 for those weights, q8_0 blocks of 32 for the legacy quants, q8_K
// blocks of 256 for the K-quants; then w * x products are summed in f32.
//
// OpenCL C 1.2: no fp64, half only through vload_half, no subgroups.
#include "common.h"

#ifndef WTYPE
#error "build weights.cl with -D WTYPE=<ggml type id>"
#endif

// Off so that `d * q - m` stays two roundings, as in numpy (a contracted fma would differ in the
// last bit); the dot products use mad() where a fused multiply-add is welcome.
#pragma OPENCL FP_CONTRACT OFF

// How the activations are rounded: XQ_Q8_0 per 32, XQ_Q8_K per 256, XQ_F16, XQ_BF16, or kept.
#define XQ_NONE 0
#define XQ_Q8_0 1
#define XQ_Q8_K 2
#define XQ_F16 3
#define XQ_BF16 4
#if WTYPE == 0
#define XQ XQ_NONE
#elif WTYPE == 1
#define XQ XQ_F16
#elif WTYPE == 30
#define XQ XQ_BF16
#elif WTYPE == 2 || WTYPE == 3 || WTYPE == 6 || WTYPE == 7 || WTYPE == 8
#define XQ XQ_Q8_0
#elif WTYPE == 12 || WTYPE == 13 || WTYPE == 14
#define XQ XQ_Q8_K
#else
#error "unsupported WTYPE"
#endif

#include "qdot.h"

// 16 bytes from an address aligned to 2 (the block sizes 18, 22, 34, 210 leave no better).
inline void ld16_a2(__global const uchar* p, uchar* out) {
    vstore16(as_uchar16(vload8(0, (__global const ushort*)p)), 0, out);
}

// 16 bytes from an address aligned to 4.
inline void ld16_a4(__global const uchar* p, uchar* out) {
    vstore16(as_uchar16(vload4(0, (__global const uint*)p)), 0, out);
}

#if WTYPE == 12 || WTYPE == 13
// ggml's get_scale_min_k4: the 6-bit scale and min of sub-block j of a Q4_K/Q5_K super-block.
inline int2 scale_min_k4(int j, __global const uchar* q) {
    if (j < 4) return (int2)(q[j] & 63, q[j + 4] & 63);
    return (int2)((q[j + 4] & 15) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4));
}
#endif

// Elements 32c + 16h .. 32c + 16h + 15 of the row that starts at `row`, as f32.
inline void dequant16(__global const uchar* row, int c, int h, float* w) {
#if WTYPE == 0  // F32
    __global const float* p = (__global const float*)(row + (size_t)c * 128 + h * 64);
    for (int i = 0; i < 4; ++i) vstore4(vload4(i, p), i, w);
#elif WTYPE == 1  // F16
    __global const half* p = (__global const half*)(row + (size_t)c * 64 + h * 32);
    for (int i = 0; i < 2; ++i) vstore8(vload_half8(i, p), i, w);
#elif WTYPE == 30  // BF16: the top half of an f32
    __global const ushort* p = (__global const ushort*)(row + (size_t)c * 64 + h * 32);
    for (int i = 0; i < 2; ++i) vstore8(as_float8(convert_uint8(vload8(i, p)) << 16), i, w);
#elif WTYPE == 2  // Q4_0: d, qs[16]; element j < 16 is the low nibble of qs[j], j + 16 the high
    __global const uchar* b = row + (size_t)c * 18;
    const float d = ld_h(b);
    uchar q[16];
    ld16_a2(b + 2, q);
    for (int e = 0; e < 16; ++e) w[e] = (float)((int)((q[e] >> (4 * h)) & 15) - 8) * d;
#elif WTYPE == 3  // Q4_1: d, m, qs[16]
    __global const uchar* b = row + (size_t)c * 20;
    const float d = ld_h(b), m = ld_h(b + 2);
    uchar q[16];
    ld16_a4(b + 4, q);
    for (int e = 0; e < 16; ++e) w[e] = (float)((q[e] >> (4 * h)) & 15) * d + m;
#elif WTYPE == 6  // Q5_0: d, qh (bit j: fifth bit of element j), qs[16]
    __global const uchar* b = row + (size_t)c * 22;
    const float d = ld_h(b);
    const __global ushort* hp = (const __global ushort*)(b + 2);
    const uint qh = ((uint)hp[0] | ((uint)hp[1] << 16)) >> (16 * h);
    uchar q[16];
    ld16_a2(b + 6, q);
    for (int e = 0; e < 16; ++e) {
        const int v = ((q[e] >> (4 * h)) & 15) | (((qh >> e) & 1) << 4);
        w[e] = (float)(v - 16) * d;
    }
#elif WTYPE == 7  // Q5_1: d, m, qh, qs[16]
    __global const uchar* b = row + (size_t)c * 24;
    const float d = ld_h(b), m = ld_h(b + 2);
    const uint qh = *(__global const uint*)(b + 4) >> (16 * h);
    uchar q[16];
    ld16_a4(b + 8, q);
    for (int e = 0; e < 16; ++e) {
        const uint v = ((q[e] >> (4 * h)) & 15) | (((qh >> e) & 1) << 4);
        w[e] = (float)v * d + m;
    }
#elif WTYPE == 8  // Q8_0: d, qs[32] int8
    __global const uchar* b = row + (size_t)c * 34;
    const float d = ld_h(b);
    uchar q[16];
    ld16_a2(b + 2 + 16 * h, q);
    for (int e = 0; e < 16; ++e) w[e] = (float)(char)q[e] * d;
#elif WTYPE == 12 || WTYPE == 13  // Q4_K, Q5_K: d, dmin, scales[12], (qh[32]), qs[128]
    // Sub-block s of the super-block: the low (s even) or high nibbles of qs[32 (s / 2) ..],
    // for Q5_K with bit s of qh[0 .. 31] on top; w = d sc q - dmin m.
    const int s = c & 7;
#if WTYPE == 12
    __global const uchar* b = row + (size_t)(c >> 3) * 144;
    __global const uchar* qs = b + 16 + 32 * (s >> 1) + 16 * h;
#else
    __global const uchar* b = row + (size_t)(c >> 3) * 176;
    __global const uchar* qs = b + 48 + 32 * (s >> 1) + 16 * h;
    uchar qh[16];
    ld16_a4(b + 16 + 16 * h, qh);
#endif
    const int2 sm = scale_min_k4(s, b + 4);
    const float d = ld_h(b) * (float)sm.x, m = ld_h(b + 2) * (float)sm.y;
    const int shift = (s & 1) * 4;
    uchar q[16];
    ld16_a4(qs, q);
    for (int e = 0; e < 16; ++e) {
        int v = (q[e] >> shift) & 15;
#if WTYPE == 13
        v |= ((qh[e] >> s) & 1) << 4;
#endif
        w[e] = d * (float)v - m;
    }
#elif WTYPE == 14  // Q6_K: ql[128], qh[64], scales[16] int8, d
    // Sub-block s = 4 hh + k: low 4 bits from ql[64 hh + 32 (k & 1) ..] (low nibbles for k < 2),
    // high 2 bits from qh[32 hh ..] at bit 2k; one int8 scale per 16 elements.
    __global const uchar* b = row + (size_t)(c >> 3) * 210;
    const int s = c & 7, hh = s >> 2, k = s & 3;
    const float d = ld_h(b + 208) * (float)((__global const char*)b)[192 + 2 * s + h];
    uchar ql[16], qh[16];
    ld16_a2(b + 64 * hh + 32 * (k & 1) + 16 * h, ql);
    ld16_a2(b + 128 + 32 * hh + 16 * h, qh);
    const int lshift = (k >> 1) * 4;
    for (int e = 0; e < 16; ++e) {
        const int v = ((ql[e] >> lshift) & 15) | (((qh[e] >> (2 * k)) & 3) << 4);
        w[e] = d * (float)(v - 32);
    }
#endif
}

inline void dequant32(__global const uchar* row, int c, float* w) {
    dequant16(row, c, 0, w);
    dequant16(row, c, 1, w + 16);
}

// ---- activation rounding --------------------------------------------------------------------

// q8 rounding with the block's largest magnitude amax: q = rint(x * 127 / amax) (half to even),
// times the scale d (amax / 127 rounded to f16 for q8_0; 1 / (127 / amax) in f32 for q8_K: the
// reference maps the signed peak to -127, which gives the same products since rint is odd).
inline float2 q8_scales(float amax) {
    const float inv = amax > 0.0f ? div_rn(127.0f, amax) : 0.0f;
#if XQ == XQ_Q8_0
    return (float2)(inv, round_f16(div_rn(amax, 127.0f)));
#else
    return (float2)(inv, inv != 0.0f ? div_rn(1.0f, inv) : 0.0f);
#endif
}

inline float amax_n(const float* x, int n) {
    float a = 0.0f;
    for (int i = 0; i < n; ++i) a = fmax(a, fabs(x[i]));
    return a;
}

// n activations rounded in place, with the q8 scales `s` (from q8_scales) where XQ is a q8 kind.
inline void round_x(float* x, int n, float2 s) {
    for (int i = 0; i < n; ++i) {
#if XQ == XQ_Q8_0 || XQ == XQ_Q8_K
        x[i] = rint(x[i] * s.x) * s.y;
#elif XQ == XQ_F16
        x[i] = round_f16(x[i]);
#elif XQ == XQ_BF16
        x[i] = bf16_to_f32(f32_to_bf16(x[i]));
#endif
    }
}

inline void load8(__global const float* p, float* x) {
    vstore4(vload4(0, p), 0, x);
    vstore4(vload4(1, p), 1, x);
}

// ---- get_rows_w -----------------------------------------------------------------------------

// out[i, :] = row ids[i] of the table, dequantized: one work-item per 16 elements. The table
// wb holds rows row0 .. row0 + n_rows - 1 of n_table (a part of a larger one): ids of other rows
// are left to the launches of the other parts.
__kernel void get_rows_w(__global const uchar* wb, ulong wo, long row_bytes, int n_rows,
                         __global const uchar* ib, ulong io, __global uchar* ob, ulong oo, int K,
                         int N, int row0, int n_table) {
    const int nh = K >> 4;
    const int g = get_global_id(0);
    if (g >= N * nh) return;
    const int i = g / nh, part = g - i * nh;
    // a bad id reads row 0 or the last
    const int id = clamp(CPTR(int, ib, io)[i], 0, n_table - 1) - row0;
    if (id < 0 || id >= n_rows) return;
    float w[16];
    dequant16(wb + wo + (ulong)id * (ulong)row_bytes, part >> 1, part & 1, w);
    __global float* o = PTR(float, ob, oo) + (size_t)i * K + part * 16;
    for (int j = 0; j < 4; ++j) vstore4(vload4(j, w), j, o);
}

// ---- mmv: a few tokens ----------------------------------------------------------------------

// Y[t, m] = sum_k W[m, k] X[t, k] (+ Res[t, m]). A work-group of MMV_WG work-items is split into
// groups of G lanes (G a power of two, 1..MMV_WG); a group computes R consecutive rows for NT
// tokens per pass, lane l taking the 32-element chunks l, l + G, ... The lanes' partial sums
// meet in a tree in local memory.
// Rounding an activation chunk costs about what dequantizing a weight chunk does, so it is shared
// by rows: with NT <= 2 a lane rounds its chunk of every token once and then dequantizes the R
// rows one after the other (R up to 4, few registers); with more tokens a lane holds one row's
// weights (R = 1) and rounds each token's chunk in turn.
// The K-quants' q8_K scale of each (token, super-block) needs the largest magnitude of 256
// activations: the work-group first gathers them into local memory (T * K / 256 <= MMV_SB_MAX;
// the host splits longer token runs into several launches).
#define MMV_WG 64
#define MMV_ACC 8  // R * NT at most
#define MMV_SB_MAX 1024
#if XQ == XQ_Q8_K
#define MMV_SB MMV_SB_MAX
#else
#define MMV_SB 1
#endif

// Chunk c of one token's activations, rounded for this weight type.
inline void mmv_load_x(__global const float* xt, int c, float* x, __local const uint* sbmax) {
    for (int i = 0; i < 4; ++i) load8(xt + c * 32 + 8 * i, x + 8 * i);
#if XQ == XQ_Q8_0
    round_x(x, 32, q8_scales(amax_n(x, 32)));
#elif XQ == XQ_Q8_K
    round_x(x, 32, q8_scales(as_float(sbmax[c >> 3])));
#else
    round_x(x, 32, (float2)(0.0f));
#endif
}

inline float dot32(const float* w, const float* x) {
    float s = 0.0f;
    for (int i = 0; i < 32; ++i) s = mad(w[i], x[i], s);
    return s;
}

inline void mmv_body(const int NT, const int R, __global const uchar* W, long row_bytes,
                     __global const float* X, __global float* Y, __global const float* Res,
                     int M, int K, int T, int G, __local float* red, __local uint* sbmax) {
    const int lid = get_local_id(0);
    const int lane = lid & (G - 1);
    const int row0 = ((int)get_group_id(0) * (MMV_WG / G) + lid / G) * R;
    const int nch = K >> 5, nsb = K >> 8;
#if XQ == XQ_Q8_K
    for (int e = lid; e < T * nsb; e += MMV_WG) sbmax[e] = 0;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int g = lid; g < T * nch; g += MMV_WG) {  // chunk g % nch of token g / nch
        const int t = g / nch, c = g - t * nch;
        float x[32];
        for (int i = 0; i < 4; ++i) load8(X + (size_t)t * K + c * 32 + 8 * i, x + 8 * i);
        // non-negative floats order as their bit patterns: an integer max is a float max
        atomic_max(&sbmax[t * nsb + (c >> 3)], as_uint(amax_n(x, 32)));
    }
    barrier(CLK_LOCAL_MEM_FENCE);
#endif
    __global const uchar* rows[4];
    for (int r = 0; r < R; ++r) rows[r] = W + (ulong)min(row0 + r, M - 1) * (ulong)row_bytes;
    for (int t0 = 0; t0 < T; t0 += NT) {
        __global const float* xt0 = X + (size_t)t0 * K;
        float acc[4][8];
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < NT; ++t) acc[r][t] = 0.0f;
        for (int c = lane; c < nch; c += G) {
            float w[32];
            if (NT <= 2) {  // activations stay, rows pass
                float x[2][32];
                for (int t = 0; t < NT; ++t) {
                    if (t0 + t < T)
                        mmv_load_x(xt0 + (size_t)t * K, c, x[t], sbmax + (t0 + t) * nsb);
                }
                for (int r = 0; r < R; ++r) {
                    dequant32(rows[r], c, w);
                    for (int t = 0; t < NT; ++t)
                        if (t0 + t < T) acc[r][t] += dot32(w, x[t]);
                }
            } else {  // one row stays (R == 1), tokens pass
                dequant32(rows[0], c, w);
                for (int t = 0; t < NT; ++t) {
                    if (t0 + t < T) {
                        float x[32];
                        mmv_load_x(xt0 + (size_t)t * K, c, x, sbmax + (t0 + t) * nsb);
                        acc[0][t] += dot32(w, x);
                    }
                }
            }
        }
        // tree over the G lanes of each group: red[v * MMV_WG + lid] for v = r * NT + t
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < NT; ++t) red[(r * NT + t) * MMV_WG + lid] = acc[r][t];
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int s = G >> 1; s > 0; s >>= 1) {
            if (lane < s)
                for (int v = 0; v < R * NT; ++v) red[v * MMV_WG + lid] += red[v * MMV_WG + lid + s];
            barrier(CLK_LOCAL_MEM_FENCE);
        }
        if (lane == 0) {
            for (int r = 0; r < R; ++r) {
                for (int t = 0; t < NT; ++t) {
                    if (row0 + r < M && t0 + t < T) {
                        const size_t o = (size_t)(t0 + t) * M + row0 + r;
                        const float y = red[(r * NT + t) * MMV_WG + lid];
                        Y[o] = Res ? y + Res[o] : y;
                    }
                }
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);  // red is written again by the next pass
    }
}

// mmv_<NT>_<R>; the residual is read where has_res is non-zero (rb may then be any buffer).
#define MMV(NT, R)                                                                             \
    __kernel __attribute__((reqd_work_group_size(MMV_WG, 1, 1))) void mmv_##NT##_##R(           \
        __global const uchar* wb, ulong wo, long row_bytes, __global const uchar* xb, ulong xo, \
        __global uchar* yb, ulong yo, __global const uchar* rb, ulong ro, int has_res, int M,   \
        int K, int T, int G) {                                                                 \
        __local float red[MMV_ACC * MMV_WG];                                                   \
        __local uint sbmax[MMV_SB];                                                            \
        mmv_body(NT, R, wb + wo, row_bytes, CPTR(float, xb, xo), PTR(float, yb, yo),           \
                 has_res ? CPTR(float, rb, ro) : 0, M, K, T, G, red, sbmax);                   \
    }
MMV(1, 1)
MMV(1, 2)
MMV(1, 4)
MMV(2, 1)
MMV(2, 2)
MMV(4, 1)
MMV(8, 1)

// ---- integer mat-vecs (ggml's MMVQ) for the legacy quants, on q8 activations -----------------
// (a weight block's dot product with a q8 block: qdot.h)
#if WTYPE == 2 || WTYPE == 3 || WTYPE == 6 || WTYPE == 7 || WTYPE == 8
#define MMVQ_WG 64
#define MMVQ_ACC 16  // (R x NT) accumulators per work-item, at most

inline float silu(float x) { return x / (1.0f + exp(-x)); }

// ggml's CPU GELU, as ops.cl's gelu_f16
inline float gelu_f16(float x) {
    const float h = round_f16(clamp(x, -10.0f, 10.0f));
    const float z = 0.7978845608028654f * h * (1.0f + 0.044715f * h * h);
    const float y = round_f16(h / (1.0f + exp(-2.0f * z)));
    return x <= -10.0f ? 0.0f : (x >= 10.0f ? x : y);
}

// Y[t, row] = sum_k W[row, k] x[t, k] (+ Res[t, row]) for up to three matrices over the same
// activations (q, k, v: the work-groups past the first matrix's take the second's rows, then the
// third's), or with glu >= 0 one row of two matrices (gate W0, up W1; R == 2) combined as
// glu(gate) * up (0 silu, 1 gelu). G lanes share a row (lane l takes blocks l, l + G, ...), a
// lane group R rows, and the lanes' sums meet in a local-memory tree.
inline void mmvq_body(const int NT, const int R, __global const uchar* W0,
                      __global const uchar* W1, __global const uchar* W2, long rb,
                      __global const uchar* xq, long dso, __global float* Y0, __global float* Y1,
                      __global float* Y2, __global const float* Rs, int M0, int M1, int M2,
                      int K, int T, int G, int glu, __local float* red) {
    const int lid = get_local_id(0), lane = lid & (G - 1);
    const int per = glu >= 0 ? 1 : R;
    const int rpg = (MMVQ_WG / G) * per;
    int b = get_group_id(0);
    __global const uchar* W = W0;
    __global float* Y = Y0;
    __global const float* Res = Rs;
    int M = M0;
    if (glu < 0) {
        const int nb0 = (M0 + rpg - 1) / rpg;
        if (b >= nb0) {
            b -= nb0;
            W = W1;
            Y = Y1;
            M = M1;
            Res = 0;
            const int nb1 = (M1 + rpg - 1) / rpg;
            if (b >= nb1) {
                b -= nb1;
                W = W2;
                Y = Y2;
                M = M2;
            }
        }
    }
    const int row0 = b * rpg + (lid / G) * per;
    __global const uchar* rows[2];
    for (int r = 0; r < R; ++r) {
        const int row = glu >= 0 ? row0 : row0 + r;
        rows[r] = (glu >= 0 && r == 1 ? W1 : W) + (ulong)min(row, M - 1) * (ulong)rb;
    }
    const int nb = K >> 5;
    __global const float2* DS = (__global const float2*)(xq + dso);
    for (int t0 = 0; t0 < T; t0 += NT) {
        float acc[2][8];
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < NT; ++t) acc[r][t] = 0.0f;
        for (int c = lane; c < nb; c += G) {
            int v[2][8];
            float d[2], m[2];
            for (int r = 0; r < R; ++r) load_wq(rows[r], c, v[r], &d[r], &m[r]);
            for (int t = 0; t < NT; ++t) {
                if (t0 + t < T) {
                    const size_t blk = (size_t)(t0 + t) * nb + c;
                    const int8 x8 = vload8(0, (__global const int*)(xq + blk * 32));
                    const int x[8] = {x8.s0, x8.s1, x8.s2, x8.s3, x8.s4, x8.s5, x8.s6, x8.s7};
                    const float2 ds = DS[blk];
                    const int sx = as_int(ds.y);
                    for (int r = 0; r < R; ++r) acc[r][t] += dot_q(v[r], x, d[r], m[r], ds.x, sx);
                }
            }
        }
#ifdef NV_SHFL
        // the G lanes (at most 32) of a row are G neighbours in a warp: a butterfly over them,
        // no barrier
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < NT; ++t)
                for (int s = G >> 1; s > 0; s >>= 1) acc[r][t] += shfl_xor(acc[r][t], s);
#else
        // tree over the G lanes of each group: red[v * MMVQ_WG + lid] for v = r * NT + t
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < NT; ++t) red[(r * NT + t) * MMVQ_WG + lid] = acc[r][t];
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int s = G >> 1; s > 0; s >>= 1) {
            if (lane < s)
                for (int v = 0; v < R * NT; ++v)
                    red[v * MMVQ_WG + lid] += red[v * MMVQ_WG + lid + s];
            barrier(CLK_LOCAL_MEM_FENCE);
        }
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < NT; ++t) acc[r][t] = red[(r * NT + t) * MMVQ_WG + lid];
#endif
        if (lane == 0) {
            for (int t = 0; t < NT; ++t) {
                if (t0 + t >= T) continue;
                if (glu >= 0) {
                    if (row0 < M) {
                        const float a = acc[0][t], u = acc[1][t];
                        Y[(size_t)(t0 + t) * M + row0] = (glu == 0 ? silu(a) : gelu_f16(a)) * u;
                    }
                } else {
                    for (int r = 0; r < R; ++r) {
                        if (row0 + r < M) {
                            const size_t o = (size_t)(t0 + t) * M + row0 + r;
                            Y[o] = Res ? acc[r][t] + Res[o] : acc[r][t];
                        }
                    }
                }
            }
        }
#ifndef NV_SHFL
        barrier(CLK_LOCAL_MEM_FENCE);  // red is written again by the next pass
#endif
    }
}

// After a one-token mat-vec, the step lower.mat_vec_epilogues gave it. MMVQ_EPILOGUE 1: the GLU
// output y as q8 blocks into oq, each block by the work-group whose rows complete its 32 (an
// atomic count a block in cnt, which that group resets; the others' rows are written, made
// visible before they counted themselves), so no work-group passes over a whole row: rows of any
// length. 2: the output row's norm_q8 (weight nw where has_nw, f32 rows into ny where has_ny, q8
// blocks into nq), by the work-group that finishes last (the same count, one for the row).
#ifndef MMVQ_EPILOGUE
#define MMVQ_EPILOGUE 0
#endif
inline void mmvq_glu_q8(__global const float* y, int M, int G, __global uchar* oq, long odso,
                        __global volatile int* cnt, __local int* done, __local float* redf,
                        __local int* redi) {
    const int lid = get_local_id(0), rpg = MMVQ_WG / G, row0 = get_group_id(0) * rpg;
    const int b0 = row0 / 32, nblk = (min(row0 + rpg, M) - 1) / 32 - b0 + 1;
    const int need = rpg < 32 ? 32 / rpg : 1;  // work-groups a block's rows take
    mem_fence(CLK_GLOBAL_MEM_FENCE);
    barrier(CLK_GLOBAL_MEM_FENCE | CLK_LOCAL_MEM_FENCE);
    if (lid < nblk) {
        done[lid] = need == 1 || atomic_inc(cnt + b0 + lid) == need - 1;
        if (done[lid] && need > 1) atomic_xchg(cnt + b0 + lid, 0);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    mem_fence(CLK_GLOBAL_MEM_FENCE);
    // eight work-items a completed block, four values each
    const int j = lid / 8, active = j < nblk && done[j];
    const float4 v = active ? vload4(0, y + (b0 + j) * 32 + (lid % 8) * 4) : (float4)(0.0f);
    q8_store4(v, active, oq, odso, b0 + (active ? j : 0), redf, redi);
}

inline void mmvq_last_group(__global float* y, int M, __global volatile int* cnt,
                            __global const float* nw, int has_nw,
                            float eps, int mode, int has_ny, __global float* ny,
                            __global uchar* nq, long ndso, __local int* last,
                            __local float* redf, __local int* redi) {
    mem_fence(CLK_GLOBAL_MEM_FENCE);
    barrier(CLK_GLOBAL_MEM_FENCE | CLK_LOCAL_MEM_FENCE);
    if (get_local_id(0) == 0) *last = atomic_inc(cnt) == (int)get_num_groups(0) - 1;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (!*last) return;
    mem_fence(CLK_GLOBAL_MEM_FENCE);
    if (get_local_id(0) == 0) atomic_xchg(cnt, 0);
    norm_q8_row_group(y, ny, nw, 0, M, eps, mode, has_nw, has_ny, nq, ndso, redf, redi, 0, 1);
}

// MMVQ_EPILOGUE 3: epilogue 1 (the GLU row's q8 blocks), then the FFN's down projection in the
// same launch (lower.ffn_down): Wd, Md rows over the GLU's M columns, of the same weight type. Its
// columns go in groups of FFN_GROUP q8 blocks: the work-group whose block completes a group (a
// count a group in gcnt, reset by it) adds that group's part of every row of Wd into the group's
// row of partials; the last group to finish (fcnt) sums the partials in group order, adds the
// residual into yd and norms the row where has_norm, as epilogue 2 does.
#ifndef FFN_GROUP
#define FFN_GROUP 4
#endif
inline void mmvq_ffn_down(int M, int G, __global const uchar* oq, long odso, __local int* done,
                          __global const uchar* Wd, long drb, int Md, __global float* part,
                          __global volatile int* gcnt, __global volatile int* fcnt,
                          __global const float* res, __global float* yd, int has_norm,
                          __global const float* nw, int has_nw, float eps, int mode, int has_ny,
                          __global float* ny, __global uchar* nq, long ndso, __local int* last,
                          __local float* redf, __local int* redi) {
    const int lid = get_local_id(0), row0 = get_group_id(0) * (MMVQ_WG / G);
    const int b0 = row0 / 32, nblk = (min(row0 + MMVQ_WG / G, M) - 1) / 32 - b0 + 1;
    const int nb = M / 32, ngroups = (nb + FFN_GROUP - 1) / FFN_GROUP;
    mem_fence(CLK_GLOBAL_MEM_FENCE);
    barrier(CLK_GLOBAL_MEM_FENCE | CLK_LOCAL_MEM_FENCE);  // this group's q8 blocks are written
    if (lid < nblk) {  // done[j] now: whether this group completed block b0 + j's group
        const int g = (b0 + lid) / FFN_GROUP, size = min(FFN_GROUP, nb - g * FFN_GROUP);
        done[lid] = done[lid] && atomic_inc(gcnt + g) == size - 1;
        if (done[lid]) atomic_xchg(gcnt + g, 0);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    mem_fence(CLK_GLOBAL_MEM_FENCE);
    int took = 0;
    for (int j = 0; j < nblk; ++j) {
        if (!done[j]) continue;
        ++took;
        const int g = (b0 + j) / FFN_GROUP;
        q8_rows_part(Wd, drb, Md, oq, odso, g * FFN_GROUP, min(nb, (g + 1) * FFN_GROUP),
                     part + (size_t)g * Md);
    }
    if (!took || !q8_parts_last(fcnt, took, ngroups, last)) return;  // done is local: the same
    q8_parts_sum(part, ngroups, Md, res, yd, has_norm, nw, has_nw, eps, mode, has_ny, ny, nq, ndso,
                 redf, redi);
}

// mmvq_<NT>_<R>: weights W0..W2 (those past the matrices used stand in, unread), outputs Y0..Y2
// with M0..M2 rows; the residual (Y0's only) where has_res; then mmvq_last_group's epilogue where
// built with one (one token): MMVQ_EPILOGUE 1 the GLU's q8 blocks (glu_q8), 2 the row's norm
// (norm). A define, not a branch on the flags: PoCL's compiler took 47 s over a kernel holding
// both epilogues' barriers (0.2 s without, 0.8 and 6.9 s with one), and a GPU's takes only the
// code it runs. Every activation (xq, the outputs, the residual, the epilogues' outputs) and the
// epilogues' counters are in one buffer A, and the numbers (offsets, sizes, flags; a float as its
// bits) come in the constant block P, in MMVQ_PARAMS' order: NVIDIA's driver spends about 0.25 us
// of host time a buffer argument and 0.07 a scalar on every enqueue (BENCHMARKS.md, 2026-12-07,
// twentieth session).
// epilogue 3's (its weight is W2): whether the down projection norms its row (the norm's own
// flag), its row bytes and rows, where its residual, output row, partials and counters are
#if MMVQ_EPILOGUE == 3
#define MMVQ_DOWN_PARAMS                                                                         \
    const int has_norm = P[30];                                                                  \
    const long drb = P[31];                                                                      \
    const int Md = P[32];                                                                        \
    const ulong dro = P[33], ydo = P[34], parto = P[35], gcnto = P[36], fcnto = P[37]
#else
#define MMVQ_DOWN_PARAMS
#endif
#define MMVQ_PARAMS                                                                              \
    const ulong w0o = P[0], w1o = P[1], w2o = P[2];                                              \
    const long row_bytes = P[3];                                                                 \
    const ulong xqo = P[4];                                                                      \
    const long dso = P[5];                                                                       \
    const ulong y0o = P[6], y1o = P[7], y2o = P[8], ro = P[9];                                   \
    const int has_res = P[10], M0 = P[11], M1 = P[12], M2 = P[13], K = P[14], T = P[15];         \
    const int G = P[16], glu = P[17];                                                            \
    const ulong oqo = P[18];                                                                     \
    const long odso = P[19];                                                                     \
    const ulong cnto = P[21], nwo = P[22];                                                       \
    const int has_nw = P[23];                                                                    \
    const float eps = as_float((int)P[24]);                                                      \
    const int mode = P[25], has_ny = P[26];                                                      \
    const ulong nyo = P[27], nqo = P[28];                                                        \
    const long ndso = P[29];                                                                     \
    MMVQ_DOWN_PARAMS;                                                                            \
    __global uchar *xqb = A, *y0b = A, *y1b = A, *y2b = A, *rb = A, *oqb = A, *nyb = A;          \
    __global uchar *nqb = A, *cntb = A
// The weights' buffers a launch reads (MMVQ_WBUFS of them, 1 to 3: past them W1 and W2 stand
// in as W0) and the norm's weight only where the norm epilogue reads it: arguments, not taken.
#ifndef MMVQ_WBUFS
#define MMVQ_WBUFS 3
#endif
#if MMVQ_WBUFS == 1
#define MMVQ_WEIGHTS __global const uchar* w0b
#define MMVQ_STAND_INS __global const uchar *w1b = w0b, *w2b = w0b
#elif MMVQ_WBUFS == 2
#define MMVQ_WEIGHTS __global const uchar *w0b, __global const uchar *w1b
#define MMVQ_STAND_INS __global const uchar* w2b = w0b
#else
#define MMVQ_WEIGHTS __global const uchar *w0b, __global const uchar *w1b, __global const uchar *w2b
#define MMVQ_STAND_INS
#endif
#if MMVQ_EPILOGUE >= 2
#define MMVQ_NORM_WEIGHT , __global const uchar *nwb
#define MMVQ_NO_NORM_WEIGHT
#else
#define MMVQ_NORM_WEIGHT
#define MMVQ_NO_NORM_WEIGHT __global const uchar* nwb = A
#endif
#if MMVQ_EPILOGUE == 3
#define MMVQ_DOWN                                                                                \
    mmvq_ffn_down(M0, G, PTR(uchar, oqb, oqo), odso, done, w2b + w2o, drb, Md,                   \
                  PTR(float, A, parto), PTR(volatile int, A, gcnto), PTR(volatile int, A, fcnto), \
                  CPTR(float, A, dro), PTR(float, A, ydo), has_norm, CPTR(float, nwb, nwo),       \
                  has_nw, eps, mode, has_ny, PTR(float, nyb, nyo), PTR(uchar, nqb, nqo), ndso,   \
                  &last, red, redi)
#else
#define MMVQ_DOWN
#endif
#define MMVQ(NT, R)                                                                              \
    __kernel __attribute__((reqd_work_group_size(MMVQ_WG, 1, 1))) void mmvq_##NT##_##R(            \
        MMVQ_WEIGHTS, __global uchar* A MMVQ_NORM_WEIGHT, __constant long* P) {                   \
        MMVQ_STAND_INS;                                                                          \
        MMVQ_NO_NORM_WEIGHT;                                                                     \
        MMVQ_PARAMS;                                                                             \
        __local float red[MMVQ_ACC * MMVQ_WG];                                                   \
        __local int redi[MMVQ_WG], last, done[MMVQ_WG / 8];                                      \
        mmvq_body(NT, R, w0b + w0o, w1b + w1o, w2b + w2o, row_bytes, xqb + xqo, dso,             \
                  PTR(float, y0b, y0o), PTR(float, y1b, y1o), PTR(float, y2b, y2o),              \
                  has_res ? CPTR(float, rb, ro) : 0, M0, M1, M2, K, T, G, glu, red);             \
        if (MMVQ_EPILOGUE == 1 || MMVQ_EPILOGUE == 3)                                            \
            mmvq_glu_q8(PTR(float, y0b, y0o), M0, G, PTR(uchar, oqb, oqo), odso,                 \
                        PTR(volatile int, cntb, cnto), done, red, redi);                         \
        MMVQ_DOWN;                                                                               \
        if (MMVQ_EPILOGUE == 2)                                                                  \
            mmvq_last_group(PTR(float, y0b, y0o), M0, PTR(volatile int, cntb, cnto),             \
                            CPTR(float, nwb, nwo), has_nw, eps, mode, has_ny,                    \
                            PTR(float, nyb, nyo), PTR(uchar, nqb, nqo), ndso, &last, red, redi); \
    }
MMVQ(1, 1)
MMVQ(1, 2)
MMVQ(2, 1)
MMVQ(2, 2)
MMVQ(4, 1)
MMVQ(4, 2)
MMVQ(8, 1)
MMVQ(8, 2)
#endif

// ---- weight products on CPU devices (PoCL), any number of tokens --------------------------------
// There a work-group is a loop over its work-items, and barriers and local-memory trees cost more
// than they save: the activations are rounded once (round_rows: a work-item per block of 32, or
// 256 for q8_K), then a work-item computes a row for up to 8 tokens (mmv_row), each weight chunk
// dequantized once for all of them; prompts take tiles of 8 tokens side by side.
#if XQ == XQ_Q8_K
#define ROUND_BLOCK 256
#else
#define ROUND_BLOCK 32
#endif

__kernel void round_rows(__global const uchar* xb, ulong xo, __global uchar* ob, ulong oo, int K,
                         int T) {
    const int nb = K / ROUND_BLOCK, g = get_global_id(0);
    if (g >= T * nb) return;
    const int t = g / nb, b = g - t * nb;
    __global const float* x = CPTR(float, xb, xo) + (size_t)t * K + b * ROUND_BLOCK;
    __global float* o = PTR(float, ob, oo) + (size_t)t * K + b * ROUND_BLOCK;
    float v[32];
    float amax = 0.0f;
    for (int c = 0; c < ROUND_BLOCK / 32; ++c) {
        for (int i = 0; i < 4; ++i) load8(x + c * 32 + 8 * i, v + 8 * i);
        amax = fmax(amax, amax_n(v, 32));
    }
#if XQ == XQ_Q8_0 || XQ == XQ_Q8_K
    const float2 s = q8_scales(amax);
#else
    const float2 s = (float2)(0.0f);
#endif
    for (int c = 0; c < ROUND_BLOCK / 32; ++c) {
        for (int i = 0; i < 4; ++i) load8(x + c * 32 + 8 * i, v + 8 * i);
        round_x(v, 32, s);
        for (int i = 0; i < 8; ++i) vstore4(vload4(i, v), 0, o + c * 32 + 4 * i);
    }
}

#if WTYPE == 2 || WTYPE == 3 || WTYPE == 6 || WTYPE == 7 || WTYPE == 8
#define LEGACY_Q 1
// Block c's levels as signed integers (the type's offset applied: Q4_0's 8, Q5_0's 16), lo the
// block's elements 0-15 and hi 16-31, its scale d and min m (0 where the type has none):
// w = d * level + m.
inline void wq_levels(__global const uchar* row, int c, short16* lo, short16* hi, float* d,
                      float* m) {
    *m = 0.0f;
#if WTYPE == 2  // Q4_0: d, qs[16]; (q - 8) * d
    __global const uchar* b = row + (size_t)c * 18;
    const uchar16 q = vload16(0, b + 2);
    *lo = convert_short16(q & (uchar16)15) - (short)8;
    *hi = convert_short16(q >> (uchar16)4) - (short)8;
#elif WTYPE == 3  // Q4_1: d, m, qs[16]; q * d + m
    __global const uchar* b = row + (size_t)c * 20;
    const uchar16 q = vload16(0, b + 4);
    *lo = convert_short16(q & (uchar16)15);
    *hi = convert_short16(q >> (uchar16)4);
    *m = ld_h(b + 2);
#elif WTYPE == 6 || WTYPE == 7  // Q5_0 (d, qh, qs) and Q5_1 (d, m, qh, qs): bit e of qh on top
    const uint16 lane = (uint16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#if WTYPE == 6
    __global const uchar* b = row + (size_t)c * 22;
    __global const ushort* hp = (__global const ushort*)(b + 2);
    const uchar16 q = vload16(0, b + 6);
#else
    __global const uchar* b = row + (size_t)c * 24;
    __global const ushort* hp = (__global const ushort*)(b + 4);
    const uchar16 q = vload16(0, b + 8);
    *m = ld_h(b + 2);
#endif
    const uint qh = (uint)hp[0] | ((uint)hp[1] << 16);
    *lo = convert_short16(convert_uint16(q & (uchar16)15) | ((((uint16)qh >> lane) & 1) << 4));
    *hi = convert_short16(convert_uint16(q >> (uchar16)4)
                          | ((((uint16)qh >> (lane + 16)) & 1) << 4));
#if WTYPE == 6
    *lo -= (short)16;
    *hi -= (short)16;
#endif
#elif WTYPE == 8  // Q8_0: d, qs[32] int8
    __global const uchar* b = row + (size_t)c * 34;
    *lo = convert_short16(as_char16(vload16(0, b + 2)));
    *hi = convert_short16(as_char16(vload16(0, b + 18)));
#endif
    *d = ld_h(b);
}
#endif

// Chunk c of a row (elements 32c .. 32c + 31) as its levels in two float16 (lo: elements 0-15,
// hi: 16-31) and the scales that make them weights: w = dl * lo + m (dh * hi + m). In vector
// types, which a CPU device maps to its SIMD units. A level times a q8-rounded activation is
// exact in f32, and so is a block's sum of them: scaling after the products rounds once where
// scaling each weight first rounded three times (ggml scales an exact integer block sum).
inline void wq_vec(__global const uchar* row, int c, float16* lo, float16* hi, float* dl,
                   float* dh, float* m) {
    *m = 0.0f;
#if LEGACY_Q
    short16 l, h;
    wq_levels(row, c, &l, &h, dl, m);
    *lo = convert_float16(l);
    *hi = convert_float16(h);
    *dh = *dl;
#elif WTYPE == 12 || WTYPE == 13  // Q4_K, Q5_K: sub-block s = c & 7; w = d sc q - dmin mn
    const int s = c & 7;
#if WTYPE == 12
    __global const uchar* b = row + (size_t)(c >> 3) * 144;
    __global const uchar* qs = b + 16 + 32 * (s >> 1);
#else
    __global const uchar* b = row + (size_t)(c >> 3) * 176;
    __global const uchar* qs = b + 48 + 32 * (s >> 1);
#endif
    const int2 sm = scale_min_k4(s, b + 4);
    const uchar shift = (uchar)((s & 1) * 4);
    uchar16 qlo = (vload16(0, qs) >> shift) & (uchar16)15;
    uchar16 qhi = (vload16(1, qs) >> shift) & (uchar16)15;
#if WTYPE == 13
    qlo |= ((vload16(0, b + 16) >> (uchar)s) & (uchar16)1) << (uchar)4;
    qhi |= ((vload16(1, b + 16) >> (uchar)s) & (uchar16)1) << (uchar)4;
#endif
    *lo = convert_float16(qlo);
    *hi = convert_float16(qhi);
    *dl = *dh = ld_h(b) * (float)sm.x;
    *m = -(ld_h(b + 2) * (float)sm.y);
#elif WTYPE == 14  // Q6_K: ql[128], qh[64], scales[16] int8, d; one scale per 16 elements
    __global const uchar* b = row + (size_t)(c >> 3) * 210;
    const int s = c & 7, hh = s >> 2, k = s & 3;
    __global const char* sc = (__global const char*)b + 192 + 2 * s;
    __global const uchar* ql = b + 64 * hh + 32 * (k & 1);
    __global const uchar* qh = b + 128 + 32 * hh;
    const uchar lshift = (uchar)((k >> 1) * 4), hshift = (uchar)(2 * k);
    const uchar16 vlo = ((vload16(0, ql) >> lshift) & (uchar16)15)
                        | (((vload16(0, qh) >> hshift) & (uchar16)3) << (uchar)4);
    const uchar16 vhi = ((vload16(1, ql) >> lshift) & (uchar16)15)
                        | (((vload16(1, qh) >> hshift) & (uchar16)3) << (uchar)4);
    *lo = convert_float16(convert_int16(vlo) - 32);
    *hi = convert_float16(convert_int16(vhi) - 32);
    const float d = ld_h(b + 208);
    *dl = d * (float)sc[0];
    *dh = d * (float)sc[1];
#else  // the rest as weights, through the scalar dequantization
    float w[32];
    dequant32(row, c, w);
    *lo = vload16(0, w);
    *hi = vload16(1, w);
    *dl = *dh = 1.0f;
#endif
}

#if WTYPE == 3 || WTYPE == 7 || WTYPE == 12 || WTYPE == 13
#define HAS_MIN 1
#else
#define HAS_MIN 0
#endif

// One chunk's contribution to a row's 16 partial sums: levels times activations (exact), then
// scaled; the min times the activations' sum where the type has one.
inline float16 chunk_dot(float16 lo, float16 hi, float dl, float dh, float m,
                         __global const float* x) {
    const float16 x0 = vload16(0, x), x1 = vload16(1, x);
#if HAS_MIN
    return (dl * (lo * x0) + dh * (hi * x1)) + m * (x0 + x1);
#else
    return dl * (lo * x0) + dh * (hi * x1);
#endif
}

// y[t, row] = sum_k W[row, k] x[t, k] (+ res[t, row]): a work-item per row and up to 8 tokens
// (the tokens 8 get_global_id(1) ..), x rounded already (round_rows). A CPU device runs a
// work-group as a loop over its rows: the tokens' activations stay in cache across them.
__kernel void mmv_row(__global const uchar* wb, ulong wo, long row_bytes, __global const uchar* xb,
                      ulong xo, __global uchar* yb, ulong yo, __global const uchar* rb, ulong ro,
                      int has_res, int M, int K, int T) {
    const int row = get_global_id(0), t0 = 8 * get_global_id(1);
    if (row >= M || t0 >= T) return;
    const int tn = min(8, T - t0);
    __global const uchar* w = wb + wo + (ulong)row * (ulong)row_bytes;
    __global const float* x = CPTR(float, xb, xo) + (size_t)t0 * K;
    float16 sum[8];
    for (int t = 0; t < tn; ++t) sum[t] = (float16)(0.0f);
    if (tn == 1) {  // a decode step: the sum in registers
        float16 s = (float16)(0.0f);
        for (int c = 0; c < (K >> 5); ++c) {
            float16 lo, hi;
            float dl, dh, m;
            wq_vec(w, c, &lo, &hi, &dl, &dh, &m);
            s += chunk_dot(lo, hi, dl, dh, m, x + c * 32);
        }
        sum[0] = s;
    } else for (int c = 0; c < (K >> 5); ++c) {
        float16 lo, hi;
        float dl, dh, m;
        wq_vec(w, c, &lo, &hi, &dl, &dh, &m);
        for (int t = 0; t < tn; ++t) sum[t] += chunk_dot(lo, hi, dl, dh, m, x + (size_t)t * K + c * 32);
    }
    __global float* y = PTR(float, yb, yo);
    for (int t = 0; t < tn; ++t) {
        const float8 s8 = sum[t].lo + sum[t].hi;
        const float4 s4 = s8.lo + s8.hi;
        const float acc = (s4.x + s4.y) + (s4.z + s4.w);
        const size_t o = (size_t)(t0 + t) * M + row;
        y[o] = has_res ? acc + CPTR(float, rb, ro)[o] : acc;
    }
}

#if LEGACY_Q
// Two rows' dot products with one token's activations as q8 blocks (ops.cl's quant_q8_blocks): levels
// times x's levels in 16-bit lanes (|31 x 127| x 2 and Q8_0's |127 x 127| x 2 fit), pairs summed
// into 32-bit lanes, each block's eight partial sums scaled by d * dx into eight float lanes: the
// integer dot products of ggml's vec_dot_*_q8, in the vector types PoCL maps to SIMD units; each
// block of x is loaded once for both rows.
inline float2 dot2_q8(__global const uchar* w0, __global const uchar* w1, __global const char* xq,
                      __global const float2* ds, int nb) {
    float8 a0 = (float8)(0.0f), a1 = (float8)(0.0f);
    float m0 = 0.0f, m1 = 0.0f;
    for (int c = 0; c < nb; ++c) {
        const short16 x0 = convert_short16(vload16(0, xq + c * 32));
        const short16 x1 = convert_short16(vload16(1, xq + c * 32));
        const float2 dsx = ds[c];
        const float sx = (float)as_int(dsx.y);
        short16 lo, hi;
        float d, m;
        wq_levels(w0, c, &lo, &hi, &d, &m);
        short16 p = lo * x0 + hi * x1;
        a0 += convert_float8(convert_int8(p.even) + convert_int8(p.odd)) * (d * dsx.x);
        m0 += m * dsx.x * sx;
        wq_levels(w1, c, &lo, &hi, &d, &m);
        p = lo * x0 + hi * x1;
        a1 += convert_float8(convert_int8(p.even) + convert_int8(p.odd)) * (d * dsx.x);
        m1 += m * dsx.x * sx;
    }
    const float4 s0 = a0.lo + a0.hi, s1 = a1.lo + a1.hi;
    return (float2)(((s0.x + s0.y) + (s0.z + s0.w)) + m0, ((s1.x + s1.y) + (s1.z + s1.w)) + m1);
}

#if !defined(LLMRT_PORTABLE) && defined(CPU_HALF) && defined(__AVX2__) && \
    defined(__F16C__) && __has_builtin(__builtin_ia32_pmaddubsw256) && __has_builtin(__builtin_ia32_psignb256) && \
    __has_builtin(__builtin_ia32_vcvtph2ps256)
// An x86 CPU device (PoCL compiles for the host, defining its feature macros): the block products
// of ggml's AVX2 vec_dot_*_q8_0 (vpmaddubsw: unsigned levels times signed x in byte pairs, then
// vpmaddwd into eight 32-bit lanes) and scales by vcvtph2ps, through clang's x86 builtins. The
// integer sums are exact; 15 instructions a row and block where dot2_q8 took ~37 (PoCL 3.1,
// skylake-avx512 code: 576x576 Q4_1 29.0 -> 17.8 us, one thread 6.3 -> 11.9 GB/s on 49152x576).
#define CPU_X86 1
typedef char i8x32 __attribute__((ext_vector_type(32)));
#define CAT32(a, b)                                                                             \
    __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, \
                            18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31)
#if WTYPE == 2
#define BLOCK_BYTES 18
#elif WTYPE == 3
#define BLOCK_BYTES 20
#elif WTYPE == 6
#define BLOCK_BYTES 22
#elif WTYPE == 7
#define BLOCK_BYTES 24
#else
#define BLOCK_BYTES 34
#endif
#define UNSIGNED_LEVELS (WTYPE == 3 || WTYPE == 7)  // Q4_1, Q5_1: levels 0 .. 31 and a min

#if WTYPE == 6 || WTYPE == 7
// bit e of qh as 16 (the fifth bit of level e), for e in 16 h .. 16 h + 15
inline uchar16 x86_bit5(uint qh, int h) {
    const uint16 lane = (uint16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    return convert_uchar16((((uint16)qh >> (lane + (uint)(16 * h))) & 1) << 4);
}
#endif

// The 32 levels of the block at b, in order, as bytes: unsigned where UNSIGNED_LEVELS, else
// signed with the type's offset applied.
inline i8x32 x86_levels(__global const uchar* b) {
#if WTYPE == 2
    const uchar16 q = vload16(0, b + 2);
    return CAT32(as_char16(q & (uchar16)15) - (char)8, as_char16(q >> (uchar16)4) - (char)8);
#elif WTYPE == 3
    const uchar16 q = vload16(0, b + 4);
    return CAT32(as_char16(q & (uchar16)15), as_char16(q >> (uchar16)4));
#elif WTYPE == 6
    const uchar16 q = vload16(0, b + 6);
    const uint qh = vload2(0, (__global const ushort*)(b + 2)).x
                    | ((uint)vload2(0, (__global const ushort*)(b + 2)).y << 16);
    return CAT32(as_char16((q & (uchar16)15) | x86_bit5(qh, 0)) - (char)16,
                 as_char16((q >> (uchar16)4) | x86_bit5(qh, 1)) - (char)16);
#elif WTYPE == 7
    const uchar16 q = vload16(0, b + 8);
    const uint qh = *(__global const uint*)(b + 4);
    return CAT32(as_char16((q & (uchar16)15) | x86_bit5(qh, 0)),
                 as_char16((q >> (uchar16)4) | x86_bit5(qh, 1)));
#else
    return CAT32(vload16(0, (__global const char*)b + 2), vload16(0, (__global const char*)b + 18));
#endif
}

// A block's 32 products with x's levels, summed in eight 32-bit lanes, as floats (exact).
inline float8 x86_block(i8x32 w, i8x32 x) {
#if UNSIGNED_LEVELS
    const short16 p = __builtin_ia32_pmaddubsw256(w, x);
#else  // |w| times x with w's sign (ggml's mul_sum_i8_pairs)
    const short16 p =
        __builtin_ia32_pmaddubsw256(__builtin_ia32_psignb256(w, w), __builtin_ia32_psignb256(x, w));
#endif
    return convert_float8(as_int8(__builtin_ia32_pmaddwd256(p, (short16)(1))));
}

#if WTYPE != 8 && defined(__AVX512BW__) && __has_builtin(__builtin_ia32_pmaddubsw512) && \
    __has_builtin(__builtin_ia32_pmaddwd512) && __has_builtin(__builtin_ia32_cvtmask2b512)
// With AVX-512BW, two blocks a row at a time in 512-bit vectors, ten instructions a row for
// both (Q4_1 one thread: 576x1536 48 -> 33 us, 49152x576 1.50 -> 1.14 ms). Not Q8_0, whose
// signed levels need the sign trick that 512-bit vectors lack (vpsignb).
#define CPU_X86_512 1
typedef char i8x64 __attribute__((ext_vector_type(64)));
typedef uchar u8x32 __attribute__((ext_vector_type(32)));
typedef short i16x32 __attribute__((ext_vector_type(32)));
typedef ushort u16x32 __attribute__((ext_vector_type(32)));
#define SEQ16(o)                                                                               \
    o, o + 1, o + 2, o + 3, o + 4, o + 5, o + 6, o + 7, o + 8, o + 9, o + 10, o + 11, o + 12, \
        o + 13, o + 14, o + 15
#if WTYPE == 2
#define QS_AT 2
#elif WTYPE == 3
#define QS_AT 4
#elif WTYPE == 6
#define QS_AT 6
#else
#define QS_AT 8
#endif
// 8 lanes of scale i of v, then 8 of scale i + 1 (the lanes of x86_block2's two blocks)
#define SCALES2(v, i) \
    __builtin_shufflevector(v, v, i, i, i, i, i, i, i, i, i + 1, i + 1, i + 1, i + 1, i + 1, \
                            i + 1, i + 1, i + 1)

// Blocks c and c + 1 (at b) as their 64 levels in order, unsigned: Q4_0 and Q5_0 without their
// offset, which dot4_q8 takes as a min of -8 d or -16 d.
inline i8x64 x86_levels2(__global const uchar* b) {
    const uchar16 q0 = vload16(0, b + QS_AT), q1 = vload16(0, b + BLOCK_BYTES + QS_AT);
    const u8x32 q = __builtin_shufflevector(q0, q1, SEQ16(0), SEQ16(16));
    // each block's 16 bytes twice (vbroadcasti128), the second copy shifted right by 4: its high
    // nibbles (this form compiles to five instructions; others took eight)
    const u16x32 z = __builtin_astype(
        __builtin_shufflevector(q, q, SEQ16(0), SEQ16(0), SEQ16(16), SEQ16(16)), u16x32);
    const u16x32 sh = (u16x32)(0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4, 0, 0, 0, 0, 0, 0, 0,
                               0, 4, 4, 4, 4, 4, 4, 4, 4);
    i8x64 w = __builtin_astype(z >> sh, i8x64) & (char)15;
#if WTYPE == 6 || WTYPE == 7  // the fifth bits, bit e of the 64 for level e (vpmovm2b)
#if WTYPE == 6
    const ushort2 h0 = vload2(0, (__global const ushort*)(b + 2)),
                  h1 = vload2(0, (__global const ushort*)(b + BLOCK_BYTES + 2));
    const ulong bits =
        (ulong)h0.x | ((ulong)h0.y << 16) | ((ulong)h1.x << 32) | ((ulong)h1.y << 48);
#else
    const ulong bits = (ulong)*(__global const uint*)(b + 4)
                       | ((ulong)*(__global const uint*)(b + BLOCK_BYTES + 4) << 32);
#endif
    w |= __builtin_ia32_cvtmask2b512(bits) & (char)16;
#endif
    return w;
}

// Blocks c and c + 1 of a row times x's two: their products in 16 32-bit lanes (0-7 block c,
// 8-15 block c + 1), as floats (exact)
inline float16 x86_block2(__global const uchar* b, i8x64 x) {
    const i16x32 p = __builtin_ia32_pmaddubsw512(x86_levels2(b), x);
    return convert_float16(as_int16(__builtin_ia32_pmaddwd512(p, (i16x32)(1))));
}
#endif

// Four rows' dot products with one token's q8 blocks: each block of x loaded once for the four,
// their scales (and mins) converted in one vcvtph2ps.
inline float4 dot4_q8(__global const uchar* w0, __global const uchar* w1, __global const uchar* w2,
                      __global const uchar* w3, __global const char* xq,
                      __global const float2* ds, int nb) {
    float8 a0 = (float8)(0.0f), a1 = (float8)(0.0f), a2 = (float8)(0.0f), a3 = (float8)(0.0f);
    float4 mt = (float4)(0.0f);
    int c = 0;
#ifdef CPU_X86_512
    float16 b0 = (float16)(0.0f), b1 = (float16)(0.0f), b2 = (float16)(0.0f), b3 = (float16)(0.0f);
    float8 mt2 = (float8)(0.0f);
    for (; c + 1 < nb; c += 2) {
        __global const char* xc = xq + c * 32;
#ifdef PREFETCH  // the weights PREFETCH bytes on: the rows of the work-items after this one
        __builtin_prefetch(w0 + c * BLOCK_BYTES + PREFETCH);
        __builtin_prefetch(w1 + c * BLOCK_BYTES + PREFETCH);
        __builtin_prefetch(w2 + c * BLOCK_BYTES + PREFETCH);
        __builtin_prefetch(w3 + c * BLOCK_BYTES + PREFETCH);
#endif
        const i8x64 x = __builtin_shufflevector(CAT32(vload16(0, xc), vload16(1, xc)),
                                                CAT32(vload16(2, xc), vload16(3, xc)), SEQ16(0),
                                                SEQ16(16), SEQ16(32), SEQ16(48));
        const float4 dsx = vload4(0, (__global const float*)(ds + c));  // (dx, sum) c, c + 1
        const float8 dx = (float8)(dsx.even, dsx.even, dsx.even, dsx.even);
        const float2 sdx = dsx.even * convert_float2(as_int2(dsx.odd));
        const int o = c * BLOCK_BYTES, o1 = o + BLOCK_BYTES;
        // scales and mins of (row, block) (0, c), (0, c + 1), (1, c) ...
#if UNSIGNED_LEVELS
        const uint8 dm = (uint8)(*(__global const uint*)(w0 + o), *(__global const uint*)(w0 + o1),
                                 *(__global const uint*)(w1 + o), *(__global const uint*)(w1 + o1),
                                 *(__global const uint*)(w2 + o), *(__global const uint*)(w2 + o1),
                                 *(__global const uint*)(w3 + o), *(__global const uint*)(w3 + o1));
        const float8 f0 = __builtin_ia32_vcvtph2ps256(as_short8(dm.lo));
        const float8 f1 = __builtin_ia32_vcvtph2ps256(as_short8(dm.hi));
        const float8 d = (float8)(f0.even, f1.even) * dx, m = (float8)(f0.odd, f1.odd);
#else
        const ushort8 dh = (ushort8)(
            *(__global const ushort*)(w0 + o), *(__global const ushort*)(w0 + o1),
            *(__global const ushort*)(w1 + o), *(__global const ushort*)(w1 + o1),
            *(__global const ushort*)(w2 + o), *(__global const ushort*)(w2 + o1),
            *(__global const ushort*)(w3 + o), *(__global const ushort*)(w3 + o1));
        const float8 f = __builtin_ia32_vcvtph2ps256(as_short8(dh));
        const float8 d = f * dx, m = f * (WTYPE == 2 ? -8.0f : -16.0f);
#endif
        mt2 = fma(m, (float8)(sdx, sdx, sdx, sdx), mt2);
        const float16 dd = (float16)(d, d);
        b0 = fma(x86_block2(w0 + o, x), SCALES2(dd, 0), b0);
        b1 = fma(x86_block2(w1 + o, x), SCALES2(dd, 2), b1);
        b2 = fma(x86_block2(w2 + o, x), SCALES2(dd, 4), b2);
        b3 = fma(x86_block2(w3 + o, x), SCALES2(dd, 6), b3);
    }
    a0 = b0.lo + b0.hi;
    a1 = b1.lo + b1.hi;
    a2 = b2.lo + b2.hi;
    a3 = b3.lo + b3.hi;
    mt = mt2.even + mt2.odd;
#endif
    for (; c < nb; ++c) {
        const i8x32 x = CAT32(vload16(0, xq + c * 32), vload16(1, xq + c * 32));
        const float2 dsx = ds[c];
        const int o = c * BLOCK_BYTES;
#ifdef PREFETCH
        if ((c & 1) == 0) {
            __builtin_prefetch(w0 + o + PREFETCH);
            __builtin_prefetch(w1 + o + PREFETCH);
            __builtin_prefetch(w2 + o + PREFETCH);
            __builtin_prefetch(w3 + o + PREFETCH);
        }
#endif
#if UNSIGNED_LEVELS  // d and m, two halves side by side
        const uint4 dm = (uint4)(*(__global const uint*)(w0 + o), *(__global const uint*)(w1 + o),
                                 *(__global const uint*)(w2 + o), *(__global const uint*)(w3 + o));
        const float8 f = __builtin_ia32_vcvtph2ps256(as_short8(dm));
        const float4 d = f.even * dsx.x;
        mt = fma(f.odd, (float4)(dsx.x * (float)as_int(dsx.y)), mt);
#else
        const ushort4 dh = (ushort4)(*(__global const ushort*)(w0 + o),
                                     *(__global const ushort*)(w1 + o),
                                     *(__global const ushort*)(w2 + o),
                                     *(__global const ushort*)(w3 + o));
        const float4 d = __builtin_ia32_vcvtph2ps(as_short8((ushort8)(dh, (ushort4)(0)))) * dsx.x;
#endif
        a0 = fma(x86_block(x86_levels(w0 + o), x), (float8)(d.x), a0);
        a1 = fma(x86_block(x86_levels(w1 + o), x), (float8)(d.y), a1);
        a2 = fma(x86_block(x86_levels(w2 + o), x), (float8)(d.z), a2);
        a3 = fma(x86_block(x86_levels(w3 + o), x), (float8)(d.w), a3);
    }
    const float4 s0 = a0.lo + a0.hi, s1 = a1.lo + a1.hi, s2 = a2.lo + a2.hi, s3 = a3.lo + a3.hi;
    return (float4)((s0.x + s0.y) + (s0.z + s0.w), (s1.x + s1.y) + (s1.z + s1.w),
                    (s2.x + s2.y) + (s2.z + s2.w), (s3.x + s3.y) + (s3.z + s3.w)) + mt;
}
#else
inline float4 dot4_q8(__global const uchar* w0, __global const uchar* w1, __global const uchar* w2,
                      __global const uchar* w3, __global const char* xq,
                      __global const float2* ds, int nb) {
    return (float4)(dot2_q8(w0, w1, xq, ds, nb), dot2_q8(w2, w3, xq, ds, nb));
}
#endif

// A decode step's y[row] = sum_k W[row, k] x[k] (+ res[row]) on a CPU device, for the legacy
// types: four rows a work-item (dot4_q8).
__kernel void mmv_row_q8(__global const uchar* wb, ulong wo, long row_bytes,
                         __global const uchar* qb, ulong qo, long dso, __global uchar* yb,
                         ulong yo, __global const uchar* rb, ulong ro, int has_res, int M,
                         int K) {
    const int row = 4 * get_global_id(0);
    if (row >= M) return;
    __global const uchar* w = wb + wo;
    const float4 y4 = dot4_q8(w + (ulong)row * (ulong)row_bytes,
                              w + (ulong)min(row + 1, M - 1) * (ulong)row_bytes,
                              w + (ulong)min(row + 2, M - 1) * (ulong)row_bytes,
                              w + (ulong)min(row + 3, M - 1) * (ulong)row_bytes,
                              (__global const char*)(qb + qo),
                              (__global const float2*)(qb + qo + dso), K >> 5);
    __global float* y = PTR(float, yb, yo);
    __global const float* res = CPTR(float, rb, ro);
    const float v[4] = {y4.x, y4.y, y4.z, y4.w};
    for (int r = 0; r < 4 && row + r < M; ++r) y[row + r] = has_res ? v[r] + res[row + r] : v[r];
}

// The decode fusions' integer mat-vec (mmvq_body's arguments and outputs) on a CPU device: four
// rows a work-item (dot4_q8) with no local memory or barriers (a CPU runs a work-group as a loop,
// and pays for both). Up to three matrices over the same activations (the work-items past the
// first's rows take the second's, then the third's), or with glu >= 0 two gate rows of W0 and the
// same two up rows of W1 a work-item, combined (0 silu, 1 gelu); the residual is Y0's only. T
// tokens, one after another. With glu_q8 (one token, M0 % 32 == 0) a work-item takes 32 GLU
// outputs and also writes them as a q8 block into oq (the quant_q8 step after it, in one launch).
inline void mmvq_cpu_rows(__global const uchar* w0b, ulong w0o, __global const uchar* w1b,
                          ulong w1o, __global const uchar* w2b, ulong w2o, long row_bytes,
                          __global const uchar* xqb, ulong xqo, long dso, __global uchar* y0b,
                          ulong y0o, __global uchar* y1b, ulong y1o, __global uchar* y2b,
                          ulong y2o, __global const uchar* rb, ulong ro, int has_res, int M0,
                          int M1, int M2, int K, int T, int glu, __global uchar* oqb, ulong oqo,
                          long odso, int glu_q8) {
    int i = get_global_id(0);
    __global const uchar* W = w0b + w0o;
    __global float* Y = PTR(float, y0b, y0o);
    int M = M0, res = has_res;
    __global const uchar* W1 = w1b + w1o;
    if (glu >= 0 && glu_q8) {  // one token, a block of 32 GLU outputs a work-item, then its q8
        if (32 * i >= M0) return;
        __global const char* xq = (__global const char*)(xqb + xqo);
        __global const float2* ds = (__global const float2*)(xqb + xqo + dso);
        float v[32];
        for (int j = 0; j < 32; j += 2) {
            const int r = 32 * i + j;
            const float4 y4 = dot4_q8(W + (ulong)r * (ulong)row_bytes,
                                      W + (ulong)(r + 1) * (ulong)row_bytes,
                                      W1 + (ulong)r * (ulong)row_bytes,
                                      W1 + (ulong)(r + 1) * (ulong)row_bytes, xq, ds, K >> 5);
            v[j] = (glu == 0 ? silu(y4.x) : gelu_f16(y4.x)) * y4.z;
            v[j + 1] = (glu == 0 ? silu(y4.y) : gelu_f16(y4.y)) * y4.w;
        }
        for (int j = 0; j < 32; ++j) Y[32 * i + j] = v[j];
        q8_store32(v, oqb + oqo, odso, i);
        return;
    }
    if (glu >= 0) {
        if (2 * i >= M0) return;
    } else {
        if (i >= (M0 + 3) / 4) {
            i -= (M0 + 3) / 4;
            W = w1b + w1o;
            Y = PTR(float, y1b, y1o);
            M = M1;
            res = 0;
            if (i >= (M1 + 3) / 4) {
                i -= (M1 + 3) / 4;
                W = w2b + w2o;
                Y = PTR(float, y2b, y2o);
                M = M2;
                if (i >= (M2 + 3) / 4) return;
            }
        }
    }
    const int nb = K >> 5;
    __global const float* R = CPTR(float, rb, ro);
    // glu: gate rows r0, r1 and up rows r0, r1; else rows r0 .. r0 + 3 of W
    const int r0 = glu >= 0 ? 2 * i : 4 * i, last = M - 1;
    __global const uchar* a = W + (ulong)r0 * (ulong)row_bytes;
    __global const uchar* b = W + (ulong)min(r0 + 1, last) * (ulong)row_bytes;
    __global const uchar* c = glu >= 0 ? W1 + (ulong)r0 * (ulong)row_bytes
                                       : W + (ulong)min(r0 + 2, last) * (ulong)row_bytes;
    __global const uchar* d = glu >= 0 ? W1 + (ulong)min(r0 + 1, last) * (ulong)row_bytes
                                       : W + (ulong)min(r0 + 3, last) * (ulong)row_bytes;
    for (int t = 0; t < T; ++t) {
        const float4 y4 = dot4_q8(a, b, c, d, (__global const char*)(xqb + xqo) + (size_t)t * K,
                                  (__global const float2*)(xqb + xqo + dso) + (size_t)t * nb, nb);
        const size_t o = (size_t)t * M + r0;
        if (glu >= 0) {
            Y[o] = (glu == 0 ? silu(y4.x) : gelu_f16(y4.x)) * y4.z;
            if (r0 + 1 < M) Y[o + 1] = (glu == 0 ? silu(y4.y) : gelu_f16(y4.y)) * y4.w;
            continue;
        }
        const float v[4] = {y4.x, y4.y, y4.z, y4.w};
        for (int r = 0; r < 4 && r0 + r < M; ++r) Y[o + r] = res ? v[r] + R[o + r] : v[r];
    }
}

// A row's norm (ops.cl's norm_rows_q8 in 16 vector lanes for its 16 work-items: Kahan sums a lane,
// then a tree; mode 0 rms_norm, 1 norm), times w where has_w, into y where has_y and as q8 blocks
// into xq (q8_store32's bytes); ncols % 32 == 0.
inline void kahan16(float16* s, float16* c, float16 v) {
    const float16 y = v - *c;
    const float16 t = *s + y;
    *c = (t - *s) - y;
    *s = t;
}

inline float sum16(float16 v) {
    const float8 a = v.lo + v.hi;
    const float4 b = a.lo + a.hi;
    return (b.x + b.z) + (b.y + b.w);
}

inline void norm_q8_row(__global const float* x, int ncols, __global const float* w, int has_w,
                        float eps, int mode, int has_y, __global float* y, __global uchar* xq,
                        long dso) {
    const int n16 = ncols / 16;
    float m1 = 0.0f, corr = 0.0f, den;
    if (mode == 1) {
        float16 s = (float16)(0.0f), c = (float16)(0.0f);
        for (int i = 0; i < n16; ++i) kahan16(&s, &c, vload16(i, x));
        m1 = sum16(s - c) / ncols;
        float16 d = (float16)(0.0f), dc = (float16)(0.0f);
        float16 q = (float16)(0.0f), qc = (float16)(0.0f);
        for (int i = 0; i < n16; ++i) {
            const float16 v = vload16(i, x) - m1;
            kahan16(&d, &dc, v);
            kahan16(&q, &qc, v * v);
        }
        corr = sum16(d - dc) / ncols;
        den = sqrt(fmax(sum16(q - qc) / ncols - corr * corr, 0.0f) + eps);
    } else {
        float16 q = (float16)(0.0f), qc = (float16)(0.0f);
        for (int i = 0; i < n16; ++i) {
            const float16 v = vload16(i, x);
            kahan16(&q, &qc, v * v);
        }
        den = sqrt(sum16(q - qc) / ncols + eps);
    }
    for (int b = 0; b < ncols / 32; ++b) {
        float16 v0 = ((vload16(2 * b, x) - m1) - corr) / den;
        float16 v1 = ((vload16(2 * b + 1, x) - m1) - corr) / den;
        if (has_w) {
            v0 *= vload16(2 * b, w);
            v1 *= vload16(2 * b + 1, w);
        }
        if (has_y) {
            vstore16(v0, 2 * b, y);
            vstore16(v1, 2 * b + 1, y);
        }
        const float16 m = fmax(fabs(v0), fabs(v1));
        const float8 m8 = fmax(m.lo, m.hi);
        const float4 m4 = fmax(m8.lo, m8.hi);
        const float amax = fmax(fmax(m4.x, m4.y), fmax(m4.z, m4.w));
        const float inv = amax > 0.0f ? div_rn(127.0f, amax) : 0.0f;
        const int16 q0 = convert_int16(rint(v0 * inv)), q1 = convert_int16(rint(v1 * inv));
        __global char* qs = (__global char*)xq + b * 32;
        vstore16(convert_char16(q0), 0, qs);
        vstore16(convert_char16(q1), 1, qs);
        const int16 qq = q0 + q1;
        const int8 q8 = qq.lo + qq.hi;
        const int4 q4 = q8.lo + q8.hi;
        ((__global float2*)(xq + dso))[b] =
            (float2)(round_f16(div_rn(amax, 127.0f)), as_float((q4.x + q4.y) + (q4.z + q4.w)));
    }
}

// mmvq_cpu_rows; with norm (one token, one matrix: a residual's sum) the work-item that finishes
// last (an atomic count in cnt, which it resets) then takes the output row's norm_q8 (the step
// after it, in the same launch: every other work-item has written its rows and read its inputs).
__kernel void mmvq_cpu(__global const uchar* w0b, ulong w0o, __global const uchar* w1b, ulong w1o,
                       __global const uchar* w2b, ulong w2o, long row_bytes,
                       __global const uchar* xqb, ulong xqo, long dso, __global uchar* y0b,
                       ulong y0o, __global uchar* y1b, ulong y1o, __global uchar* y2b,
                       ulong y2o, __global const uchar* rb, ulong ro, int has_res, int M0,
                       int M1, int M2, int K, int T, int G, int glu, __global uchar* oqb,
                       ulong oqo, long odso, int glu_q8, __global uchar* cntb, ulong cnto,
                       __global const uchar* nwb, ulong nwo, int has_nw, float eps, int mode,
                       int has_ny, __global uchar* nyb, ulong nyo, __global uchar* nqb,
                       ulong nqo, long ndso, int norm) {
    mmvq_cpu_rows(w0b, w0o, w1b, w1o, w2b, w2o, row_bytes, xqb, xqo, dso, y0b, y0o, y1b, y1o, y2b,
                  y2o, rb, ro, has_res, M0, M1, M2, K, T, glu, oqb, oqo, odso, glu_q8);
    if (!norm) return;
    mem_fence(CLK_GLOBAL_MEM_FENCE);
    __global volatile int* cnt = PTR(volatile int, cntb, cnto);
    if (atomic_inc(cnt) != (int)get_global_size(0) - 1) return;
    mem_fence(CLK_GLOBAL_MEM_FENCE);
    atomic_xchg(cnt, 0);
    norm_q8_row(PTR(float, y0b, y0o), M0, CPTR(float, nwb, nwo), has_nw, eps, mode, has_ny,
                PTR(float, nyb, nyo), PTR(uchar, nqb, nqo), ndso);
}
#endif

// ---- gemm: many tokens ----------------------------------------------------------------------

// Y[t, m] = sum_k W[m, k] X[t, k] (+ Res[t, m]) in tiles of GEMM_M rows x GEMM_T tokens, one
// work-group of GEMM_WG work-items each; K advances a 32-element chunk at a time. Per chunk the
// work-items dequantize the tile's weights (one half-chunk each) and round its activations (a
// quarter-chunk each: the q8_0 block's largest magnitude meets in local memory) into local
// memory, then each computes a 4 x 4 block of outputs: rows tx + 16 i, tokens ty + 8 j.
// The K-quants' q8_K scale is gathered per super-block (every 8 chunks) the same way.
#define GEMM_M 64
#define GEMM_T 32
#define GEMM_WG 128

__kernel __attribute__((reqd_work_group_size(GEMM_WG, 1, 1))) void gemm(
    __global const uchar* wb, ulong wo, long row_bytes, __global const uchar* xb, ulong xo,
    __global uchar* yb, ulong yo, __global const uchar* rb, ulong ro, int has_res, int M, int K,
    int T) {
    // k-major tiles; the +1 keeps the weight stores (rows 16 apart) in different banks
    __local float ws[32][GEMM_M + 1];
    __local float xs[32][GEMM_T + 1];
    __local float xmax[GEMM_T][4];  // partial largest magnitudes of a token's q8 block
    const int lid = get_local_id(0);
    const int m0 = get_group_id(0) * GEMM_M, t0 = get_group_id(1) * GEMM_T;
    const int wr = lid >> 1, wh = lid & 1;  // the weight row and half-chunk this item loads
    const int xt = lid >> 2, xq = lid & 3;  // the token and quarter-chunk it loads
    __global const uchar* wrow = wb + wo + (ulong)min(m0 + wr, M - 1) * (ulong)row_bytes;
    __global const float* xrow = CPTR(float, xb, xo) + (size_t)min(t0 + xt, T - 1) * K;
    const int tx = lid & 15, ty = lid >> 4;
    float acc[4][4];
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    float2 sc = (float2)(0.0f);
    const int nch = K >> 5;
    for (int c = 0; c < nch; ++c) {
#if XQ == XQ_Q8_K
        if ((c & 7) == 0) {  // a new super-block: its largest magnitude per token
            float a = 0.0f;
            for (int i = 0; i < 8; ++i) {
                float x[8];
                load8(xrow + c * 32 + xq * 64 + 8 * i, x);
                a = fmax(a, amax_n(x, 8));
            }
            xmax[xt][xq] = a;
            barrier(CLK_LOCAL_MEM_FENCE);
            sc = q8_scales(fmax(fmax(xmax[xt][0], xmax[xt][1]), fmax(xmax[xt][2], xmax[xt][3])));
        }
#endif
        barrier(CLK_LOCAL_MEM_FENCE);  // the previous chunk's products are done with ws, xs, xmax
        float w[16];
        dequant16(wrow, c, wh, w);
        for (int e = 0; e < 16; ++e) ws[16 * wh + e][wr] = w[e];
        float x[8];
        load8(xrow + c * 32 + xq * 8, x);
#if XQ == XQ_Q8_0
        xmax[xt][xq] = amax_n(x, 8);
        barrier(CLK_LOCAL_MEM_FENCE);
        sc = q8_scales(fmax(fmax(xmax[xt][0], xmax[xt][1]), fmax(xmax[xt][2], xmax[xt][3])));
#endif
        round_x(x, 8, sc);
        for (int e = 0; e < 8; ++e) xs[xq * 8 + e][xt] = x[e];
        barrier(CLK_LOCAL_MEM_FENCE);
        // a chunk's 32 products summed apart, then added: a long K's rounding error grows
        // with K / 32 additions instead of K
        float chunk[4][4];
        for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 4; ++j) chunk[i][j] = 0.0f;
        for (int kk = 0; kk < 32; ++kk) {
            float a[4], b[4];
            for (int i = 0; i < 4; ++i) a[i] = ws[kk][tx + 16 * i];
            for (int j = 0; j < 4; ++j) b[j] = xs[kk][ty + 8 * j];
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) chunk[i][j] = mad(a[i], b[j], chunk[i][j]);
        }
        for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 4; ++j) acc[i][j] += chunk[i][j];
    }
    __global float* Y = PTR(float, yb, yo);
    __global const float* Res = CPTR(float, rb, ro);
    for (int j = 0; j < 4; ++j) {
        const int t = t0 + ty + 8 * j;
        for (int i = 0; i < 4; ++i) {
            const int m = m0 + tx + 16 * i;
            if (t < T && m < M) {
                const size_t o = (size_t)t * M + m;
                Y[o] = has_res ? acc[i][j] + Res[o] : acc[i][j];
            }
        }
    }
}

// ---- gemmq: many tokens on q8 activations (ggml's MMQ) -----------------------------------------
// Y[t, m] = sum_k W[m, k] X[t, k] (+ Res[t, m]) for the legacy quants, with X quantized once to
// q8 blocks (a quant_q8 or norm_q8 step before, as for mmvq) and the products integer dot
// products, block by block as mmvq takes them (dot_q): each (row, token) pair's int sum over a
// block of 32, times d_w * d_x (Q4_1 / Q5_1: d_x (d_w s + m_w sum(x))), added in f32.
// A work-group of GQ_RX x GQ_RY work-items computes GQ_RX * GQ_TM rows x GQ_RY * GQ_TN tokens:
// GQ_NB blocks of K at a time, the weights unpacked to int8 levels (4 a word; Q4_0 and Q5_0
// with their offset applied, so no activation sum is needed) and the activations' words copied,
// both into local memory with their scales; then work-item (tx, ty) takes from local memory rows
// in runs of 4 (GQ_RX * 4 i + 4 tx + 0..3, i < GQ_TM / 4) and tokens likewise, a run one 16-byte
// load (neighbouring work-items' runs side by side: no bank conflict), 8 dp4 a pair and block.
// The host picks the tile (GQ_* defines, GQ_TM and GQ_TN multiples of 4) from the device's limits.
// GQ_MMA 1 (NVIDIA from compute capability 8.0): the products on tensor cores instead, one
// mma.sync m16n8k32 (s8 x s8 -> s32: a block of 32 for 16 rows x 8 tokens) through inline PTX per
// fragment pair, each of the 8 warps taking 32 rows x GQ_BN / 2 tokens of the 128-row tile from
// the same local memory (its rows padded to a fragment's 32 banks); the integer sums are the
// same, so the outputs are dp4a's to the bit. GQ_MMA 2: the tests' stand-in for the instruction
// on any device (the fragments meet in local memory).
#if WTYPE == 2 || WTYPE == 3 || WTYPE == 6 || WTYPE == 7 || WTYPE == 8
#ifndef GQ_RX
#define GQ_RX 16
#define GQ_RY 16
#define GQ_TM 8
#define GQ_TN 4
#define GQ_NB 4
#endif
#define GQ_WG (GQ_RX * GQ_RY)
#define GQ_BM (GQ_RX * GQ_TM)
#define GQ_BN (GQ_RY * GQ_TN)
#define GQ_WORDS (GQ_NB * 8)       // 32-bit words of a row's (a token's) blocks in a stage
#define GQ_MIN (WTYPE == 3 || WTYPE == 7)  // a min term: d_x m_w sum(x)
#ifndef GQ_MMA
#define GQ_MMA 0
#endif
#if GQ_MMA
#if GQ_BM != 128 || GQ_WG != 256 || GQ_BN % 16
#error "gemmq's tensor-core tiles are 128 rows, 256 work-items, tokens a multiple of 16"
#endif
#define GQ_PAD 2                 // int4 a word row: a fragment's 32 loads on 32 banks
#define GQ_NI (GQ_BN / 16)       // a warp's n8 tiles (two warps across the tokens)
#else
#define GQ_PAD 1
#endif

#if GQ_MMA == 1
// D = A B for one m16n8k32 fragment set (a: 4 words of A's rows g, g + 8 at words tq, tq + 4;
// b: 2 words of B's column g at words tq, tq + 4; d: rows g, g + 8 x columns 2 tq, 2 tq + 1,
// g = lane / 4, tq = lane % 4), C zero
inline int4 mma_s8(const int* a, const int* b) {
    int d0, d1, d2, d3;
    const int z = 0;
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                 "{%8,%9}, {%10,%11,%12,%13};"
                 : "=r"(d0), "=r"(d1), "=r"(d2), "=r"(d3)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(z),
                   "r"(z), "r"(z), "r"(z));
    return (int4)(d0, d1, d2, d3);
}
#elif GQ_MMA == 2
// mma_s8 by the fragments' definition, the warp's 32 work-items meeting in local memory (fa: 4
// words a work-item, fb: 2; every work-item of the group calls it, in step)
inline int4 mma_s8_emulated(const int* a, const int* b, __local int* fa, __local int* fb) {
    const int lid = get_local_id(0), lane = lid % 32, w0 = lid - lane, g = lane / 4, tq = lane % 4;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int i = 0; i < 4; ++i) fa[4 * lid + i] = a[i];
    for (int i = 0; i < 2; ++i) fb[2 * lid + i] = b[i];
    barrier(CLK_LOCAL_MEM_FENCE);
    int d[4];
    for (int e = 0; e < 4; ++e) {
        const int row = g + 8 * (e / 2), col = 2 * tq + e % 2;
        int sum = 0;
        for (int w = 0; w < 8; ++w) {  // word w of A's row and of B's column
            const int aw = fa[4 * (w0 + (row % 8) * 4 + w % 4) + row / 8 + 2 * (w / 4)];
            const int bw = fb[2 * (w0 + col * 4 + w % 4) + w / 4];
            sum = dp4(aw, bw, sum);
        }
        d[e] = sum;
    }
    return (int4)(d[0], d[1], d[2], d[3]);
}
#endif

// Subtract o from each byte of v (levels 0 .. 2o - 1): no borrow crosses a byte.
inline int sub_bytes(int v, uint o) {
    return (int)((((uint)v | 0x80808080u) - o) ^ 0x80808080u);
}

// (float)s for |s| < 2^22 (a block's sum is below 2^19) by two full-rate adds, where NVIDIA runs
// the conversion at a quarter of the rate: s added to the bits of 1.5 * 2^23, whose ulp is 1.
inline float exact_float(int s) { return as_float(0x4B400000 + s) - 12582912.0f; }

// the four ints of a run (a.s0 .. a.s3) into v[0..3]
#define GQ_SPLIT4(v, a) ((v)[0] = (a).s0, (v)[1] = (a).s1, (v)[2] = (a).s2, (v)[3] = (a).s3)
// a work-item's share of a stage's loads: weight blocks, activation runs of 4 words, scales
#define GQ_WI ((GQ_BM * GQ_NB + GQ_WG - 1) / GQ_WG)
#define GQ_XI ((GQ_BN * GQ_WORDS / 4 + GQ_WG - 1) / GQ_WG)
#define GQ_DI ((GQ_BN * GQ_NB + GQ_WG - 1) / GQ_WG)

// A stage's loads into registers (blocks past K's end as zeros), issued before the stage ahead
// of it is computed, so that their latency hides behind that work.
inline void gq_fetch(__global const uchar* W, long row_bytes, __global const uchar* xq,
                     __global const float2* DS, int m0, int t0, int M, int T, int nb, int c0,
                     int lid, wq_raw* wr, int4* xr, float2* dr) {
    for (int k = 0; k < GQ_WI; ++k) {
        const int u = lid + k * GQ_WG, b = u % GQ_NB, r = u / GQ_NB;
        wr[k] = (wq_raw){{0, 0, 0, 0, 0, 0, 0, 0}, 0, 0, 0};
        if (u < GQ_BM * GQ_NB && c0 + b < nb)
            wr[k] = fetch_wq(W + (ulong)min(m0 + r, M - 1) * (ulong)row_bytes, c0 + b);
    }
    for (int k = 0; k < GQ_XI; ++k) {
        const int u = lid + k * GQ_WG, w4 = u % (GQ_WORDS / 4), t = u / (GQ_WORDS / 4);
        const size_t blk = (size_t)min(t0 + t, T - 1) * nb + c0 + w4 / 2;
        xr[k] = u < GQ_BN * GQ_WORDS / 4 && c0 + w4 / 2 < nb
                    ? vload4(w4 % 2, (__global const int*)(xq + blk * 32))
                    : (int4)(0);
    }
    for (int k = 0; k < GQ_DI; ++k) {
        const int u = lid + k * GQ_WG, b = u % GQ_NB, t = u / GQ_NB;
        dr[k] = u < GQ_BN * GQ_NB && c0 + b < nb ? DS[(size_t)min(t0 + t, T - 1) * nb + c0 + b]
                                                 : (float2)(0.0f);
    }
}

__kernel __attribute__((reqd_work_group_size(GQ_WG, 1, 1))) void gemmq(
    __global const uchar* wb, ulong wo, long row_bytes, __global const uchar* xqb, ulong xqo,
    long dso, __global uchar* yb, ulong yo, __global const uchar* rb, ulong ro, int has_res,
    int M, int K, int T) {
    // k-major; a word row padded by GQ_PAD runs, and 16-byte aligned for the runs' loads
    __local int4 ws[GQ_WORDS][GQ_BM / 4 + GQ_PAD];
    __local int4 xs[GQ_WORDS][GQ_BN / 4 + GQ_PAD];
#if GQ_MMA == 2
    __local int fa[4 * GQ_WG], fb[2 * GQ_WG];
#endif
    __local float4 wd[GQ_NB][GQ_BM / 4];
    __local float4 xd[GQ_NB][GQ_BN / 4];
#if GQ_MIN
    __local float4 wm[GQ_NB][GQ_BM / 4];
    __local float4 xsum[GQ_NB][GQ_BN / 4];
#endif
    const int lid = get_local_id(0), tx = lid % GQ_RX, ty = lid / GQ_RX;
    const int m0 = get_group_id(0) * GQ_BM, t0 = get_group_id(1) * GQ_BN;
    const int nb = K >> 5;
    __global const uchar* W = wb + wo;
    __global const uchar* xq = xqb + xqo;
    __global const float2* DS = (__global const float2*)(xq + dso);
    wq_raw wr[GQ_WI];
    int4 xr[GQ_XI];
    float2 dr[GQ_DI];
#if GQ_MMA
    // warp w: rows 32 (w % 4) + 16 mi + g (+ 8), tokens GQ_BN / 2 (w / 4) + 8 ni + 2 tq (+ 1)
    const int lane = lid % 32, warp = lid / 32, g = lane / 4, tq = lane % 4;
    const int wr0 = 32 * (warp % 4) + g, wt0 = GQ_BN / 2 * (warp / 4) + 2 * tq;
    float acc[2][GQ_NI][4];
    for (int i = 0; i < 2 * GQ_NI * 4; ++i) ((float*)acc)[i] = 0.0f;
#else
    float acc[GQ_TM][GQ_TN];
    for (int i = 0; i < GQ_TM; ++i)
        for (int j = 0; j < GQ_TN; ++j) acc[i][j] = 0.0f;
#endif
    gq_fetch(W, row_bytes, xq, DS, m0, t0, M, T, nb, 0, lid, wr, xr, dr);
    for (int c0 = 0; c0 < nb; c0 += GQ_NB) {
        const int nbs = min(GQ_NB, nb - c0);
        barrier(CLK_LOCAL_MEM_FENCE);  // the previous stage's products are done with the tiles
        // weights: a work-item per (row, block), a row's blocks on neighbouring work-items
        for (int k = 0; k < GQ_WI; ++k) {
            const int u = lid + k * GQ_WG, b = u % GQ_NB, r = u / GQ_NB;
            if (u < GQ_BM * GQ_NB) {
                int v[8];
                float d, m;
                unpack_wq(&wr[k], v, &d, &m);
                for (int w = 0; w < 8; ++w) {
#if WTYPE == 2
                    ((__local int*)ws[b * 8 + w])[r] = sub_bytes(v[w], 0x08080808u);
#elif WTYPE == 6
                    ((__local int*)ws[b * 8 + w])[r] = sub_bytes(v[w], 0x10101010u);
#else
                    ((__local int*)ws[b * 8 + w])[r] = v[w];
#endif
                }
                ((__local float*)wd[b])[r] = d;
#if GQ_MIN
                ((__local float*)wm[b])[r] = m;
#endif
            }
        }
        // activations: a work-item per 4 words of a token's block
        for (int k = 0; k < GQ_XI; ++k) {
            const int u = lid + k * GQ_WG, w4 = u % (GQ_WORDS / 4), t = u / (GQ_WORDS / 4);
            if (u < GQ_BN * GQ_WORDS / 4) {
                ((__local int*)xs[4 * w4])[t] = xr[k].s0;
                ((__local int*)xs[4 * w4 + 1])[t] = xr[k].s1;
                ((__local int*)xs[4 * w4 + 2])[t] = xr[k].s2;
                ((__local int*)xs[4 * w4 + 3])[t] = xr[k].s3;
            }
        }
        for (int k = 0; k < GQ_DI; ++k) {
            const int u = lid + k * GQ_WG, b = u % GQ_NB, t = u / GQ_NB;
            if (u < GQ_BN * GQ_NB) {
                ((__local float*)xd[b])[t] = dr[k].x;
#if GQ_MIN
                ((__local float*)xsum[b])[t] = (float)as_int(dr[k].y);
#endif
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        if (c0 + GQ_NB < nb)
            gq_fetch(W, row_bytes, xq, DS, m0, t0, M, T, nb, c0 + GQ_NB, lid, wr, xr, dr);
#if GQ_MMA
#define WS(w, r) ((__local const int*)ws[(w)])[(r)]
#define XS(w, t) ((__local const int*)xs[(w)])[(t)]
        for (int b = 0; b < nbs; ++b) {
            int a[2][4], x[GQ_NI][2];
            for (int mi = 0; mi < 2; ++mi) {
                const int r = wr0 + 16 * mi;
                a[mi][0] = WS(b * 8 + tq, r);
                a[mi][1] = WS(b * 8 + tq, r + 8);
                a[mi][2] = WS(b * 8 + 4 + tq, r);
                a[mi][3] = WS(b * 8 + 4 + tq, r + 8);
            }
            for (int ni = 0; ni < GQ_NI; ++ni) {
                const int t = wt0 - 2 * tq + 8 * ni + g;  // B's column g
                x[ni][0] = XS(b * 8 + tq, t);
                x[ni][1] = XS(b * 8 + 4 + tq, t);
            }
            for (int mi = 0; mi < 2; ++mi) {
                const int r = wr0 + 16 * mi;
                const float d[2] = {((__local float*)wd[b])[r], ((__local float*)wd[b])[r + 8]};
#if GQ_MIN
                const float mw[2] = {((__local float*)wm[b])[r], ((__local float*)wm[b])[r + 8]};
#endif
                for (int ni = 0; ni < GQ_NI; ++ni) {
#if GQ_MMA == 1
                    const int4 c = mma_s8(a[mi], x[ni]);
#else
                    const int4 c = mma_s8_emulated(a[mi], x[ni], fa, fb);
#endif
                    const int cs[4] = {c.x, c.y, c.z, c.w};
                    for (int e = 0; e < 4; ++e) {
                        const int t = wt0 + 8 * ni + e % 2;
                        const float dx = ((__local float*)xd[b])[t];
#if GQ_MIN
                        const float sx = ((__local float*)xsum[b])[t];
                        acc[mi][ni][e] += dx * (d[e / 2] * exact_float(cs[e]) + mw[e / 2] * sx);
#else
                        acc[mi][ni][e] += d[e / 2] * dx * exact_float(cs[e]);
#endif
                    }
                }
            }
        }
#undef WS
#undef XS
#else
        for (int b = 0; b < nbs; ++b) {
            int sumi[GQ_TM][GQ_TN];
            for (int i = 0; i < GQ_TM; ++i)
                for (int j = 0; j < GQ_TN; ++j) sumi[i][j] = 0;
            for (int w = 0; w < 8; ++w) {
                int a[GQ_TM], x[GQ_TN];
                for (int i = 0; i < GQ_TM / 4; ++i) GQ_SPLIT4(a + 4 * i, ws[b * 8 + w][GQ_RX * i + tx]);
                for (int j = 0; j < GQ_TN / 4; ++j) GQ_SPLIT4(x + 4 * j, xs[b * 8 + w][GQ_RY * j + ty]);
                for (int i = 0; i < GQ_TM; ++i)
                    for (int j = 0; j < GQ_TN; ++j) sumi[i][j] = dp4(a[i], x[j], sumi[i][j]);
            }
            float d[GQ_TM], dx[GQ_TN];
            for (int i = 0; i < GQ_TM / 4; ++i) GQ_SPLIT4(d + 4 * i, wd[b][GQ_RX * i + tx]);
            for (int j = 0; j < GQ_TN / 4; ++j) GQ_SPLIT4(dx + 4 * j, xd[b][GQ_RY * j + ty]);
#if GQ_MIN
            float mw[GQ_TM], sx[GQ_TN];
            for (int i = 0; i < GQ_TM / 4; ++i) GQ_SPLIT4(mw + 4 * i, wm[b][GQ_RX * i + tx]);
            for (int j = 0; j < GQ_TN / 4; ++j) GQ_SPLIT4(sx + 4 * j, xsum[b][GQ_RY * j + ty]);
#endif
            for (int i = 0; i < GQ_TM; ++i)
                for (int j = 0; j < GQ_TN; ++j) {
#if GQ_MIN
                    acc[i][j] += dx[j] * (d[i] * exact_float(sumi[i][j]) + mw[i] * sx[j]);
#else
                    acc[i][j] += d[i] * dx[j] * exact_float(sumi[i][j]);
#endif
                }
        }
#endif
    }
    __global float* Y = PTR(float, yb, yo);
    __global const float* Res = CPTR(float, rb, ro);
#if GQ_MMA
    for (int mi = 0; mi < 2; ++mi)
        for (int ni = 0; ni < GQ_NI; ++ni)
            for (int e = 0; e < 4; ++e) {
                const int m = m0 + wr0 + 16 * mi + 8 * (e / 2), t = t0 + wt0 + 8 * ni + e % 2;
                if (t < T && m < M) {
                    const size_t o = (size_t)t * M + m;
                    Y[o] = has_res ? acc[mi][ni][e] + Res[o] : acc[mi][ni][e];
                }
            }
#else
    for (int j = 0; j < GQ_TN; ++j) {
        const int t = t0 + GQ_RY * 4 * (j / 4) + 4 * ty + j % 4;
        for (int i = 0; i < GQ_TM; ++i) {
            const int m = m0 + GQ_RX * 4 * (i / 4) + 4 * tx + i % 4;
            if (t < T && m < M) {
                const size_t o = (size_t)t * M + m;
                Y[o] = has_res ? acc[i][j] + Res[o] : acc[i][j];
            }
        }
    }
#endif
}
#endif
