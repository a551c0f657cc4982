// Kernels that read a weight in its GGUF blocks. Compiled once per weight type: the Python side
// prepends `#define WTYPE <ggml type id>` and common.cuh. Every type is read in chunks of 32
// elements (one legacy block, or one sub-block of a K-quant super-block), dequantized into
// registers by dequant32().

// ggml's get_scale_min_k4: the 6-bit scale and min of sub-block j of a Q4_K/Q5_K super-block.
__device__ __forceinline__ void scale_min_k4(int j, const u8* q, int& sc, int& m) {
    if (j < 4) {
        sc = q[j] & 63;
        m = q[j + 4] & 63;
    } else {
        sc = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
        m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Elements 32c .. 32c+31 of a row that starts at `row`.
__device__ __forceinline__ void dequant32(const u8* __restrict__ row, int c, float* w) {
#if WTYPE == 0  // F32
    const float4* p = (const float4*)(row + (size_t)c * 128);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        float4 v = p[i];
        w[4 * i] = v.x; w[4 * i + 1] = v.y; w[4 * i + 2] = v.z; w[4 * i + 3] = v.w;
    }
#elif WTYPE == 1 || WTYPE == 30  // F16, BF16
    const uint4* p = (const uint4*)(row + (size_t)c * 64);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        uint4 v = p[i];
        u32 u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#if WTYPE == 1
            w[8 * i + 2 * j] = h2f((u16)(u[j] & 0xffff));
            w[8 * i + 2 * j + 1] = h2f((u16)(u[j] >> 16));
#else
            w[8 * i + 2 * j] = bf2f((u16)(u[j] & 0xffff));
            w[8 * i + 2 * j + 1] = bf2f((u16)(u[j] >> 16));
#endif
        }
    }
#elif WTYPE == 2  // Q4_0: d, qs[16]
    const u8* b = row + (size_t)c * 18;
    const float d = ldh(b);
    const u16* qs = (const u16*)(b + 2);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        u16 q = qs[i];
        w[2 * i] = ((int)(q & 15) - 8) * d;
        w[2 * i + 16] = ((int)((q >> 4) & 15) - 8) * d;
        w[2 * i + 1] = ((int)((q >> 8) & 15) - 8) * d;
        w[2 * i + 17] = ((int)(q >> 12) - 8) * d;
    }
#elif WTYPE == 3  // Q4_1: d, m, qs[16]
    const u8* b = row + (size_t)c * 20;
    const float d = ldh(b), m = ldh(b + 2);
    const u32* qs = (const u32*)(b + 4);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        u32 q = qs[i];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            w[4 * i + j] = ((q >> (8 * j)) & 15) * d + m;
            w[4 * i + j + 16] = ((q >> (8 * j + 4)) & 15) * d + m;
        }
    }
#elif WTYPE == 6  // Q5_0: d, qh (u32), qs[16]
    const u8* b = row + (size_t)c * 22;
    const float d = ldh(b);
    const u32 qh = (u32)(*(const u16*)(b + 2)) | ((u32)(*(const u16*)(b + 4)) << 16);
    const u16* qs = (const u16*)(b + 6);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        u16 q = qs[i];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const int e = 2 * i + j;
            const int lo = (q >> (8 * j)) & 15, hi = (q >> (8 * j + 4)) & 15;
            w[e] = ((int)(lo | (((qh >> e) & 1) << 4)) - 16) * d;
            w[e + 16] = ((int)(hi | (((qh >> (e + 16)) & 1) << 4)) - 16) * d;
        }
    }
#elif WTYPE == 7  // Q5_1: d, m, qh, qs[16]
    const u8* b = row + (size_t)c * 24;
    const float d = ldh(b), m = ldh(b + 2);
    const u32 qh = *(const u32*)(b + 4);
    const u32* qs = (const u32*)(b + 8);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        u32 q = qs[i];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int e = 4 * i + j;
            const u32 lo = (q >> (8 * j)) & 15, hi = (q >> (8 * j + 4)) & 15;
            w[e] = (lo | (((qh >> e) & 1) << 4)) * d + m;
            w[e + 16] = (hi | (((qh >> (e + 16)) & 1) << 4)) * d + m;
        }
    }
