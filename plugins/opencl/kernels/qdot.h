// Weight blocks of the legacy quants as integer dot products on q8 activations: what the integer
// mat-vecs (weights.cl's mmvq, gemmq) and the kernels that take a small product after their own
// work (attention.cl's ATTN_O) share. Built with -D WTYPE=<ggml type id>; the dot products need
// the host's USE_IDP / EMULATE_IDP / NV_DP4A choice (launch_weights.py's q8_kernel).
#ifndef LLMRT_QDOT_H
#define LLMRT_QDOT_H
#include "common.h"

// A half's bits as a float. A CPU device converts halves in software (PoCL: ~15 instructions with
// branches, about a third of a Q4_1 block's work); the exponent rebias by a multiply is exact for
// every finite half, subnormals included (not for inf and NaN, which no weight block's scale holds)
inline float h2f(ushort h) {
#ifdef CPU_HALF
    const float f = as_float(((uint)h & 0x7fffu) << 13) * 0x1p112f;
    return as_float(as_uint(f) | (((uint)h & 0x8000u) << 16));
#else
    return vload_half(0, (const __private half*)&h);
#endif
}
inline float ld_h(__global const uchar* p) { return h2f(*(__global const ushort*)p); }

// The activations arrive quantized once per step (common.h's q8_store32: int8, the f16-rounded
// scale and the block's int sum), exactly as reference.vec_dot_round rounds them. A weight block
// of 32 is unpacked to 8 ints of 4 bytes (elements 4i .. 4i + 3), multiplied with the 8 ints of
// the activation block as packed bytes and summed in int; the int sum times the two scales (the
// min times the activations' sum for Q4_1 / Q5_1), as ggml's vec_dot_q4_0_q8_0 etc.
// cl_khr_integer_dot_product's builtin where the host found the extension (-D USE_IDP=1) and the
// compiler declares it, else NVIDIA's dp4a (-D NV_DP4A=1), else portable int arithmetic.
#if WTYPE == 2 || WTYPE == 3 || WTYPE == 6 || WTYPE == 7 || WTYPE == 8
#if defined(USE_IDP) && defined(EMULATE_IDP) && \
    !defined(__opencl_c_integer_dot_product_input_4x8bit_packed)
// The tests on a compiler without the extension (PoCL): its packed builtin in plain arithmetic,
// so that the USE_IDP code (operands packed as the builtin takes them) runs there too.
inline int dot_acc_sat_4x8packed_ss_int(uint a, uint b, int acc) {
    const char4 x = as_char4(a), y = as_char4(b);
    return acc + x.s0 * y.s0 + x.s1 * y.s1 + x.s2 * y.s2 + x.s3 * y.s3;
}
#define IDP_PACKED 1
#elif defined(USE_IDP) && defined(__opencl_c_integer_dot_product_input_4x8bit_packed)
#define IDP_PACKED 1
#endif

#if defined(USE_IDP) && defined(__opencl_c_integer_dot_product_input_4x8bit)
inline int dp4(int a, int b, int acc) { return dot_acc_sat(as_char4(a), as_char4(b), acc); }
#elif defined(IDP_PACKED)
inline int dp4(int a, int b, int acc) {
    return dot_acc_sat_4x8packed_ss_int((uint)a, (uint)b, acc);
}
#elif defined(NV_DP4A)
// NVIDIA's OpenCL where the driver lists no cl_khr_integer_dot_product: inline PTX dp4a
// (compute capability 6.1 and later; the host defines NV_DP4A only there).
inline int dp4(int a, int b, int acc) {
    int d;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(acc));
    return d;
}
#else
inline int dp4(int a, int b, int acc) {
    const char4 x = as_char4(a), y = as_char4(b);
    return acc + x.s0 * y.s0 + x.s1 * y.s1 + x.s2 * y.s2 + x.s3 * y.s3;
}
#endif

inline int spread4(uint b) {  // bits 0..3 of b -> bit 4 of bytes 0..3
    return (int)(((b & 1u) << 4) | ((b & 2u) << 11) | ((b & 4u) << 18) | ((b & 8u) << 25));
}

