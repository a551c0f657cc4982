// Attention (the fattn step): q [T, Hq, D] over a KV cache k [S, Hkv, D], v [S, Hkv, DV], an
// optional mask [T, S] (0 or -inf, added to the scores), grouped-query heads; out [T, Hq, DV] f32.
//
// Built per shape with -D: D, DV (head sizes, multiples of 4), KF16 / VF16 (1: that cache is
// f16), NR (query rows per work-group). The numerics follow the reference (ggml): with an f16 K
// cache q is rounded to f16 before the dot products; scores * scale, softcap, + mask, softmax;
// f32 accumulation. The softmax is online (flash): with an f16 V cache the reference rounds the
// normalised probabilities to f16 before the V product, which an online softmax cannot do (it
// knows the normaliser only at the end); those probabilities are used unrounded, a difference
// of the order of f16's rounding (NMSE ~1e-8).
//
// fattn (GPUs): one work-group of NT work-items per (block of NR query rows, KV head, KV split).
// The rows of a KV head are its (token, query head) pairs, row = t * G + g (G = Hq / Hkv): the
// rows of a block share every K and V load (decode: all of a token's grouped heads). Keys come in
// tiles of TK = NT: each work-item scores one key against all NR rows (q in local memory, read as
// broadcasts), a tree over the work-items gives each row's tile maximum, each work-item turns its
// scores into exp(score - running max) and keeps its share of the running sums, then each
// work-item accumulates P x V for one float4 column of DV and RPW rows, over every key of the
// tile or, with at most 4 rows (decode), over every KG-th: the NT / (DV / 4) work-items of a
// column split the keys rather than the rows, so a work-item's chain of V loads and products
// is KG times shorter (a decode group's tile is latency), their sums added once at the end.
// Local memory: NR * (D + TK) floats and a little; the host picks NR to keep it under 16 KiB.
// fattn_row (CPUs): the same per work-item, keys one at a time.
// Splits: with one, the output is written normalised; with several, each split writes its
// unnormalised partial and (max, sum), and fattn_merge combines them (decode attention split over
// the KV length: a long cache fills the device even when heads x tokens does not).
//
// Decode fusions (llmrt.lower.passes), each a define: NEWROW 1, the one-token attention after
// rope_qkv took it over: q and the new K row arrive unroped, the group whose keys hold the new
// cell ids[0] ropes its K row and keeps it and the V row (rounded as the cache stores them) in
// local memory, reading them from there, and the first row block of each KV head writes them
// into the caches (no other group reads that cell). XQ8 1: the output is also written as q8
// blocks for the integer mat-vec that reads it (DV % 32 == 0; by fattn_merge where split).
#include "common.h"

#ifndef NEWROW
#define NEWROW 0
#endif
#ifndef XQ8
#define XQ8 0
#endif
#if KF16
#define K_AS_STORED(x) round_f16(x)
#else
#define K_AS_STORED(x) (x)
#endif
#if VF16
#define V_AS_STORED(x) round_f16(x)
#else
#define V_AS_STORED(x) (x)
#endif

// The arguments every attention kernel takes after its own: the new row (NEWROW) and the q8
// output (XQ8); stand-ins where unused.
#define FUSED_ARGS                                                                             \
    __global const uchar *knb, ulong kno, __global const uchar *vnb, ulong vno,                \
        __global const uchar *posb, ulong poso, __global const uchar *idsb, ulong idso,        \
        __global uchar *kcb, ulong kco, __global uchar *vcb, ulong vco,                        \
        __global const uchar *ffb, ulong ffo, int n_dims, int neox, int has_ff, float r_hi,    \
        float r_lo, float fs_hi, float fs_lo, float attn_factor, __global uchar *xqb,          \
        ulong xqo, long dso

// Cell c of a cache (row stride cs, head stride ch) at head hk, element i, set to x
inline void cache_store(__global uchar* cb, ulong co, int f16, long c, long cs, long ch, int hk,
                        int i, float x) {
    const long o = c * cs + (long)hk * ch + i;
    if (f16) st_f16(PTR(ushort, cb, co), o, x);
    else PTR(float, cb, co)[o] = x;
}

// The names of FUSED_ARGS, to pass them on
#define FUSED_NAMES                                                                            \
    knb, kno, vnb, vno, posb, poso, idsb, idso, kcb, kco, vcb, vco, ffb, ffo, n_dims, neox,    \
        has_ff, r_hi, r_lo, fs_hi, fs_lo, attn_factor, xqb, xqo, dso

// group_start's local memory, declared in the kernel (where OpenCL C allows __local arrays)
#if NEWROW
#define GROUP_START_LOCALS                                                                     \
    __local float2 rcs[D / 2];                                                                 \
    __local float nk[D], nv[DV]
#else
#define GROUP_START_LOCALS                                                                     \
    __local float2 rcs[1];                                                                     \
    __local float nk[1], nv[1]
#endif