#elif WTYPE == 8  // Q8_0: d, qs[32] int8
    const u8* b = row + (size_t)c * 34;
    const float d = ldh(b);
    const u16* qs = (const u16*)(b + 2);
#pragma unroll
    for (int i = 0; i < 16; ++i) {
        u16 q = qs[i];
        w[2 * i] = (float)(signed char)(q & 0xff) * d;
        w[2 * i + 1] = (float)(signed char)(q >> 8) * d;
    }
#elif WTYPE == 12 || WTYPE == 13  // Q4_K, Q5_K: d, dmin, scales[12], (qh[32]), qs[128]
    const int s = c & 7;
#if WTYPE == 12
    const u8* b = row + (size_t)(c >> 3) * 144;
    const u8* qs = b + 16 + 32 * (s >> 1);
#else
    const u8* b = row + (size_t)(c >> 3) * 176;
    const u8* qh = b + 16;
    const u8* qs = b + 48 + 32 * (s >> 1);
#endif
    int sc, mn;
    scale_min_k4(s, b + 4, sc, mn);
    const float d = ldh(b) * sc, m = ldh(b + 2) * mn;
    const int shift = (s & 1) * 4;
    const u32* q4 = (const u32*)qs;
#if WTYPE == 13
    const u32* h4 = (const u32*)qh;
#endif
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        u32 q = q4[i];
#if WTYPE == 13
        u32 h = h4[i];
#endif
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            int v = (q >> (8 * j + shift)) & 15;
#if WTYPE == 13
            v |= ((h >> (8 * j + s)) & 1) << 4;
#endif
            w[4 * i + j] = d * v - m;
        }
    }
#elif WTYPE == 14  // Q6_K: ql[128], qh[64], scales[16] int8, d
    const u8* b = row + (size_t)(c >> 3) * 210;
    const int s = c & 7, h = s >> 2, k = s & 3;
    const float d = ldh(b + 208);
    const signed char* scales = (const signed char*)(b + 192);
    const u8* ql = b + 64 * h + (k & 1) * 32;
    const u8* qh = b + 128 + 32 * h;
    const int lshift = (k >> 1) * 4;
    const float d0 = d * scales[8 * h + 2 * k], d1 = d * scales[8 * h + 2 * k + 1];
#pragma unroll
    for (int l = 0; l < 32; ++l) {
        const int lo = (ql[l] >> lshift) & 15;
        const int hi = (qh[l] >> (2 * k)) & 3;
        w[l] = (l < 16 ? d0 : d1) * (float)((lo | (hi << 4)) - 32);
    }
#else
#error "unsupported WTYPE"
#endif
}

// Activations as ggml rounds them before a dot product with this weight type (reference.py's
// vec_dot_round): q8_0 blocks of 32 for the legacy quants, f16/bf16 for those weights. A chunk
// of 32 is one q8_0 block, so each lane rounds its own chunk. (K-quants round to q8_K blocks of
// 256 in the reference; here their activations stay f32.)
__device__ __forceinline__ void load_x32(const float* __restrict__ p, float* xr) {
    const float4* x4 = (const float4*)p;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const float4 v = x4[i];
        xr[4 * i] = v.x; xr[4 * i + 1] = v.y; xr[4 * i + 2] = v.z; xr[4 * i + 3] = v.w;
    }
#if WTYPE == 2 || WTYPE == 3 || WTYPE == 6 || WTYPE == 7 || WTYPE == 8
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 32; ++i) amax = fmaxf(amax, fabsf(xr[i]));
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    const float d = h2f(f2h(amax / 127.0f));
#pragma unroll
    for (int i = 0; i < 32; ++i) xr[i] = rintf(xr[i] * inv) * d;
#elif WTYPE == 1
#pragma unroll
    for (int i = 0; i < 32; ++i) xr[i] = h2f(f2h(xr[i]));
#elif WTYPE == 30
#pragma unroll
    for (int i = 0; i < 32; ++i) {
        const u32 b = __float_as_uint(xr[i]);
        xr[i] = __uint_as_float((b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u);
    }
#endif
}