// n 32-bit words from an address aligned to 2 (blocks of 18, 22 or 34 bytes) as n aligned loads
// realigned by shifts: half the load instructions of 16-bit halves, which ran gemmq and mmvq
// slower (BENCHMARKS.md, 2026-12-07, nineteenth session). Reads up to 2 bytes past the 4n - 2
// asked for: a weight buffer has 16 bytes of slack.
#define WORDS_MAX 9
inline void words_a2(__global const uchar* p, uint* f, const int n) {
    __global const uint* a = (__global const uint*)((size_t)p & ~(size_t)3);
    const uint sh = ((uint)(size_t)p & 3u) * 8u;
    uint raw[WORDS_MAX];
    for (int i = 0; i < n; ++i) raw[i] = a[i];
    for (int i = 0; i < n - 1; ++i) f[i] = (uint)(upsample(raw[i + 1], raw[i]) >> sh);
    f[n - 1] = raw[n - 1] >> sh;
}

// A legacy quant's block as loaded (q: the nibble or int8 words; qh: Q5's fifth bits; the scale
// and min as half bits), unpacked apart (unpack_wq) so that gemmq can load a stage ahead.
typedef struct {
    uint q[8];
    uint qh;
    ushort dh, mh;
} wq_raw;

// Block c of a row, its loads only.
inline wq_raw fetch_wq(__global const uchar* row, int c) {
    wq_raw r;
    r.qh = 0;
    r.mh = 0;
#if WTYPE == 2 || WTYPE == 6 || WTYPE == 8
    // Q4_0 (d, qs[16]; levels 0..15: the -8 comes from the activations' sum), Q5_0 (d, qh,
    // qs[16]; levels 0..31), Q8_0 (d, qs[32] int8): f[0] is the scale and the next two bytes
    const int size = WTYPE == 2 ? 18 : WTYPE == 6 ? 22 : 34, q0 = WTYPE == 6 ? 1 : 0;
    uint f[WORDS_MAX];
    words_a2(row + (size_t)c * size, f, (size + 2) / 4);
    r.dh = (ushort)(f[0] & 0xffffu);
    if (WTYPE == 6) r.qh = (f[0] >> 16) | (f[1] << 16);
    for (int i = 0; i < (WTYPE == 8 ? 8 : 4); ++i) r.q[i] = (f[q0 + i] >> 16) | (f[q0 + i + 1] << 16);
#elif WTYPE == 3  // Q4_1: d, m, qs[16]
    __global const uchar* b = row + (size_t)c * 20;
    r.dh = *(__global const ushort*)b;
    r.mh = *(__global const ushort*)(b + 2);
    const uint4 q4 = vload4(0, (__global const uint*)(b + 4));
    r.q[0] = q4.x, r.q[1] = q4.y, r.q[2] = q4.z, r.q[3] = q4.w;
#elif WTYPE == 7  // Q5_1: d, m, qh, qs[16]
    __global const uchar* b = row + (size_t)c * 24;
    r.dh = *(__global const ushort*)b;
    r.mh = *(__global const ushort*)(b + 2);
    r.qh = *(__global const uint*)(b + 4);
    const uint4 q4 = vload4(0, (__global const uint*)(b + 8));
    r.q[0] = q4.x, r.q[1] = q4.y, r.q[2] = q4.z, r.q[3] = q4.w;
#endif
    return r;
}

// v[i] holds elements 4i .. 4i + 3 as bytes; d the scale, m the min.
inline void unpack_wq(const wq_raw* r, int* v, float* d, float* m) {
    *d = h2f(r->dh);
    *m = h2f(r->mh);
#if WTYPE == 8
    for (int i = 0; i < 8; ++i) v[i] = (int)r->q[i];
#else
    for (int i = 0; i < 4; ++i) {
        v[i] = (int)(r->q[i] & 0x0f0f0f0fu);
        v[4 + i] = (int)((r->q[i] >> 4) & 0x0f0f0f0fu);
#if WTYPE == 6 || WTYPE == 7
        v[i] |= spread4(r->qh >> (4 * i));
        v[4 + i] |= spread4(r->qh >> (16 + 4 * i));
#endif
    }
#endif
}