// A GPU work-group's start (fattn, fattn_vec; nl work-items): its NR q rows from row0 (of R,
// KV head hk) into sq, rounded as the K cache stores (ggml multiplies an f16 cache with f16
// operands). With NEWROW the q rows are roped first, each rotated pair's cos and sin computed
// once into rcs (element by element, rope_cos_sin's powers and sincos were the kernel's longest
// serial part), and where this split's keys [lo, hi) hold the new cell its roped K row and its V
// row go to nk and nv (the first row block writes them into the caches). Returns the new cell
// (-1 without NEWROW); sq, nk and nv are ready after a barrier.
inline int group_start(__local float* sq, __local float2* rcs, __local float* nk,
                       __local float* nv, __global const float* q, int nl, int row0, int R,
                       int G, int Hq, int hk, int lo, int hi, long ks, long kh, long vs, long vh,
                       FUSED_ARGS) {
    const int lid = get_local_id(0);
#if NEWROW
    for (int i = lid; i < D / 2 && 2 * i < n_dims; i += nl)
        rcs[i] = rope_cos_sin(CPTR(int, posb, poso)[0], i, (float2)(r_hi, r_lo),
                              (float2)(fs_hi, fs_lo), has_ff ? CPTR(float, ffb, ffo)[i] : 1.0f,
                              attn_factor);
    barrier(CLK_LOCAL_MEM_FENCE);
#endif
    for (int i = lid; i < NR * D; i += nl) {
        const int row = row0 + i / D;
        float x = 0.0f;
        if (row < R) {
            const long qrow = ((long)(row / G) * Hq + hk * G + row % G) * D;
#if NEWROW
            x = rope_elem_lcs(q + qrow, i % D, n_dims, neox, rcs);
#else
            x = q[qrow + i % D];
#endif
            x = K_AS_STORED(x);
        }
        sq[i] = x;
    }
#if NEWROW
    const int cnew = CPTR(int, idsb, idso)[0];
    if (cnew >= lo && cnew < hi) {
        __global const float* kn = CPTR(float, knb, kno) + (long)hk * D;
        __global const float* vn = CPTR(float, vnb, vno) + (long)hk * DV;
        for (int i = lid; i < D; i += nl) {
            const float x = rope_elem_lcs(kn, i, n_dims, neox, rcs);
            nk[i] = K_AS_STORED(x);
            if (get_group_id(0) == 0) cache_store(kcb, kco, KF16, cnew, ks, kh, hk, i, x);
        }
        for (int i = lid; i < DV; i += nl) {
            nv[i] = V_AS_STORED(vn[i]);
            if (get_group_id(0) == 0) cache_store(vcb, vco, VF16, cnew, vs, vh, hk, i, vn[i]);
        }
    }
    return cnew;
#else
    return -1;
#endif
}

// A GPU work-group's q8 output (XQ8, one split): its NR output rows, left in sq (DV <= D), as q8
// blocks, a work-item a block
inline void group_rows_q8(__local const float* sq, int row0, int R, int G, int Hq, int hk,
                          __global uchar* xq, long dso) {
    for (int b = get_local_id(0); b < NR * (DV / 32); b += get_local_size(0)) {
        const int r = b / (DV / 32), row = row0 + r;
        if (row >= R) continue;
        const long orow = (long)(row / G) * Hq + hk * G + row % G;
        float x[32];
        for (int i = 0; i < 32; ++i) x[i] = sq[r * DV + (b % (DV / 32)) * 32 + i];
        q8_store32(x, xq, dso, orow * (DV / 32) + b % (DV / 32));
    }
}

#ifndef NT
#define NT 64  // work-items per work-group, a power of two
#endif
#define TK NT  // keys per tile: one per work-item in the scoring phase
#define D4 (D / 4)
#define DV4 (DV / 4)
#define NRG (NT / DV4)                // work-item groups in the V phase (DV4 <= NT)
#define KG (NR <= 4 ? NRG : 1)        // of them, key groups (each takes every KG-th key)
#define RPW ((NR + NRG / KG - 1) / (NRG / KG))  // rows per work-item in the V phase
#define PART (DV + 2)                 // a split's partial: max, sum, DV unnormalised outputs

// Output column d of a row from its nsplit partials: sum_i acc_i e^(m_i - M) / sum_i l_i e^(m_i -
// M), M the largest max; splits that saw no key (max -inf) weigh nothing.
inline float merged(__global const float* part, int nsplit, int d) {
    float mx = -INFINITY;
    for (int i = 0; i < nsplit; ++i) mx = fmax(mx, part[i * PART]);
    float l = 0.0f, o = 0.0f;
    for (int i = 0; i < nsplit; ++i) {
        const float m = part[i * PART];
        if (m == -INFINITY) continue;
        const float w = exp(m - mx);
        l += part[i * PART + 1] * w;
        o += part[i * PART + 2 + d] * w;
    }
    return l > 0.0f ? o / l : 0.0f;
}

#ifndef VU
#define VU 8  // V rows loaded ahead in the V phase
#endif

// 4 elements from element i of a cache (byte base p): vload, which needs only the element's
// alignment (strides are arbitrary); the half pointer is made from a byte address, as compilers
// without cl_khr_fp16 may refuse arithmetic on half pointers
#define LOAD_H4(p, i) vload_half4(0, (__global const half*)((p) + 2 * (i)))
#define LOAD_F4(p, i) vload4(0, (__global const float*)((p) + 4 * (i)))
#if KF16
#define LOAD_K LOAD_H4
#else
#define LOAD_K LOAD_F4
#endif
#if VF16
#define LOAD_V LOAD_H4
#else
#define LOAD_V LOAD_F4
#endif