__device__ __forceinline__ float dot32(const float* w, const float* x) {
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 32; ++i) s += w[i] * x[i];
    return s;
}

// Y[t, m] = sum_k W[m, k] X[t, k] (+ R[t, m]). One warp computes R consecutive rows for NT tokens
// per pass; lane l takes chunks l, l + 32, ...: each x chunk is loaded (and rounded) once for the
// R rows, whose weight loads are independent and in flight together.
template <int NT, int R>
__device__ __forceinline__ void mmv_body(const u8* __restrict__ W, long long row_bytes,
                                         const float* __restrict__ X, float* __restrict__ Y,
                                         const float* __restrict__ Rs, int M, int K, int T) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row0 = (blockIdx.x * (blockDim.x >> 5) + warp) * R;
    if (row0 >= M) return;
    const int nch = K >> 5;
    for (int t0 = 0; t0 < T; t0 += NT) {
        float acc[R][NT];
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
            for (int t = 0; t < NT; ++t) acc[r][t] = 0.0f;
        for (int c = lane; c < nch; c += 32) {
            float w[R][32];
#pragma unroll
            for (int r = 0; r < R; ++r)
                if (row0 + r < M) dequant32(W + (size_t)(row0 + r) * row_bytes, c, w[r]);
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                if (t0 + t < T) {
                    float xr[32];
                    load_x32(X + (size_t)(t0 + t) * K + (size_t)c * 32, xr);
#pragma unroll
                    for (int r = 0; r < R; ++r) acc[r][t] += dot32(w[r], xr);
                }
            }
        }
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                const float s = warp_sum(acc[r][t]);
                if (lane == 0 && t0 + t < T && row0 + r < M) {
                    const size_t o = (size_t)(t0 + t) * M + row0 + r;
                    Y[o] = Rs ? s + Rs[o] : s;
                }
            }
    }
}

#define MMV(NT, R)                                                                             \
    extern "C" __global__ void mmv_##NT##_##R(const u8* W, long long row_bytes, const float* X, \
                                              float* Y, const float* Rs, int M, int K, int T) { \
        pdl_enter();                                                                           \
        mmv_body<NT, R>(W, row_bytes, X, Y, Rs, M, K, T);                                      \
    }
MMV(1, 1)
MMV(1, 2)
MMV(1, 4)
MMV(2, 1)
MMV(4, 1)
MMV(8, 1)

// X as f16 for the GEMM, rounded as load_x32 rounds it (warp per 32 elements).
extern "C" __global__ void x_to_f16(const float* X, u16* out, long long n) {
    pdl_enter();
    const int lane = threadIdx.x & 31;
    const long long nb = n >> 5;
    for (long long b = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5; b < nb;
         b += ((long long)gridDim.x * blockDim.x) >> 5) {
        float x = X[b * 32 + lane];
#if WTYPE == 2 || WTYPE == 3 || WTYPE == 6 || WTYPE == 7 || WTYPE == 8
        const float amax = warp_max(fabsf(x));
        const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        x = rintf(x * inv) * h2f(f2h(amax / 127.0f));
#endif
        out[b * 32 + lane] = f2h(x);
    }
}

// out[i, :] = dequantized row ids[i] of the table.
extern "C" __global__ void get_rows_w(const u8* W, long long row_bytes, const int* ids, float* out,
                                      int K) {
    pdl_enter();
    const int i = blockIdx.x;
    const u8* wr = W + (size_t)ids[i] * row_bytes;
    for (int c = threadIdx.x; c < (K >> 5); c += blockDim.x) {
        float w[32];
        dequant32(wr, c, w);
        float4* o = (float4*)(out + (size_t)i * K + (size_t)c * 32);
#pragma unroll
        for (int j = 0; j < 8; ++j) o[j] = make_float4(w[4 * j], w[4 * j + 1], w[4 * j + 2], w[4 * j + 3]);
    }
}