// Weight block c of a row: v[i] holds elements 4i .. 4i + 3 as bytes; d its scale, m its min.
inline void load_wq(__global const uchar* row, int c, int* v, float* d, float* m) {
    const wq_raw r = fetch_wq(row, c);
    unpack_wq(&r, v, d, m);
}

// One block's contribution: the int dot product scaled (dx the activations' scale, sx the int
// sum of their levels).
inline float dot_q(const int* v, const int* x, float d, float m, float dx, int sx) {
    int s = 0;
    for (int i = 0; i < 8; ++i) s = dp4(v[i], x[i], s);
#if WTYPE == 2
    return d * dx * (float)(s - 8 * sx);
#elif WTYPE == 6
    return d * dx * (float)(s - 16 * sx);
#elif WTYPE == 8
    return d * dx * (float)s;
#else
    return dx * (d * (float)s + m * (float)sx);
#endif
}

// A product's part over some of its columns, the rest of it elsewhere (a launch that takes a small
// product after its own work: weights.cl's FFN down projection, attention.cl's ATTN_O): rows
// 0 .. M - 1 of W (rb bytes a row) over q8 blocks c0 .. c1 - 1 of x (xq, scales dso bytes in),
// a row a work-item at a time, into part[row].
inline void q8_rows_part(__global const uchar* W, long rb, int M, __global const uchar* xq,
                         long dso, int c0, int c1, __global float* part) {
    __global const float2* DS = (__global const float2*)(xq + dso);
    for (int row = get_local_id(0); row < M; row += get_local_size(0)) {
        __global const uchar* wrow = W + (ulong)row * (ulong)rb;
        float acc = 0.0f;
        for (int c = c0; c < c1; ++c) {
            int v[8];
            float d, m;
            load_wq(wrow, c, v, &d, &m);
            const int8 x8 = vload8(0, (__global const int*)(xq + (size_t)c * 32));
            const int x[8] = {x8.s0, x8.s1, x8.s2, x8.s3, x8.s4, x8.s5, x8.s6, x8.s7};
            acc += dot_q(v, x, d, m, DS[c].x, as_int(DS[c].y));
        }
        part[row] = acc;
    }
}

// The last of the work-groups that wrote parts (n in all; each counts the parts it took into cnt,
// one that took none counts nothing; the last resets the count): whether this work-group is it,
// every work-item told. The parts are visible to it when it is.
inline int q8_parts_last(__global volatile int* cnt, int took, int n, __local int* last) {
    mem_fence(CLK_GLOBAL_MEM_FENCE);
    barrier(CLK_GLOBAL_MEM_FENCE | CLK_LOCAL_MEM_FENCE);
    if (get_local_id(0) == 0) *last = took > 0 && atomic_add(cnt, took) == n - took;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (!*last) return 0;
    mem_fence(CLK_GLOBAL_MEM_FENCE);
    if (get_local_id(0) == 0) atomic_xchg(cnt, 0);
    return 1;
}

// The parts' rows (n of them, M values each) summed in order, plus the residual res, into y; then
// y's row normed where has_norm (norm_q8_row_group's weight nw where has_nw, f32 rows into ny where
// has_ny, q8 blocks into nq), as a mat-vec's norm epilogue does. By one whole work-group.
inline void q8_parts_sum(__global const float* part, int n, int M, __global const float* res,
                         __global float* y, int has_norm, __global const float* nw, int has_nw,
                         float eps, int mode, int has_ny, __global float* ny, __global uchar* nq,
                         long ndso, __local float* redf, __local int* redi) {
    for (int row = get_local_id(0); row < M; row += get_local_size(0)) {
        float sum = 0.0f;
        for (int j = 0; j < n; ++j) sum += part[(size_t)j * M + row];
        y[row] = sum + res[row];
    }
    barrier(CLK_GLOBAL_MEM_FENCE);  // the row, whole, before its norm reads it
    if (has_norm)
        norm_q8_row_group(y, ny, nw, 0, M, eps, mode, has_nw, has_ny, nq, ndso, redf, redi, 0, 1);
}
#endif
#endif
