// Helpers shared by every llmrt OpenCL program. OpenCL C 1.2: no fp64, f16 only as storage
// (vload_half / vstore_half, no cl_khr_fp16), no subgroup functions. Keep this file generic and
// add to it rather than change what is here: several kernel files include it.
#ifndef LLMRT_COMMON_H
#define LLMRT_COMMON_H

// The CPU kernels' `#if ... && __has_builtin(x)` must still parse where the compiler is not
// clang (a vendor's OpenCL compiler may lack the operator): there no builtin is assumed.
#ifndef __has_builtin
#define __has_builtin(x) 0
#endif

// A tensor operand arrives as two kernel arguments, a buffer and the byte offset of its first
// element (a buffer holds many tensors: the activation arena): this is its typed pointer.
#define PTR(T, b, o) ((__global T*)((__global uchar*)(b) + (o)))
#define CPTR(T, b, o) ((__global const T*)((__global const uchar*)(b) + (o)))

// f16 <-> f32 through the storage-only half type. _rte: round to nearest even, as numpy's
// astype(float16) (the default rounding mode is the same, but a driver may change it).
inline float ld_f16(__global const ushort* p, long i) {
    return vload_half(i, (__global const half*)p);
}
inline void st_f16(__global ushort* p, long i, float v) {
    vstore_half_rte(v, i, (__global half*)p);
}

// x rounded to the nearest f16 value, returned as float (numpy's astype(float16).astype(float32)),
// in integer arithmetic: no private half variables, which OpenCL C forbids without cl_khr_fp16.
inline float round_f16(float x) {
    const uint u = as_uint(x);
    const uint a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) return x;  // inf, nan
    if (a < 0x38800000u) {           // below 2^-14: the f16 subnormal grid, steps of 2^-24
        return rint(x * 16777216.0f) * 5.9604644775390625e-8f;
    }
    // keep 10 mantissa bits, round to nearest even on the 13 dropped
    const uint r = (a + 0x0fffu + ((a >> 13) & 1u)) & 0xffffe000u;
    const float m = r > 0x477fe000u ? INFINITY : as_float(r);  // past 65504: inf
    return (u & 0x80000000u) ? -m : m;
}