// The whole weight [M, K] as f16 (for the tensor-core GEMM of prompt processing).
extern "C" __global__ void dequant_f16(const u8* W, long long row_bytes, u16* out, int M, int K) {
    pdl_enter();
    const int nch = K >> 5;
    const long long total = (long long)M * nch;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int row = (int)(i / nch), c = (int)(i % nch);
        float w[32];
        dequant32(W + (size_t)row * row_bytes, c, w);
        uint4* o = (uint4*)(out + (size_t)row * K + (size_t)c * 32);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            uint4 v;
            v.x = (u32)f2h(w[8 * j]) | ((u32)f2h(w[8 * j + 1]) << 16);
            v.y = (u32)f2h(w[8 * j + 2]) | ((u32)f2h(w[8 * j + 3]) << 16);
            v.z = (u32)f2h(w[8 * j + 4]) | ((u32)f2h(w[8 * j + 5]) << 16);
            v.w = (u32)f2h(w[8 * j + 6]) | ((u32)f2h(w[8 * j + 7]) << 16);
            o[j] = v;
        }
    }
}

// --- integer mat-vec (ggml's MMVQ idea) for the legacy quants --------------------------------
// Activations arrive quantized once per step (q8_store32: int8 + f16-rounded scale + int sum),
// exactly as reference.vec_dot_round rounds them; each weight block of 32 is unpacked to 8 ints
// of bytes and multiplied with __dp4a. G lanes share a row (lane l takes blocks l, l + G, ...),
// a group computes R rows (or, with glu >= 0, one row of two matrices, combined as glu(a) * b);
// one launch may cover up to three matrices that read the same activations (q, k, v).
#if WTYPE == 2 || WTYPE == 3 || WTYPE == 6 || WTYPE == 7 || WTYPE == 8

__device__ __forceinline__ int ld_i32_a2(const u8* p) {  // 2-byte aligned 32-bit load
    const u16* q = (const u16*)p;
    return (int)((u32)q[0] | ((u32)q[1] << 16));
}

__device__ __forceinline__ int spread4(u32 b) {  // bits 0..3 of b -> bit 4 of bytes 0..3
    return (int)(((b & 1u) << 4) | ((b & 2u) << 11) | ((b & 4u) << 18) | ((b & 8u) << 25));
}

// N 32-bit words from a 2-byte aligned address: N aligned loads (reading at most 2 bytes past
// the N*4 - 2 bytes asked for), realigned with funnel shifts; the last word's upper half is junk
// when the address is not 4-byte aligned.
template <int N>
__device__ __forceinline__ void ld_words(const u8* p, u32* f) {
    const u32* a = (const u32*)((size_t)p & ~(size_t)3);
    const int sh = (int)((size_t)p & 3) * 8;
    u32 raw[N];
#pragma unroll
    for (int i = 0; i < N; ++i) raw[i] = __ldg(a + i);
#pragma unroll
    for (int i = 0; i < N - 1; ++i) f[i] = __funnelshift_r(raw[i], raw[i + 1], sh);
    f[N - 1] = raw[N - 1] >> sh;
}

// Weight block c of a row: v[i] holds elements 4i..4i+3 as bytes; d scale; m min (q4_1/q5_1).
__device__ __forceinline__ void load_wq(const u8* __restrict__ row, int c, int* v, float& d, float& m) {
#if WTYPE == 2
    u32 f[5];
    ld_words<5>(row + (size_t)c * 18, f);
    d = h2f((u16)(f[0] & 0xffff));
    m = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int q = (int)((f[i] >> 16) | (f[i + 1] << 16));
        v[i] = q & 0x0f0f0f0f;
        v[4 + i] = (q >> 4) & 0x0f0f0f0f;
    }
#elif WTYPE == 3
    const u8* b = row + (size_t)c * 20;
    const u32 dm = *(const u32*)b;
    d = h2f((u16)(dm & 0xffff));
    m = h2f((u16)(dm >> 16));
    const int* qs = (const int*)(b + 4);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int q = qs[i];
        v[i] = q & 0x0f0f0f0f;
        v[4 + i] = (q >> 4) & 0x0f0f0f0f;
    }
#elif WTYPE == 6
    u32 f[6];
    ld_words<6>(row + (size_t)c * 22, f);
    d = h2f((u16)(f[0] & 0xffff));
    m = 0.0f;
    const u32 qh = (f[0] >> 16) | (f[1] << 16);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int q = (int)((f[i + 1] >> 16) | (f[i + 2] << 16));
        v[i] = (q & 0x0f0f0f0f) | spread4(qh >> (4 * i));
        v[4 + i] = ((q >> 4) & 0x0f0f0f0f) | spread4(qh >> (16 + 4 * i));
    }
