// Helpers shared by every llmrt CUDA module (compiled with NVRTC through cupy; no headers).
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;

#define INF __int_as_float(0x7f800000)

// Programmatic dependent launch (launch.py): wait until the previous kernel's writes are visible,
// then let the next kernel's blocks be scheduled. The first statement of every kernel, before any
// early return: a block that skipped the wait could let a later kernel start too soon. No-ops
// for a plain launch and before sm_90.
__device__ __forceinline__ void pdl_enter() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Asks L2 for nbytes at p (the block's threads share the 128-byte lines): a kernel's weights can
// stream in before pdl_enter() while the previous kernel still runs.
__device__ __forceinline__ void prefetch_l2(const void* p, size_t nbytes) {
    const char* c = (const char*)p;
    for (size_t o = (size_t)threadIdx.x * 128; o < nbytes; o += (size_t)blockDim.x * 128)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(c + o));
}

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float bf2f(u16 b) { return __uint_as_float(((u32)b) << 16); }

// --- matrix units (sm_80 and later): mma.sync, a warp's 16 x 8 product -------------------------
// c[0..4) += a (16 x K, row-major) x b (K x 8, column-major). With g = lane / 4 and c = lane % 4,
// a thread holds four 32-bit words of a: rows g, g+8 x the words c and c+4 of a row (K = 16 f16:
// cols 2c, 2c+1 and 2c+8, 2c+9; K = 32 s8: bytes 4c..4c+3 and 16+4c..), two of b: the same words
// of col g, and c: rows g, g+8 x cols 2c, 2c+1.
__device__ __forceinline__ void mma_16816(float* c, const u32* a, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_16832_s8(int* c, const int* a, int b0, int b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ float ldh(const u8* p) { return h2f(*(const u16*)p); }

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

// Block-wide reductions; `red` is __shared__ float[32]. Every thread gets the result.
__device__ __forceinline__ float block_sum(float x, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    x = warp_sum(x);
    __syncthreads();
    if (lane == 0) red[warp] = x;
    __syncthreads();
    x = lane < nw ? red[lane] : 0.0f;
    return warp_sum(x);
}

__device__ __forceinline__ float block_max(float x, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    x = warp_max(x);
    __syncthreads();
    if (lane == 0) red[warp] = x;
    __syncthreads();
    x = lane < nw ? red[lane] : -INF;
    return warp_max(x);
}

__device__ __forceinline__ double block_sum_d(double x, double* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    __syncthreads();
    if (lane == 0) red[warp] = x;
    __syncthreads();
    x = lane < nw ? red[lane] : 0.0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// rms_norm / norm of one row as reference.py computes it: mean and variance in float64, the
// division in float64, rounded once to f32 (NORM_F64 0: all in f32 with rsqrtf, cheaper and
// further from the reference). row_norm_den returns the divisor (f64) or its inverse (f32).
#ifndef NORM_F64
#define NORM_F64 1
#endif
__device__ __forceinline__ double row_norm_den(const float* xr, int ncols, double eps, int mode,
                                               double* mean_out, double* red) {
#if NORM_F64
    double mean = 0.0;
    if (mode == 1) {
        double s = 0.0;
        for (int i = threadIdx.x; i < ncols; i += blockDim.x) s += (double)xr[i];
        mean = block_sum_d(s, red) / ncols;
    }
    double ss = 0.0;
    for (int i = threadIdx.x; i < ncols; i += blockDim.x) {
        const double v = (double)xr[i] - mean;
        ss += v * v;
    }
    *mean_out = mean;
    return sqrt(block_sum_d(ss, red) / ncols + eps);
#else
    float* fred = (float*)red;
    float mean = 0.0f;
    if (mode == 1) {
        float s = 0.0f;
        for (int i = threadIdx.x; i < ncols; i += blockDim.x) s += xr[i];
        mean = block_sum(s, fred) / ncols;
    }
    float ss = 0.0f;
    for (int i = threadIdx.x; i < ncols; i += blockDim.x) {
        const float v = xr[i] - mean;
        ss += v * v;
    }
    *mean_out = mean;
    return rsqrtf(block_sum(ss, fred) / ncols + (float)eps);
#endif
}

// One normalized element (den: what row_norm_den returned).
__device__ __forceinline__ float norm_apply(float x, double mean, double den) {
#if NORM_F64
    return (float)(((double)x - mean) / den);
#else
    return (x - (float)mean) * (float)den;
#endif
}

// ggml's CPU GELU: tanh approximation from the f16 value of x, rounded to f16.
__device__ __forceinline__ float gelu_f16(float x) {
    if (x <= -10.0f) return 0.0f;
    if (x >= 10.0f) return x;
    const float h = h2f(f2h(x));
    const float y = 0.5f * h * (1.0f + tanhf(0.7978845608028654f * h * (1.0f + 0.044715f * h * h)));
    return h2f(f2h(y));
}

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

// Activations quantized once for the integer mat-vec (q8: ggml's quantize_row_q8_0, x86 path):
// a buffer holds int8 qs[n] and, dso bytes in, one float2 per block of 32: (f16-rounded scale,
// the int sum of the block's qs as bits). Warp-collective: the 32 lanes hold block `blk`.
__device__ __forceinline__ void q8_store32(float x, int lane, u8* XQ, long long dso, long long blk) {
    const float amax = warp_max(fabsf(x));
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    const int q = (int)rintf(x * inv);
    ((signed char*)XQ)[blk * 32 + lane] = (signed char)q;
    int s = q;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) ((float2*)(XQ + dso))[blk] = make_float2(h2f(f2h(amax / 127.0f)), __int_as_float(s));
}