// bf16 (the top half of an f32) to f32; f32 to bf16 rounded to nearest even (NaN kept a NaN).
inline float bf16_to_f32(ushort b) { return as_float(((uint)b) << 16); }
inline ushort f32_to_bf16(float x) {
    const uint u = as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (ushort)((u >> 16) | 0x40u);
    return (ushort)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// NVIDIA's warp shuffle through inline PTX (-D NV_SHFL=1 where the host found an NVIDIA GPU:
// OpenCL C has none without cl_khr_subgroups' extended types): the value held by the lane whose
// index in the warp differs from this one's in bits `mask`. Every lane of the warp must call it,
// so its users take it only in work-groups of whole warps (a multiple of 32 work-items).
#ifdef NV_SHFL
inline float shfl_xor(float v, int mask) {
    float r;
    asm volatile("shfl.sync.bfly.b32 %0, %1, %2, 0x1f, 0xffffffff;" : "=f"(r) : "f"(v), "r"(mask));
    return r;
}
inline int shfl_xor_int(int v, int mask) {
    int r;
    asm volatile("shfl.sync.bfly.b32 %0, %1, %2, 0x1f, 0xffffffff;" : "=r"(r) : "r"(v), "r"(mask));
    return r;
}
#define WARPS_WHOLE() (get_local_size(0) % 32 == 0)
#else  // stand-ins that never run (WARPS_WHOLE() is 0), so the reductions compile everywhere
#define WARPS_WHOLE() 0
#define shfl_xor(v, mask) (v)
#define shfl_xor_int(v, mask) (v)
#endif

// Work-group reductions over the local work-group size, any size (not only powers of two).
// `red` is __local float[get_local_size(0)] (ints for wg_sum_int); every work-item gets the
// result; the buffer may be reused right after (the trailing barrier protects it). The tree is
// pairwise: its rounding error grows with log2 of the size, not the size. In whole warps with
// NV_SHFL, a butterfly in each warp and the warps' results in local memory: two barriers, not
// log2 of the size.
inline uint wg_pow2_half(uint n) {
    uint s = 1;
    while (s < n) s <<= 1;
    return s >> 1;
}

#define WG_REDUCE(NAME, T, COMBINE, SHFL)                                      \
    inline T NAME(T v, __local T* red) {                                       \
        const uint l = get_local_id(0), n = get_local_size(0);                \
        if (WARPS_WHOLE()) {                                                   \
            for (int s = 16; s > 0; s >>= 1) v = COMBINE(v, SHFL(v, s));       \
            if ((l & 31) == 0) red[l >> 5] = v;                                \
            barrier(CLK_LOCAL_MEM_FENCE);                                      \
            T r = red[0];                                                      \
            for (uint w = 1; w < n >> 5; ++w) r = COMBINE(r, red[w]);          \
            barrier(CLK_LOCAL_MEM_FENCE);                                      \
            return r;                                                          \
        }                                                                      \
        red[l] = v;                                                            \
        barrier(CLK_LOCAL_MEM_FENCE);                                          \
        for (uint s = wg_pow2_half(n); s > 0; s >>= 1) {                       \
            if (l < s && l + s < n) red[l] = COMBINE(red[l], red[l + s]);      \
            barrier(CLK_LOCAL_MEM_FENCE);                                      \
        }                                                                      \
        const T r = red[0];                                                    \
        barrier(CLK_LOCAL_MEM_FENCE);                                          \
        return r;                                                              \
    }
#define WG_ADD(a, b) ((a) + (b))
WG_REDUCE(wg_sum, float, WG_ADD, shfl_xor)
WG_REDUCE(wg_max, float, fmax, shfl_xor)
WG_REDUCE(wg_sum_int, int, WG_ADD, shfl_xor_int)

// The largest local work-group size the llmrt kernels use: __local arrays are sized by it.
#define WG_MAX 256

// ---- rope angles without fp64 -------------------------------------------------------------------
// The reference computes theta = pos * freq_base^(-2i/n_dims) * freq_scale / factor in float64;
// in float the angle of a late position is off by ulps of thousands of radians. So the angle is
// a float-float (hi + lo, ~44 bits): the frequency is r^i with r = freq_base^(-2/n_dims) given by
// the host as a float-float, raised by squaring; theta is reduced mod 2*pi before sin/cos.
// fma() gives exact product errors here. No sum below adds a plain product to a rounded copy of
// itself, so a compiler that contracts a * b + c into an fma (allowed by default) changes nothing;
// the pairs are left unnormalized (|lo| within an ulp or two of hi) for the same reason.
inline float2 ff_mul(float2 a, float2 b) {
    const float p = a.x * b.x;
    float e = fma(a.x, b.x, -p);
    e = fma(a.x, b.y, e);
    e = fma(a.y, b.x, e);
    return (float2)(p, e);
}

inline float2 ff_div_f(float2 a, float b) {  // (a.x + a.y) / b
    const float q = a.x / b;
    return (float2)(q, (fma(-q, b, a.x) + a.y) / b);
}

// cos and sin (x, y) of pos * r^i * fs / factor, times attn_factor; r and fs as float-floats.
inline float2 rope_cos_sin(int pos, int i, float2 r, float2 fs, float factor, float attn_factor) {
    float2 f = (float2)(1.0f, 0.0f), b = r;
    for (int e = i; e > 0; e >>= 1) {
        if (e & 1) f = ff_mul(f, b);
        b = ff_mul(b, b);
    }
    float2 th = ff_mul(ff_mul((float2)((float)pos, 0.0f), f), fs);  // pos < 2^24: exact
    if (factor != 1.0f) th = ff_div_f(th, factor);
    // theta - k * 2pi, 2pi = 6.2831854820251465f + -1.7484555314695172e-07f: one rounding of
    // th.x - k * hi (about 1e-7 rad at |x| <= pi), then the small parts
    const float k = rint(th.x * 0.15915493667125702f);
    const float x = fma(-k, 6.2831854820251465f, th.x) + (th.y - k * -1.7484555314695172e-07f);
    float c;
    const float s = sincos(x, &c);
    return (float2)(c * attn_factor, s * attn_factor);
}

// ---- q8 activations (the integer mat-vecs' input) -------------------------------------------
// a / b rounded as IEEE division rounds it (numpy does): OpenCL's `/` may be 2.5 ulp off unless
// built with -cl-fp32-correctly-rounded-divide-sqrt, and a q8 scale one ulp off moves a few
// activations to the next quantum. A Newton step on the reciprocal and Markstein's correction
// leave the quotient at most an ulp off (when b's mantissa is all ones); the exact residuals
// (fma) then pick between it and its neighbour. For the normal-range operands the scales see.
inline float div_rn(float a, float b) {
    float y = 1.0f / b;
    y = fma(fma(-b, y, 1.0f), y, y);
    float q = a * y;
    q = fma(fma(-q, b, a), y, q);
    const float r = fma(-q, b, a);  // a / b = q + r / b
    const float n = nextafter(q, (r > 0.0f) == (b > 0.0f) ? INFINITY : -INFINITY);
    return fabs(fma(-n, b, a)) < fabs(r) ? n : q;
}

// A q8 buffer (llmrt.lower.passes.q8_layout) of n activations: int8 qs[n], then, dso bytes in,
// one float2 per block of 32: (the scale amax / 127 rounded to f16, the int sum of the block's qs
// as bits). Quantized as ggml's quantize_row_q8_0 (x86 path): q = rint(x * 127 / amax).
inline void q8_store32(const float* x, __global uchar* xq, long dso, long blk) {
    float amax = 0.0f;
    for (int i = 0; i < 32; ++i) amax = fmax(amax, fabs(x[i]));
    const float inv = amax > 0.0f ? div_rn(127.0f, amax) : 0.0f;
    __global char* qs = (__global char*)xq + blk * 32;
    int sum = 0;
    for (int i = 0; i < 32; ++i) {
        const int q = (int)rint(x[i] * inv);
        qs[i] = (char)q;
        sum += q;
    }
    ((__global float2*)(xq + dso))[blk] = (float2)(round_f16(div_rn(amax, 127.0f)), as_float(sum));
}

// q8_store32 by eight work-items a block, four values each (work-items 8j .. 8j + 7 of a group
// hold block `blk`'s values in order; the group's size a multiple of 8, every work-item calling):
// the block's largest magnitude and its levels' sum meet in local memory in three steps each.
// The same bytes as q8_store32 (a maximum and an integer sum do not depend on their order), with
// no work-item looping over 32 values: on a GPU that serial loop, not the arithmetic, was the
// cost (9.5 us a 576-wide norm_rows_q8 on an H100, 2026-12-05).
inline void q8_store4(float4 v, int active, __global uchar* xq, long dso, long blk,
                      __local float* redf, __local int* redi) {
    const int l = get_local_id(0), part = l & 7, first = l & ~7;
    if (WARPS_WHOLE()) {  // a block's eight work-items are neighbours in one warp: no barrier
        float amax = active ? fmax(fmax(fabs(v.x), fabs(v.y)), fmax(fabs(v.z), fabs(v.w))) : 0.0f;
        for (int s = 4; s > 0; s >>= 1) amax = fmax(amax, shfl_xor(amax, s));
        const float inv = amax > 0.0f ? div_rn(127.0f, amax) : 0.0f;
        const int4 q = convert_int4(rint(v * inv));
        if (active) vstore4(convert_char4(q), 0, (__global char*)xq + blk * 32 + part * 4);
        int sum = active ? (q.x + q.y) + (q.z + q.w) : 0;
        for (int s = 4; s > 0; s >>= 1) sum += shfl_xor_int(sum, s);
        if (active && part == 0)
            ((__global float2*)(xq + dso))[blk] = (float2)(round_f16(div_rn(amax, 127.0f)),
                                                           as_float(sum));
        return;
    }
    redf[l] = active ? fmax(fmax(fabs(v.x), fabs(v.y)), fmax(fabs(v.z), fabs(v.w))) : 0.0f;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = 4; s > 0; s >>= 1) {
        if (part < s) redf[l] = fmax(redf[l], redf[l + s]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float amax = redf[first];
    const float inv = amax > 0.0f ? div_rn(127.0f, amax) : 0.0f;
    const int4 q = convert_int4(rint(v * inv));
    if (active) vstore4(convert_char4(q), 0, (__global char*)xq + blk * 32 + part * 4);
    redi[l] = active ? (q.x + q.y) + (q.z + q.w) : 0;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = 4; s > 0; s >>= 1) {
        if (part < s) redi[l] += redi[l + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (active && part == 0)
        ((__global float2*)(xq + dso))[blk] = (float2)(round_f16(div_rn(amax, 127.0f)),
                                                       as_float(redi[l]));
    barrier(CLK_LOCAL_MEM_FENCE);  // redf and redi are written again by the next call
}

// Kahan: the running sum s and its lost low part c (per work-item, before the pairwise tree).
inline void kahan_add(float* s, float* c, float v) {
    const float y = v - *c;
    const float t = *s + y;
    *c = (t - *s) - y;
    *s = t;
}

// A row's normalization: y = ((x - m1) - corr) / den, mode 0 rms_norm x / sqrt(mean(x^2) + eps),
// 1 norm (x - mean) / sqrt(var + eps); one work-group per row, every work-item gets the result.
// The reference sums in float64: here each work-item sums its columns with Kahan compensation and
// the group adds the partial sums in a pairwise tree. mode 1 centres twice (mean m1, then the
// mean of x - m1 as a correction) and takes the variance of the centred values, so a large mean
// costs no precision.
inline float norm_den(__global const float* x, int ncols, float eps, int mode, __local float* red,
                      float* m1_out, float* corr_out) {
    const int l = get_local_id(0), nl = get_local_size(0);
    float m1 = 0.0f, corr = 0.0f, den;
    if (mode == 1) {
        float s = 0.0f, c = 0.0f;
        for (int i = l; i < ncols; i += nl) kahan_add(&s, &c, x[i]);
        m1 = wg_sum(s - c, red) / ncols;
        float d = 0.0f, dc = 0.0f, q = 0.0f, qc = 0.0f;
        for (int i = l; i < ncols; i += nl) {
            const float v = x[i] - m1;
            kahan_add(&d, &dc, v);
            kahan_add(&q, &qc, v * v);
        }
        corr = wg_sum(d - dc, red) / ncols;
        const float var = wg_sum(q - qc, red) / ncols - corr * corr;
        den = sqrt(fmax(var, 0.0f) + eps);
    } else {
        float q = 0.0f, qc = 0.0f;
        for (int i = l; i < ncols; i += nl) {
            const float v = x[i];
            kahan_add(&q, &qc, v * v);
        }
        den = sqrt(wg_sum(q - qc, red) / ncols + eps);
    }
    *m1_out = m1;
    *corr_out = corr;
    return den;
}

// norm_den's row times w where has_w, into y where has_y and as q8 blocks into xq (q8_store4):
// row `row` of x, by the whole work-group (ops.cl's norm_rows_q8; weights.cl's mat-vecs, whose
// last work-group norms their output row). ncols % 32 == 0. With parts > 1 that many work-groups
// share the row: each computes its divisor (the same way, so the same bits) and writes every
// parts-th run of 4 x its size columns from run `part`.
inline void norm_q8_row_group(__global const float* x, __global float* y, __global const float* w,
                              long row, int ncols, float eps, int mode, int has_w, int has_y,
                              __global uchar* xq, long dso, __local float* red, __local int* redi,
                              int part, int parts) {
    const int l = get_local_id(0), nl = get_local_size(0);
    x += row * ncols;
    y += row * ncols;
    float m1, corr;
    const float den = norm_den(x, ncols, eps, mode, red, &m1, &corr);
    // the same trips in every work-item
    for (int base = 4 * nl * part; base < ncols; base += 4 * nl * parts) {
        const int i = base + 4 * l, active = i < ncols;
        float4 v = (float4)(0.0f);
        if (active) {
            v = ((vload4(0, x + i) - m1) - corr) / den;
            if (has_w) v *= vload4(0, w + i);
            if (has_y) vstore4(v, 0, y + i);
        }
        q8_store4(v, active, xq, dso, (row * ncols + i) >> 5, red, redi);
    }
}

// Element d of a row x of a rotary embedding (the first n_dims of the row rotated; neox: pairs
// (i, i + n_dims / 2), else (2i, 2i + 1)): ops.cl's rope kernel's products, one element at a time.
inline float rope_elem(__global const float* x, int d, int n_dims, int neox, int pos,
                       __global const float* ff, int has_ff, float2 r, float2 fs,
                       float attn_factor) {
    if (d >= n_dims) return x[d];
    const int nh = n_dims / 2;
    const int p = neox ? (d < nh ? d : d - nh) : d >> 1;
    const int first = neox ? d < nh : (d & 1) == 0;
    const int d0 = neox ? p : 2 * p, d1 = neox ? p + nh : 2 * p + 1;
    const float2 cs = rope_cos_sin(pos, p, r, fs, has_ff ? ff[p] : 1.0f, attn_factor);
    const float x0 = x[d0], x1 = x[d1];
    return first ? x0 * cs.x - x1 * cs.y : x0 * cs.y + x1 * cs.x;
}


// rope_elem with each pair's (cos, sin) given, cs[p] for pair p: the kernels compute them once
// for all the rows of a position (rope_cos_sin is most of a rope's work), in private memory
// (rope_elem_cs: the CPU kernels) or in local memory (rope_elem_lcs: a GPU's work-group)
#define ROPE_ELEM_CS(NAME, SPACE)                                                     \
    inline float NAME(__global const float* x, int d, int n_dims, int neox,           \
                      SPACE const float2* cs) {                                       \
        if (d >= n_dims) return x[d];                                                 \
        const int nh = n_dims / 2;                                                    \
        const int p = neox ? (d < nh ? d : d - nh) : d >> 1;                          \
        const int first = neox ? d < nh : (d & 1) == 0;                               \
        const float2 c = cs[p];                                                       \
        const float x0 = x[neox ? p : 2 * p], x1 = x[neox ? p + nh : 2 * p + 1];      \
        return first ? x0 * c.x - x1 * c.y : x0 * c.y + x1 * c.x;                     \
    }
ROPE_ELEM_CS(rope_elem_cs, __private)
ROPE_ELEM_CS(rope_elem_lcs, __local)

#endif