#elif WTYPE == 7
    const u8* b = row + (size_t)c * 24;
    const u32 dm = *(const u32*)b;
    d = h2f((u16)(dm & 0xffff));
    m = h2f((u16)(dm >> 16));
    const u32 qh = *(const u32*)(b + 4);
    const int* qs = (const int*)(b + 8);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int q = qs[i];
        v[i] = (q & 0x0f0f0f0f) | spread4(qh >> (4 * i));
        v[4 + i] = ((q >> 4) & 0x0f0f0f0f) | spread4(qh >> (16 + 4 * i));
    }
#elif WTYPE == 8
    u32 f[9];
    ld_words<9>(row + (size_t)c * 34, f);
    d = h2f((u16)(f[0] & 0xffff));
    m = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = (int)((f[i] >> 16) | (f[i + 1] << 16));
#endif
}

// A block's product from its integer dot product s of the weight's bytes (as load_wq gives them)
// with the activations' int8 values: d, m the weight block's scale and min, dx and sx the
// activation block's scale and sum of its int8 values.
__device__ __forceinline__ float scale_q(int s, float d, float m, float dx, int sx) {
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

__device__ __forceinline__ float dot_q(const int* v, const int* x, float d, float m, float dx, int sx) {
    int s = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) s = __dp4a(v[i], x[i], s);
    return scale_q(s, d, m, dx, sx);
}

// The weight rows this block of mmvq_body will read (same block-to-rows map), asked of L2.
template <int R, int G>
__device__ __forceinline__ void mmvq_prefetch(const u8* W0, const u8* W1, const u8* W2, long long rb,
                                              int M0, int M1, int M2, int glu) {
    const int rpb = (blockDim.x >> 5) * (32 / G) * (glu >= 0 ? 1 : R);
    int b = blockIdx.x;
    const u8* W = W0;
    int M = M0;
    if (glu < 0) {
        const int nb0 = (M0 + rpb - 1) / rpb;
        if (b >= nb0) {
            b -= nb0;
            W = W1; M = M1;
            const int nb1 = (M1 + rpb - 1) / rpb;
            if (b >= nb1) {
                b -= nb1;
                W = W2; M = M2;
            }
        }
    }
    const int rows = min(rpb, M - b * rpb);
    if (rows <= 0) return;
    prefetch_l2(W + (size_t)b * rpb * rb, (size_t)rows * rb);
    if (glu >= 0) prefetch_l2(W1 + (size_t)b * rpb * rb, (size_t)rows * rb);
}