__kernel __attribute__((reqd_work_group_size(NT, 1, 1))) void fattn(
    __global const uchar* qb, ulong qo, __global const uchar* kb, ulong ko,
    __global const uchar* vb, ulong vo, __global const uchar* mb, ulong mo, __global uchar* ob,
    ulong oo, __global uchar* pb, ulong po, int T, int Hq, int Hkv, int S, long ks, long kh,
    long vs, long vh, float scale, float softcap, int has_mask, int chunk, FUSED_ARGS) {
    __local float sq[NR * D];   // q rows (f16-rounded for an f16 K cache)
    __local float sc[NR * TK];  // a tile's scores (reduced to row maxima), then probabilities
    __local int live[TK];       // a key of the tile that some row sees (others are not read)
    __local float stile[NR], salpha[NR];

    const int lid = get_local_id(0);
    const int hk = get_group_id(1), sp = get_group_id(2), nsplit = get_num_groups(2);
    const int G = Hq / Hkv, R = T * G, row0 = get_group_id(0) * NR;
    const int lo = sp * chunk, hi = min(S, lo + chunk);
    __global const float* q = CPTR(float, qb, qo);
    __global const float* mask = CPTR(float, mb, mo);
    __global const uchar* k = kb + ko;
    __global const uchar* v = vb + vo;

    GROUP_START_LOCALS;
    const int cnew = group_start(sq, rcs, nk, nv, q, NT, row0, R, G, Hq, hk, lo, hi, ks, kh, vs,
                                 vh, FUSED_NAMES);
#if NEWROW
#define KEY4(s, kr, d) ((s) == cnew ? vload4(d, nk) : LOAD_K(k, (kr) + 4 * (d)))
#define VAL4(s, vr, c) ((s) == cnew ? vload4(c, nv) : LOAD_V(v, (vr) + 4 * (c)))
#else
#define KEY4(s, kr, d) LOAD_K(k, (kr) + 4 * (d))
#define VAL4(s, vr, c) LOAD_V(v, (vr) + 4 * (c))
#endif
    // per row: the mask row (its token's; -1: a row past R, which sees nothing), the running
    // max (the same in every work-item) and this work-item's share of the running sum
    long mrow[NR];
    float m[NR], l[NR];
#pragma unroll
    for (int r = 0; r < NR; ++r) {
        mrow[r] = row0 + r < R ? (long)((row0 + r) / G) * S : -1;
        m[r] = -INFINITY;
        l[r] = 0.0f;
    }
    // V phase: float4 column c of rows rg * RPW + rr, keys kg, kg + KG, ...
    const int c = lid % DV4, g = lid / DV4, kg = g % KG, rg = g / KG;
    float4 acc[RPW];
#pragma unroll
    for (int rr = 0; rr < RPW; ++rr) acc[rr] = (float4)(0.0f);
    barrier(CLK_LOCAL_MEM_FENCE);

    for (int base = lo; base < hi; base += TK) {
        // this work-item's key s against every row: x[r] its score, -inf where masked
        const int s = base + lid;
        float madd[NR], x[NR];
        int seen = 0;
#pragma unroll
        for (int r = 0; r < NR; ++r) {
            madd[r] = -INFINITY;
            if (s < hi && mrow[r] >= 0) madd[r] = has_mask ? mask[mrow[r] + s] : 0.0f;
            seen |= madd[r] != -INFINITY;
            x[r] = 0.0f;
        }
        if (seen) {
            const long kr = (long)s * ks + (long)hk * kh;
#pragma unroll
            for (int d = 0; d < D4; ++d) {
                const float4 kv = KEY4(s, kr, d);
#pragma unroll
                for (int r = 0; r < NR; ++r) x[r] += dot(kv, vload4(d, sq + r * D));
            }
        }
#pragma unroll
        for (int r = 0; r < NR; ++r) {
            float y = x[r] * scale;
            if (softcap != 0.0f) y = tanh(y / softcap) * softcap;
            x[r] = madd[r] == -INFINITY ? -INFINITY : y + madd[r];
            sc[r * TK + lid] = x[r];
        }
        live[lid] = seen;
        barrier(CLK_LOCAL_MEM_FENCE);

        // each row's tile maximum, a tree over the work-items (the scores stay in registers)
        for (int st = TK / 2; st > 1; st >>= 1) {
            if (lid < st) {
#pragma unroll
                for (int r = 0; r < NR; ++r)
                    sc[r * TK + lid] = fmax(sc[r * TK + lid], sc[r * TK + lid + st]);
            }
            barrier(CLK_LOCAL_MEM_FENCE);
        }
        if (lid == 0) {
#pragma unroll
            for (int r = 0; r < NR; ++r) stile[r] = fmax(sc[r * TK], sc[r * TK + 1]);
        }
        barrier(CLK_LOCAL_MEM_FENCE);

        // rescale by the new maximum; the tile's probabilities exp(score - max) replace sc
#pragma unroll
        for (int r = 0; r < NR; ++r) {
            const float mx = fmax(m[r], stile[r]);
            float alpha = 1.0f, p = 0.0f;
            if (mx != -INFINITY) {  // nothing seen yet: no -inf - -inf
                alpha = exp(m[r] - mx);
                p = exp(x[r] - mx);
            }
            m[r] = mx;
            l[r] = l[r] * alpha + p;
            sc[r * TK + lid] = p;
            if (lid == 0) salpha[r] = alpha;
        }
        barrier(CLK_LOCAL_MEM_FENCE);

        // P x V
        if (g < NRG) {
#pragma unroll
            for (int rr = 0; rr < RPW; ++rr)
                if (rg * RPW + rr < NR) acc[rr] *= salpha[rg * RPW + rr];
            // VU loads in flight before their products (a decode group runs one or two tiles:
            // latency, not throughput); a key no row sees is not read (its p is 0 for every row)
            const int n = min(TK, hi - base);
            for (int j0 = kg; j0 < n; j0 += KG * VU) {
                float4 vv[VU];
#pragma unroll
                for (int u = 0; u < VU; ++u) {
                    const int j = j0 + KG * u;
                    vv[u] = (float4)(0.0f);
                    if (j < n && live[j])
                        vv[u] = VAL4(base + j, (long)(base + j) * vs + (long)hk * vh, c);
                }
#pragma unroll
                for (int u = 0; u < VU; ++u) {
                    const int j = j0 + KG * u;
#pragma unroll
                    for (int rr = 0; rr < RPW; ++rr) {
                        const int r = rg * RPW + rr;
                        if (r < NR && j < n) acc[rr] += sc[r * TK + j] * vv[u];
                    }
                }
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);  // the next tile overwrites sc and live
    }

#if KG > 1
    // the key groups' sums of each column into the first's (every work-item rescaled its own by
    // the same factors)
    __local float4 vpart[(KG - 1) * NR * DV4];
    if (g < NRG && kg > 0) {
#pragma unroll
        for (int rr = 0; rr < RPW; ++rr) vpart[((kg - 1) * NR + rr) * DV4 + c] = acc[rr];
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    if (g < NRG && kg == 0) {
        for (int k = 1; k < KG; ++k) {
#pragma unroll
            for (int rr = 0; rr < RPW; ++rr) acc[rr] += vpart[((k - 1) * NR + rr) * DV4 + c];
        }
    }
#endif
    // each row's sum: the work-items' shares, a tree as for the maxima; its max to local memory
#pragma unroll
    for (int r = 0; r < NR; ++r) {
        sc[r * TK + lid] = l[r];
        if (lid == 0) stile[r] = m[r];
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int st = TK / 2; st > 0; st >>= 1) {
        if (lid < st) {
#pragma unroll
            for (int r = 0; r < NR; ++r) sc[r * TK + lid] += sc[r * TK + lid + st];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }

#pragma unroll
    for (int rr = 0; rr < RPW; ++rr) {
        const int r = rg * RPW + rr, row = row0 + r;
        if (g >= NRG || kg > 0 || r >= NR || row >= R) continue;
        const long orow = (long)(row / G) * Hq + hk * G + row % G;
        const float sum = sc[r * TK];
        if (nsplit == 1) {
            const float4 o = sum > 0.0f ? acc[rr] / sum : (float4)(0.0f);
            vstore4(o, c, PTR(float, ob, oo) + orow * DV);
#if XQ8
            vstore4(o, c, sq + r * DV);  // q is done with: the rows for their q8 blocks
#endif
        } else {
            __global float* part = PTR(float, pb, po) + (orow * nsplit + sp) * PART;
            if (c == 0) {
                part[0] = stile[r];
                part[1] = sum;
            }
            vstore4(acc[rr], c, part + 2);
        }
    }
#if XQ8
    if (nsplit > 1) return;  // fattn_merge writes the q8 blocks
    barrier(CLK_LOCAL_MEM_FENCE);
    group_rows_q8(sq, row0, R, G, Hq, hk, PTR(uchar, xqb, xqo), dso);
#endif
}

// fattn_vec (GPUs, one token): a key's row read across neighbouring work-items, where fattn
// has a work-item read a whole row (its loads then touch a cache line a work-item, and a tile is
// a chain of barriers). A stream of LPK work-items takes one key at a time, each work-item KC
// float4 of its K row and VC of its V row (a warp's load instruction: whole rows); the stream's
// dot products meet by warp shuffles (NV_SHFL; elsewhere in local memory, two barriers a step).
// The NS = VT / LPK streams take keys lo + st, lo + st + NS, ..., KU of them in flight a step,
// each stream with its own online softmax and its share of every row's outputs, in registers: no
// barrier in the key loop on NVIDIA. At the end the streams' (max, sum, outputs) meet in local
// memory. The same arguments and outputs as fattn; the block's NR rows are one token's (T 1).
// MERGE_LAST 1 (split keys): the last of a row block's splits to finish (an atomic count a block
// in cnt, which it resets; the others' partials are written, made visible before they counted
// themselves) combines the partials as fattn_merge would and writes the q8 blocks: no merge
// launch (~9 us on NVIDIA's OpenCL, every layer of a decode step past 64 cells).
#ifndef MERGE_LAST
#define MERGE_LAST 0
#endif
#ifndef VT
#define VT 128
#endif
#ifndef LPK
#define LPK 32
#endif
#ifndef KU
#define KU 4
#endif
#define NS (VT / LPK)
#define KC (D4 / LPK)
#define VC (DV4 / LPK)

// ATTN_O 1 (one token, its output's q8 blocks written: XQ8): the output projection in the same
// launch (lower.attn_o), Wo of type WTYPE with Mo rows over the Hq * DV outputs. A row block's
// last work-group (its only one without splits) adds its rows' part of every Wo row, from the q8
// blocks it has just written, into its row of partials; the last row block to finish (ocnt) sums
// the partials in block order, adds the residual into yo and norms the row where has_norm, as
// weights.cl's mat-vec epilogue 2 does: no mat-vec launch after the attention.
#ifndef ATTN_O
#define ATTN_O 0
#endif
#if ATTN_O
#if !XQ8
#error "ATTN_O reads the q8 blocks the attention writes (XQ8)"
#endif
#include "qdot.h"
#define ATTN_O_PARAMS                                                                          \
    const ulong woo = P[36];                                                                   \
    const long orb = P[37];                                                                    \
    const int Mo = P[38];                                                                      \
    const ulong reso = P[39], yoo = P[40], oparto = P[41], ocnto = P[42];                      \
    const int has_norm = P[43];                                                                \
    const ulong nwo = P[44];                                                                   \
    const int has_nw = P[45];                                                                  \
    const float eps = as_float((int)P[46]);                                                    \
    const int mode = P[47], has_ny = P[48];                                                    \
    const ulong nyo = P[49], nqo = P[50];                                                      \
    const long ndso = P[51]
#define ATTN_O_WEIGHTS , __global const uchar *wob, __global const uchar *nwb

// The unit's rows are row0 .. of KV head hk (one token: query heads hk * G + row), its q8 blocks
// in xq; redf and redi: local scratch of the work-group's size.
inline void attn_o(int mine, int row0, int R, int G, int hk, __global const uchar* xq, long dso,
                   __global const uchar* Wo, long orb, int Mo, __global float* part,
                   __global volatile int* ocnt, __global const float* res, __global float* yo,
                   int has_norm, __global const float* nw, int has_nw, float eps, int mode,
                   int has_ny, __global float* ny, __global uchar* nq, long ndso,
                   __local int* last, __local float* redf, __local int* redi) {
    const int units = get_num_groups(0) * get_num_groups(1);
    const int u = hk * get_num_groups(0) + get_group_id(0);
    const int c0 = (hk * G + row0) * (DV / 32), c1 = (hk * G + min(row0 + NR, R)) * (DV / 32);
    mem_fence(CLK_GLOBAL_MEM_FENCE);
    barrier(CLK_GLOBAL_MEM_FENCE | CLK_LOCAL_MEM_FENCE);  // this block's q8 rows are written
    if (mine) q8_rows_part(Wo, orb, Mo, xq, dso, c0, c1, part + (size_t)u * Mo);
    if (!q8_parts_last(ocnt, mine, units, last)) return;
    q8_parts_sum(part, units, Mo, res, yo, has_norm, nw, has_nw, eps, mode, has_ny, ny, nq, ndso,
                 redf, redi);
}
#else
#define ATTN_O_PARAMS
#define ATTN_O_WEIGHTS
#endif

// Its activations (q, the mask, the output, the new row, its position and cell, the rope
// factors, the q8 output), its partials and counters are in one buffer A, the new K and V rows go
// into the caches it reads (kb, vb), and its numbers are in the constant block P, in
// FATTN_VEC_PARAMS' order (a float as its bits), as weights.cl's mmvq takes them: each argument
// costs host time on every enqueue on NVIDIA's driver.
#define FATTN_VEC_PARAMS                                                                       \
    const ulong qo = P[0], ko = P[1], vo = P[2], mo = P[3], oo = P[4], po = P[5];              \
    const int T = P[6], Hq = P[7], Hkv = P[8], S = P[9];                                       \
    const long ks = P[10], kh = P[11], vs = P[12], vh = P[13];                                 \
    const float scale = as_float((int)P[14]), softcap = as_float((int)P[15]);                  \
    const int has_mask = P[16], chunk = P[17];                                                 \
    const ulong kno = P[18], vno = P[19], poso = P[20], idso = P[21], kco = P[22];             \
    const ulong vco = P[23], ffo = P[24];                                                      \
    const int n_dims = P[25], neox = P[26], has_ff = P[27];                                    \
    const float r_hi = as_float((int)P[28]), r_lo = as_float((int)P[29]);                      \
    const float fs_hi = as_float((int)P[30]), fs_lo = as_float((int)P[31]);                    \
    const float attn_factor = as_float((int)P[32]);                                            \
    const ulong xqo = P[33];                                                                   \
    const long dso = P[34];                                                                    \
    const ulong cnto = P[35];                                                                  \
    __global uchar *qb = A, *mb = A, *ob = A, *knb = A, *vnb = A, *posb = A, *idsb = A;        \
    __global uchar *ffb = A, *xqb = A, *pb = A, *cntb = A, *kcb = kb, *vcb = vb

__kernel __attribute__((reqd_work_group_size(VT, 1, 1))) void fattn_vec(
    __global uchar* A, __global uchar* kb, __global uchar* vb ATTN_O_WEIGHTS,
    __constant long* P) {
    FATTN_VEC_PARAMS;
    ATTN_O_PARAMS;
    __local float sq[NR * D];
    __local float smax[NS * NR], ssum[NS * NR], sout[NS * NR * DV];
    __local int last;
#ifndef NV_SHFL
    __local float red[KU * NR * VT];
#endif
    GROUP_START_LOCALS;
    const int lid = get_local_id(0), st = lid / LPK, ln = lid % LPK;
    const int hk = get_group_id(1), sp = get_group_id(2), nsplit = get_num_groups(2);
    const int G = Hq / Hkv, R = T * G, row0 = get_group_id(0) * NR;
    const int lo = sp * chunk, hi = min(S, lo + chunk);
    __global const float* mask = CPTR(float, mb, mo);
    __global const uchar* k = kb + ko;
    __global const uchar* v = vb + vo;
    const int cnew = group_start(sq, rcs, nk, nv, CPTR(float, qb, qo), VT, row0, R, G, Hq, hk, lo,
                                 hi, ks, kh, vs, vh, FUSED_NAMES);
    barrier(CLK_LOCAL_MEM_FENCE);

    float4 qr[NR][KC], acc[NR][VC];
    float m[NR], l[NR];
#pragma unroll
    for (int r = 0; r < NR; ++r) {
#pragma unroll
        for (int c = 0; c < KC; ++c) qr[r][c] = vload4(ln + LPK * c, sq + r * D);
#pragma unroll
        for (int c = 0; c < VC; ++c) acc[r][c] = (float4)(0.0f);
        m[r] = -INFINITY;
        l[r] = 0.0f;
    }
    for (int base = lo; base < hi; base += NS * KU) {
        // KU keys' K and V slices in flight before any product; a key past hi or masked: unread
        float madd[KU];
        float4 kv[KU][KC], vv[KU][VC];
#pragma unroll
        for (int u = 0; u < KU; ++u) {
            const int s = base + u * NS + st;
            madd[u] = s < hi ? (has_mask ? mask[s] : 0.0f) : -INFINITY;
            const long kr = (long)s * ks + (long)hk * kh, vr = (long)s * vs + (long)hk * vh;
            const int seen = madd[u] != -INFINITY;
#pragma unroll
            for (int c = 0; c < KC; ++c)
                kv[u][c] = seen ? KEY4(s, kr, ln + LPK * c) : (float4)(0.0f);
#pragma unroll
            for (int c = 0; c < VC; ++c)
                vv[u][c] = seen ? VAL4(s, vr, ln + LPK * c) : (float4)(0.0f);
        }
        float x[KU][NR];
#pragma unroll
        for (int u = 0; u < KU; ++u) {
#pragma unroll
            for (int r = 0; r < NR; ++r) {
                float a = 0.0f;
#pragma unroll
                for (int c = 0; c < KC; ++c) a += dot(kv[u][c], qr[r][c]);
                x[u][r] = a;
            }
        }
        // each key's scores summed over its stream's LPK work-items
#ifdef NV_SHFL
#pragma unroll
        for (int u = 0; u < KU; ++u) {
#pragma unroll
            for (int r = 0; r < NR; ++r) {
#pragma unroll
                for (int o = LPK / 2; o > 0; o >>= 1) x[u][r] += shfl_xor(x[u][r], o);
            }
        }
#else
#pragma unroll
        for (int u = 0; u < KU; ++u) {
#pragma unroll
            for (int r = 0; r < NR; ++r) red[(u * NR + r) * VT + lid] = x[u][r];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
#pragma unroll
        for (int u = 0; u < KU; ++u) {
#pragma unroll
            for (int r = 0; r < NR; ++r) {
                float a = 0.0f;
                for (int i = 0; i < LPK; ++i) a += red[(u * NR + r) * VT + st * LPK + i];
                x[u][r] = a;
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);  // red is written again by the next step
#endif
        // the stream's online softmax over its KU keys, row by row
#pragma unroll
        for (int r = 0; r < NR; ++r) {
            float mx = m[r];
#pragma unroll
            for (int u = 0; u < KU; ++u) {
                float y = x[u][r] * scale;
                if (softcap != 0.0f) y = tanh(y / softcap) * softcap;
                x[u][r] = madd[u] == -INFINITY ? -INFINITY : y + madd[u];
                mx = fmax(mx, x[u][r]);
            }
            if (mx == -INFINITY) continue;  // nothing seen yet: no -inf - -inf
            const float alpha = exp(m[r] - mx);
            l[r] *= alpha;
#pragma unroll
            for (int c = 0; c < VC; ++c) acc[r][c] *= alpha;
#pragma unroll
            for (int u = 0; u < KU; ++u) {
                const float p = exp(x[u][r] - mx);
                l[r] += p;
#pragma unroll
                for (int c = 0; c < VC; ++c) acc[r][c] += p * vv[u][c];
            }
            m[r] = mx;
        }
    }

    // the streams' partials meet: out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M)
#pragma unroll
    for (int r = 0; r < NR; ++r) {
        if (ln == 0) {
            smax[st * NR + r] = m[r];
            ssum[st * NR + r] = l[r];
        }
#pragma unroll
        for (int c = 0; c < VC; ++c) vstore4(acc[r][c], ln + LPK * c, sout + (st * NR + r) * DV);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int i = lid; i < NR * DV; i += VT) {
        const int r = i / DV, col = i % DV, row = row0 + r;
        if (row >= R) continue;
        float mx = -INFINITY;
        for (int j = 0; j < NS; ++j) mx = fmax(mx, smax[j * NR + r]);
        float sum = 0.0f, o = 0.0f;
        for (int j = 0; j < NS; ++j) {
            const float mj = smax[j * NR + r];
            if (mj == -INFINITY) continue;
            const float w = exp(mj - mx);
            sum += ssum[j * NR + r] * w;
            o += sout[(j * NR + r) * DV + col] * w;
        }
        const long orow = (long)(row / G) * Hq + hk * G + row % G;
        if (nsplit == 1) {
            const float y = sum > 0.0f ? o / sum : 0.0f;
            PTR(float, ob, oo)[orow * DV + col] = y;
#if XQ8
            sq[r * DV + col] = y;  // q is done with: the rows for their q8 blocks
#endif
        } else {
            __global float* part = PTR(float, pb, po) + (orow * nsplit + sp) * PART;
            if (col == 0) {
                part[0] = mx;
                part[1] = sum;
            }
            part[2 + col] = o;
        }
    }
    // whether this work-group finishes its rows (writes their q8 blocks; with ATTN_O their part
    // of the projection): without splits each, with them the last split (MERGE_LAST) or none
    // (fattn_merge). A flag, not a return before the barriers below: PoCL's work-item loops
    // skipped the code after such a return where more than one barrier followed
    int mine = nsplit == 1;
#if MERGE_LAST
    if (nsplit > 1) {
        __global volatile int* cnt = PTR(int, cntb, cnto) + hk * get_num_groups(0) + get_group_id(0);
        mem_fence(CLK_GLOBAL_MEM_FENCE);
        barrier(CLK_GLOBAL_MEM_FENCE | CLK_LOCAL_MEM_FENCE);
        if (lid == 0) last = atomic_inc(cnt) == nsplit - 1;
        barrier(CLK_LOCAL_MEM_FENCE);
        mine = last;
        if (mine) {
            mem_fence(CLK_GLOBAL_MEM_FENCE);
            if (lid == 0) atomic_xchg(cnt, 0);
            for (int i = lid; i < NR * DV; i += VT) {
                const int r = i / DV, col = i % DV, row = row0 + r;
                if (row >= R) continue;
                const long orow = (long)(row / G) * Hq + hk * G + row % G;
                const float y = merged(CPTR(float, pb, po) + orow * nsplit * PART, nsplit, col);
                PTR(float, ob, oo)[orow * DV + col] = y;
#if XQ8
                sq[r * DV + col] = y;
#endif
            }
        }
    }
#endif
#if XQ8
    barrier(CLK_LOCAL_MEM_FENCE);
    if (mine) group_rows_q8(sq, row0, R, G, Hq, hk, PTR(uchar, xqb, xqo), dso);
#endif
#if ATTN_O  // the streams' outputs are merged: their local memory is the norm's scratch
    attn_o(mine, row0, R, G, hk, PTR(uchar, xqb, xqo), dso, wob + woo, orb, Mo,
           PTR(float, A, oparto), PTR(volatile int, A, ocnto), CPTR(float, A, reso),
           PTR(float, A, yoo), has_norm, CPTR(float, nwb, nwo), has_nw, eps, mode, has_ny,
           PTR(float, A, nyo), PTR(uchar, A, nqo), ndso, &last, sout, (__local int*)(sout + VT));
#endif
}

// fattn for a CPU device (PoCL): one work-item per (block of NR rows, KV head, split), local size
// 1, so the compiler sees plain loops (its work-item loops cannot wrap fattn's barriers and inner
// loops into vector code). Keys one at a time, the online softmax per key; the same arguments and
// outputs as fattn.
__kernel void fattn_row(__global const uchar* qb, ulong qo, __global const uchar* kb, ulong ko,
                        __global const uchar* vb, ulong vo, __global const uchar* mb, ulong mo,
                        __global uchar* ob, ulong oo, __global uchar* pb, ulong po, int T, int Hq,
                        int Hkv, int S, long ks, long kh, long vs, long vh, float scale,
                        float softcap, int has_mask, int chunk, FUSED_ARGS) {
    const int hk = get_group_id(1), sp = get_group_id(2), nsplit = get_num_groups(2);
    const int G = Hq / Hkv, R = T * G, row0 = get_group_id(0) * NR;
    const int lo = sp * chunk, hi = min(S, lo + chunk);
    __global const float* q = CPTR(float, qb, qo);
    __global const float* mask = CPTR(float, mb, mo);
    __global const uchar* k = kb + ko;
    __global const uchar* v = vb + vo;

    float4 qr[NR][D4], acc[NR][DV4];
    float m[NR], l[NR];
    long mrow[NR];
#if NEWROW
    // each rotated pair's cos and sin once for the q rows and the new K row (rope_cos_sin's
    // powers and sincos were most of this kernel's time where each element took its own)
    float2 cs[D / 2];
    const int pos0 = CPTR(int, posb, poso)[0];
    __global const float* ffp = CPTR(float, ffb, ffo);
    for (int i = 0; i < D / 2 && 2 * i < n_dims; ++i)
        cs[i] = rope_cos_sin(pos0, i, (float2)(r_hi, r_lo), (float2)(fs_hi, fs_lo),
                             has_ff ? ffp[i] : 1.0f, attn_factor);
#define ROPE_CS(row, i) rope_elem_cs(row, i, n_dims, neox, cs)
#endif
    for (int r = 0; r < NR; ++r) {
        const int row = row0 + r;
        mrow[r] = row < R ? (long)(row / G) * S : -1;
        m[r] = -INFINITY;
        l[r] = 0.0f;
        const long qrow = ((long)(row / G) * Hq + hk * G + row % G) * D;
        for (int d = 0; d < D4; ++d) {
            float4 x = (float4)(0.0f);
#if NEWROW
            if (row < R)
                x = (float4)(ROPE_CS(q + qrow, 4 * d), ROPE_CS(q + qrow, 4 * d + 1),
                             ROPE_CS(q + qrow, 4 * d + 2), ROPE_CS(q + qrow, 4 * d + 3));
#else
            if (row < R) x = vload4(0, q + qrow + 4 * d);
#endif
            qr[r][d] = (float4)(K_AS_STORED(x.x), K_AS_STORED(x.y), K_AS_STORED(x.z),
                                K_AS_STORED(x.w));
        }
        for (int d = 0; d < DV4; ++d) acc[r][d] = (float4)(0.0f);
    }
#if NEWROW
    float4 nk[D4], nv[DV4];
    const int cnew = CPTR(int, idsb, idso)[0];
    if (cnew >= lo && cnew < hi) {
        __global const float* kn = CPTR(float, knb, kno) + (long)hk * D;
        __global const float* vn = CPTR(float, vnb, vno) + (long)hk * DV;
        float x[4];
        for (int d = 0; d < D4; ++d) {
            for (int j = 0; j < 4; ++j) {
                x[j] = ROPE_CS(kn, 4 * d + j);
                if (get_group_id(0) == 0)
                    cache_store(kcb, kco, KF16, cnew, ks, kh, hk, 4 * d + j, x[j]);
            }
            nk[d] = (float4)(K_AS_STORED(x[0]), K_AS_STORED(x[1]), K_AS_STORED(x[2]),
                             K_AS_STORED(x[3]));
        }
        for (int d = 0; d < DV4; ++d) {
            for (int j = 0; j < 4; ++j) {
                x[j] = vn[4 * d + j];
                if (get_group_id(0) == 0)
                    cache_store(vcb, vco, VF16, cnew, vs, vh, hk, 4 * d + j, x[j]);
            }
            nv[d] = (float4)(V_AS_STORED(x[0]), V_AS_STORED(x[1]), V_AS_STORED(x[2]),
                             V_AS_STORED(x[3]));
        }
    }
#define KEY_ROW4(s, kr, d) ((s) == cnew ? nk[d] : LOAD_K(k, (kr) + 4 * (d)))
#define VAL_ROW4(s, vr, d) ((s) == cnew ? nv[d] : LOAD_V(v, (vr) + 4 * (d)))
#else
#define KEY_ROW4(s, kr, d) LOAD_K(k, (kr) + 4 * (d))
#define VAL_ROW4(s, vr, d) LOAD_V(v, (vr) + 4 * (d))
#endif

    for (int s = lo; s < hi; ++s) {
        float madd[NR];
        int seen = 0;
        for (int r = 0; r < NR; ++r) {
            madd[r] = -INFINITY;
            if (mrow[r] >= 0) madd[r] = has_mask ? mask[mrow[r] + s] : 0.0f;
            seen |= madd[r] != -INFINITY;
        }
        if (!seen) continue;
        float4 x4[NR];
        const long kr = (long)s * ks + (long)hk * kh;
        for (int r = 0; r < NR; ++r) {  // row-major: PoCL compiles this order best
            float4 a = (float4)(0.0f);
            for (int d = 0; d < D4; ++d) a += qr[r][d] * KEY_ROW4(s, kr, d);
            x4[r] = a;
        }
        float p[NR];
        for (int r = 0; r < NR; ++r) {
            p[r] = 0.0f;
            if (madd[r] == -INFINITY) continue;
            float x = (x4[r].x + x4[r].y + x4[r].z + x4[r].w) * scale;
            if (softcap != 0.0f) x = tanh(x / softcap) * softcap;
            x += madd[r];
            if (x > m[r]) {  // a new max: rescale what was summed (exp(-inf) = 0 the first time)
                const float alpha = exp(m[r] - x);
                l[r] *= alpha;
                for (int d = 0; d < DV4; ++d) acc[r][d] *= alpha;
                m[r] = x;
            }
            p[r] = exp(x - m[r]);
            l[r] += p[r];
        }
        const long vr = (long)s * vs + (long)hk * vh;
        for (int r = 0; r < NR; ++r) {
            if (p[r] == 0.0f) continue;
            for (int d = 0; d < DV4; ++d) acc[r][d] += p[r] * VAL_ROW4(s, vr, d);
        }
    }

    for (int r = 0; r < NR; ++r) {
        const int row = row0 + r;
        if (row >= R) break;
        const long orow = (long)(row / G) * Hq + hk * G + row % G;
        if (nsplit == 1) {
            __global float* o = PTR(float, ob, oo) + orow * DV;
            for (int d = 0; d < DV4; ++d)
                vstore4(l[r] > 0.0f ? acc[r][d] / l[r] : (float4)(0.0f), d, o);
#if XQ8
            for (int b = 0; b < DV / 32; ++b) {
                float x[32];
                for (int i = 0; i < 8; ++i) vstore4(vload4(b * 8 + i, o), i, x);
                q8_store32(x, PTR(uchar, xqb, xqo), dso, orow * (DV / 32) + b);
            }
#endif
        } else {
            __global float* part = PTR(float, pb, po) + (orow * nsplit + sp) * PART;
            part[0] = m[r];
            part[1] = l[r];
            for (int d = 0; d < DV4; ++d) vstore4(acc[r][d], d, part + 2);
        }
    }
}

// fattn_prompt (GPUs, prompts; no NEWROW, no splits): a query row a work-item, PT rows (of one KV
// head) a work-group. Keys come in tiles of PK, their K and V rows staged in local memory for the
// group (read back as broadcasts: every work-item takes the same key at once); each work-item
// scores its row against the tile's keys with its q in registers, then takes the tile into its
// online softmax and its DV accumulators, also in registers: two barriers a tile, where fattn's
// one key a work-item needs a tree over the work-items for every tile's maxima. A tile that no row
// of the group sees (the mask's -inf: the causal future) is not computed. No q8 output (XQ8): a
// prompt's attention feeds its gemmq through a quant_q8 step.
#ifndef PT
#define PT 64
#endif
#define PK 16

__kernel __attribute__((reqd_work_group_size(PT, 1, 1))) void fattn_prompt(
    __global const uchar* qb, ulong qo, __global const uchar* kb, ulong ko,
    __global const uchar* vb, ulong vo, __global const uchar* mb, ulong mo, __global uchar* ob,
    ulong oo, __global uchar* pb, ulong po, int T, int Hq, int Hkv, int S, long ks, long kh,
    long vs, long vh, float scale, float softcap, int has_mask, int chunk, FUSED_ARGS) {
    __local float4 kt[PK * D4], vt[PK * DV4];
    __local volatile int seen_by[2];  // whether some row of the group sees the tile (by parity)
    const int lid = get_local_id(0), hk = get_group_id(1);
    const int G = Hq / Hkv, R = T * G, row = get_group_id(0) * PT + lid, live = row < R;
    const long orow = live ? (long)(row / G) * Hq + hk * G + row % G : 0;
    const long mrow = live ? (long)(row / G) * S : 0;
    __global const float* q = CPTR(float, qb, qo) + orow * D;
    __global const float* mask = CPTR(float, mb, mo);
    __global const uchar* k = kb + ko;
    __global const uchar* v = vb + vo;
    float4 qr[D4], acc[DV4];
#pragma unroll
    for (int d = 0; d < D4; ++d) {
        const float4 x = live ? vload4(d, q) : (float4)(0.0f);
        qr[d] = (float4)(K_AS_STORED(x.x), K_AS_STORED(x.y), K_AS_STORED(x.z), K_AS_STORED(x.w));
    }
#pragma unroll
    for (int d = 0; d < DV4; ++d) acc[d] = (float4)(0.0f);
    float m = -INFINITY, l = 0.0f;
    if (lid < 2) seen_by[lid] = 0;

    for (int base = 0, it = 0; base < S; base += PK, ++it) {
        barrier(CLK_LOCAL_MEM_FENCE);  // the tile before is done with (and seen_by reset)
        for (int i = lid; i < PK * D4; i += PT) {
            const int s = base + i / D4;
            kt[i] = s < S ? LOAD_K(k, (long)s * ks + (long)hk * kh + 4 * (i % D4)) : (float4)(0.0f);
        }
        for (int i = lid; i < PK * DV4; i += PT) {
            const int s = base + i / DV4;
            vt[i] = s < S ? LOAD_V(v, (long)s * vs + (long)hk * vh + 4 * (i % DV4)) : (float4)(0.0f);
        }
        float x[PK];
        int seen = 0;
#pragma unroll
        for (int j = 0; j < PK; ++j) {
            x[j] = -INFINITY;
            if (live && base + j < S) x[j] = has_mask ? mask[mrow + base + j] : 0.0f;
            seen |= x[j] != -INFINITY;
        }
        if (seen) atomic_or(&seen_by[it & 1], 1);
        if (lid == 0) seen_by[(it + 1) & 1] = 0;  // read last a tile ago, before this one's barrier
        barrier(CLK_LOCAL_MEM_FENCE);
        if (!seen_by[it & 1]) continue;
        float mx = m;
#pragma unroll
        for (int j = 0; j < PK; ++j) {
            if (x[j] == -INFINITY) continue;
            float4 a = (float4)(0.0f);
#pragma unroll
            for (int d = 0; d < D4; ++d) a += qr[d] * kt[j * D4 + d];
            float y = (a.x + a.y + a.z + a.w) * scale;
            if (softcap != 0.0f) y = tanh(y / softcap) * softcap;
            x[j] += y;
            mx = fmax(mx, x[j]);
        }
        if (mx == -INFINITY) continue;  // this row has seen no key yet
        const float alpha = exp(m - mx);  // 0 the first time (m = -inf)
        l *= alpha;
#pragma unroll
        for (int d = 0; d < DV4; ++d) acc[d] *= alpha;
        m = mx;
#pragma unroll
        for (int j = 0; j < PK; ++j) {
            const float p = x[j] == -INFINITY ? 0.0f : exp(x[j] - m);
            l += p;
#pragma unroll
            for (int d = 0; d < DV4; ++d) acc[d] += p * vt[j * DV4 + d];
        }
    }
    if (!live) return;
    __global float* o = PTR(float, ob, oo) + orow * DV;
#pragma unroll
    for (int d = 0; d < DV4; ++d) vstore4(l > 0.0f ? acc[d] / l : (float4)(0.0f), d, o);
}

// The nsplit partials of each output row combined (merged). Global size (DV, T * Hq).
// With XQ8 the work-group is a row (local size DV), which then writes its q8 blocks.
__kernel void fattn_merge(__global const uchar* pb, ulong po, __global uchar* ob, ulong oo,
                          int nsplit, __global uchar* xqb, ulong xqo, long dso) {
    const int d = get_global_id(0);
    const long row = get_global_id(1);
    const float y = merged(CPTR(float, pb, po) + row * nsplit * PART, nsplit, d);
    PTR(float, ob, oo)[row * DV + d] = y;
#if XQ8
    __local float orow[DV];
    orow[d] = y;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (d < DV / 32) {
        float x[32];
        for (int i = 0; i < 32; ++i) x[i] = orow[32 * d + i];
        q8_store32(x, PTR(uchar, xqb, xqo), dso, row * (DV / 32) + d);
    }
#endif
}