template <int NT, int R, int G>
__device__ __forceinline__ void mmvq_body(const u8* __restrict__ W0, const u8* __restrict__ W1,
                                          const u8* __restrict__ W2, long long rb,
                                          const u8* __restrict__ XQ, long long dso, float* Y0,
                                          float* Y1, float* Y2, const float* __restrict__ Rs,
                                          int M0, int M1, int M2, int K, int T, int glu) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int grp = lane / G, l = lane % G;
    const int per = glu >= 0 ? 1 : R;
    const int rpb = (blockDim.x >> 5) * (32 / G) * per;
    int b = blockIdx.x;
    const u8* W = W0;
    float* Y = Y0;
    int M = M0;
    const float* Res = Rs;
    if (glu < 0) {
        const int nb0 = (M0 + rpb - 1) / rpb;
        if (b >= nb0) {
            b -= nb0;
            W = W1; Y = Y1; M = M1; Res = nullptr;
            const int nb1 = (M1 + rpb - 1) / rpb;
            if (b >= nb1) {
                b -= nb1;
                W = W2; Y = Y2; M = M2;
            }
        }
    }
    const int row0 = b * rpb + (warp * (32 / G) + grp) * per;
    const u8* rp[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int row = glu >= 0 ? row0 : row0 + r;
        const u8* base = glu >= 0 ? (r == 0 ? W0 : W1) : W;
        rp[r] = base + (size_t)(row < M ? row : 0) * rb;
    }
    const int nb = K >> 5;
    const float2* DS = (const float2*)(XQ + dso);
    for (int t0 = 0; t0 < T; t0 += NT) {
        float acc[R][NT];
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
            for (int t = 0; t < NT; ++t) acc[r][t] = 0.0f;
#pragma unroll 2
        for (int c = l; c < nb; c += G) {
            int v[R][8];
            float d[R], m[R];
#pragma unroll
            for (int r = 0; r < R; ++r) load_wq(rp[r], c, v[r], d[r], m[r]);
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                if (NT == 1 || t0 + t < T) {
                    const int4* xp = (const int4*)(XQ + (size_t)(t0 + t) * K + (size_t)c * 32);
                    const int4 a = xp[0], e = xp[1];
                    const int x[8] = {a.x, a.y, a.z, a.w, e.x, e.y, e.z, e.w};
                    const float2 ds = DS[(size_t)(t0 + t) * nb + c];
                    const int sx = __float_as_int(ds.y);
#pragma unroll
                    for (int r = 0; r < R; ++r) acc[r][t] += dot_q(v[r], x, d[r], m[r], ds.x, sx);
                }
            }
        }
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
            for (int t = 0; t < NT; ++t) {
#pragma unroll
                for (int o = G / 2; o > 0; o >>= 1)
                    acc[r][t] += __shfl_xor_sync(0xffffffffu, acc[r][t], o);
            }
        if (l == 0) {
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                if (t0 + t >= T) continue;
                if (glu >= 0) {
                    if (row0 < M) {
                        const float a = acc[0][t], u = acc[R - 1][t];
                        Y[(size_t)(t0 + t) * M + row0] = (glu == 0 ? silu(a) : gelu_f16(a)) * u;
                    }
                } else {
#pragma unroll
                    for (int r = 0; r < R; ++r) {
                        const int row = row0 + r;
                        if (row < M) {
                            const size_t o = (size_t)(t0 + t) * M + row;
                            Y[o] = Res ? acc[r][t] + Res[o] : acc[r][t];
                        }
                    }
                }
            }
        }
    }
}

#define MMVQ(NT, R, G)                                                                         \
    extern "C" __global__ void __launch_bounds__(128) mmvq_##NT##_##R##_##G(                   \
        const u8* W0, const u8* W1, const u8* W2, long long rb, const u8* XQ, long long dso,   \
        float* Y0, float* Y1, float* Y2, const float* Rs, int M0, int M1, int M2, int K,       \
        int T, int glu, int pf) {                                                              \
        if (pf) mmvq_prefetch<R, G>(W0, W1, W2, rb, M0, M1, M2, glu);                          \
        pdl_enter();                                                                           \
        mmvq_body<NT, R, G>(W0, W1, W2, rb, XQ, dso, Y0, Y1, Y2, Rs, M0, M1, M2, K, T, glu);   \
    }
MMVQ(1, 1, 32)
MMVQ(1, 1, 16)
MMVQ(1, 1, 8)
MMVQ(1, 2, 32)
MMVQ(1, 2, 16)
MMVQ(1, 2, 8)
MMVQ(2, 1, 32)
MMVQ(2, 2, 32)
MMVQ(4, 1, 32)
MMVQ(4, 2, 32)
MMVQ(8, 1, 32)
MMVQ(8, 2, 32)
// --- prompt products on int8 tensor cores (ggml's MMQ idea) -------------------------------------
// Y[t, m] = sum_k W[m, k] X[t, k] for a prompt's many tokens, X in q8 blocks as mmvq reads them.
// A block of 4 warps computes 64 rows x 64 tokens, taking K through shared memory MMQ_KB blocks
// of 32 at a time: weight blocks unpacked to bytes (load_wq), activation blocks as stored. Each
// warp's 32 x 32 corner is 2 x 4 mma.sync m16n8k32 (s8 x s8 -> s32, common.cuh) a block of 32,
// each exact integer sum scaled into the f32 sums as mmvq's (scale_q) scales its own: a block's
// words c and c+4 of weight rows g, g+8 (A) and of token g (B) give rows g, g+8 x tokens 2c, 2c+1.
#define MMQ_M 64
#define MMQ_T 64
#define MMQ_KB 4
#define MMQ_THREADS 128
#if WTYPE == 3 || WTYPE == 7  // the min term's registers: 2 blocks a multiprocessor, not 3, or spills
#define MMQ_MIN_BLOCKS 2
#else
#define MMQ_MIN_BLOCKS 3
#endif
#define MMQ_W (MMQ_KB * 8 + 4)  // words a tile row: rows 4 banks apart

// load_wq's bytes as the signed values they stand for (q4_0's nibbles less 8, q5_0's less 16), so
// that a block's integer sum is its dot product as mmvq's s - 8 sx (- 16 sx) is; byte-wise.
__device__ __forceinline__ int signed_bytes(int v) {
#if WTYPE == 2
    return (int)__vsub4((u32)v, 0x08080808u);
#elif WTYPE == 6
    return (int)__vsub4((u32)v, 0x10101010u);
#else
    return v;
#endif
}

// (float)s for |s| < 2^22, exactly, by two full-rate adds: the int-to-float conversion runs at a
// fraction of their rate, and gemmq converts one for every 32 multiply-adds of the tensor cores.
// A block's integer sum is at most 32 x 128 x 128 = 2^19.
__device__ __forceinline__ float exact_float(int s) {
    return __int_as_float(s + 0x4B400000) - 12582912.0f;
}

extern "C" __global__ void __launch_bounds__(MMQ_THREADS, MMQ_MIN_BLOCKS) gemmq(const u8* W0, const u8* W1, const u8* W2,
                                                                long long rb, const u8* __restrict__ XQ,
                                                                long long dso, float* Y0, float* Y1,
                                                                float* Y2, int M0, int M1, int M2, int K,
                                                                int T) {
    pdl_enter();
    // up to three products over one input (q, k, v; gate, up) in one launch: blockIdx.x runs
    // over the first one's row tiles, then the second's, then the third's
    int bx = blockIdx.x;
    const u8* __restrict__ W = W0;
    float* __restrict__ Y = Y0;
    int M = M0;
    if (bx >= (M0 + MMQ_M - 1) / MMQ_M) {
        bx -= (M0 + MMQ_M - 1) / MMQ_M, W = W1, Y = Y1, M = M1;
        if (bx >= (M1 + MMQ_M - 1) / MMQ_M) bx -= (M1 + MMQ_M - 1) / MMQ_M, W = W2, Y = Y2, M = M2;
    }
    __shared__ __align__(16) int sw[MMQ_M * MMQ_W];
    __shared__ __align__(16) int sx[MMQ_T * MMQ_W];
    __shared__ float2 swd[MMQ_M * MMQ_KB], sxd[MMQ_T * MMQ_KB];  // (d, m); (d, sum)
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const int m0 = bx * MMQ_M, t0 = blockIdx.y * MMQ_T;
    const int wm = (warp & 1) * 32, wt = (warp >> 1) * 32;  // this warp's corner of the tile
    const int nb = K >> 5;
    const float2* DS = (const float2*)(XQ + dso);
    // This thread's share of a K-step's tiles: weight blocks, 16-byte halves of activation blocks,
    // activation scales. The next step's share is loaded into registers while this step computes,
    // so that the loads' latency hides behind the products.
    constexpr int NW = MMQ_M * MMQ_KB / MMQ_THREADS, NX = MMQ_T * MMQ_KB * 2 / MMQ_THREADS;
    constexpr int ND = MMQ_T * MMQ_KB / MMQ_THREADS;
    int wv[NW][8];
    float2 wdm[NW], xds[ND];
    int4 xv[NX];
    auto fetch = [&](int k0) {
#pragma unroll
        for (int j = 0; j < NW; ++j) {
            const int i = threadIdx.x + j * MMQ_THREADS, r = i / MMQ_KB, b = i % MMQ_KB;
            float d = 0.0f, m = 0.0f;
            if (m0 + r < M && k0 + b < nb) load_wq(W + (size_t)(m0 + r) * rb, k0 + b, wv[j], d, m);
            else
#pragma unroll
                for (int e = 0; e < 8; ++e) wv[j][e] = 0;
            wdm[j] = make_float2(d, m);
        }
#pragma unroll
        for (int j = 0; j < NX; ++j) {
            const int i = threadIdx.x + j * MMQ_THREADS, r = i / (MMQ_KB * 2), b = (i >> 1) % MMQ_KB;
            xv[j] = t0 + r < T && k0 + b < nb
                ? *(const int4*)(XQ + ((size_t)(t0 + r) * nb + k0 + b) * 32 + (i & 1) * 16)
                : make_int4(0, 0, 0, 0);
        }
#pragma unroll
        for (int j = 0; j < ND; ++j) {
            const int i = threadIdx.x + j * MMQ_THREADS, r = i / MMQ_KB, b = i % MMQ_KB;
            xds[j] = t0 + r < T && k0 + b < nb ? DS[(size_t)(t0 + r) * nb + k0 + b] : make_float2(0.0f, 0.0f);
        }
    };
    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.0f;
    fetch(0);
    for (int k0 = 0; k0 < nb; k0 += MMQ_KB) {
        __syncthreads();  // the last tile's readers are done with it
#pragma unroll
        for (int j = 0; j < NW; ++j) {
            const int i = threadIdx.x + j * MMQ_THREADS, r = i / MMQ_KB, b = i % MMQ_KB;
            int4* p = (int4*)(sw + r * MMQ_W + b * 8);
            p[0] = make_int4(signed_bytes(wv[j][0]), signed_bytes(wv[j][1]), signed_bytes(wv[j][2]),
                             signed_bytes(wv[j][3]));
            p[1] = make_int4(signed_bytes(wv[j][4]), signed_bytes(wv[j][5]), signed_bytes(wv[j][6]),
                             signed_bytes(wv[j][7]));
            swd[i] = wdm[j];
        }
#pragma unroll
        for (int j = 0; j < NX; ++j) {
            const int i = threadIdx.x + j * MMQ_THREADS;
            *(int4*)(sx + i / (MMQ_KB * 2) * MMQ_W + (i % (MMQ_KB * 2)) * 4) = xv[j];
        }
#pragma unroll
        for (int j = 0; j < ND; ++j) {
#if WTYPE == 3 || WTYPE == 7  // the block's sum, converted once here rather than at every product
            xds[j].y = (float)__float_as_int(xds[j].y);
#endif
            sxd[threadIdx.x + j * MMQ_THREADS] = xds[j];
        }
        __syncthreads();
        if (k0 + MMQ_KB < nb) fetch(k0 + MMQ_KB);
#pragma unroll
        for (int b = 0; b < MMQ_KB; ++b) {
            int a[2][4];
            float2 wd[2][2];
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
                const int r = wm + mt * 16 + g;
                const int* p = sw + r * MMQ_W + b * 8 + c;
                a[mt][0] = p[0], a[mt][1] = p[8 * MMQ_W], a[mt][2] = p[4], a[mt][3] = p[8 * MMQ_W + 4];
                wd[mt][0] = swd[r * MMQ_KB + b], wd[mt][1] = swd[(r + 8) * MMQ_KB + b];
            }
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
                const int tk = wt + nt * 8;
                const int* q = sx + (tk + g) * MMQ_W + b * 8 + c;
                const float2 x0 = sxd[(tk + c * 2) * MMQ_KB + b], x1 = sxd[(tk + c * 2 + 1) * MMQ_KB + b];
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) {
                    int s[4] = {0, 0, 0, 0};
                    mma_16832_s8(s, a[mt], q[0], q[4]);
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const float2 w = wd[mt][e >> 1], x = e & 1 ? x1 : x0;
#if WTYPE == 3 || WTYPE == 7
                        acc[mt][nt][e] += x.x * (w.x * exact_float(s[e]) + w.y * x.y);
#else
                        acc[mt][nt][e] += w.x * x.x * exact_float(s[e]);
#endif
                    }
                }
            }
        }
    }
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = m0 + wm + mt * 16 + g + (e >> 1) * 8, t = t0 + wt + nt * 8 + c * 2 + (e & 1);
                if (r < M && t < T) Y[(size_t)t * M + r] = acc[mt][nt][e];
            }
}
#endif
