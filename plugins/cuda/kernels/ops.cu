// Every op that does not read a quantized weight. Activations are contiguous f32 unless noted.

// A strided gather of up to 4 dimensions into a contiguous tensor; mode 0: 4-byte elements,
// 1: 2-byte elements, 2: f32 -> f16, 3: f16 -> f32.
extern "C" __global__ void copy_strided(const u8* src, u8* dst, long long n, int mode,
                                        long long n1, long long n2, long long n3,
                                        long long s0, long long s1, long long s2, long long s3) {
    pdl_enter();
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        long long r = i;
        const long long i3 = r % n3; r /= n3;
        const long long i2 = r % n2; r /= n2;
        const long long i1 = r % n1; const long long i0 = r / n1;
        const long long o = i0 * s0 + i1 * s1 + i2 * s2 + i3 * s3;
        if (mode == 0) ((u32*)dst)[i] = ((const u32*)src)[o];
        else if (mode == 1) ((u16*)dst)[i] = ((const u16*)src)[o];
        else if (mode == 2) ((u16*)dst)[i] = f2h(((const float*)src)[o]);
        else ((float*)dst)[i] = h2f(((const u16*)src)[o]);
    }
}

// y = a (op) b, b broadcast to a's shape (a1..a3 and b0..b3: dimensions padded to 4); op 0 add, 1 mul.
extern "C" __global__ void binary(const float* a, const float* b, float* y, long long n, int op,
                                  long long a1, long long a2, long long a3,
                                  long long b0, long long b1, long long b2, long long b3) {
    pdl_enter();
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        long long r = i;
        const long long i3 = r % a3; r /= a3;
        const long long i2 = r % a2; r /= a2;
        const long long i1 = r % a1; const long long i0 = r / a1;
        const long long bi = (((i0 % b0) * b1 + i1 % b1) * b2 + i2 % b2) * b3 + i3 % b3;
        y[i] = op == 0 ? a[i] + b[bi] : a[i] * b[bi];
    }
}

// op 0: scale, 1: silu, 2: gelu
extern "C" __global__ void unary(const float* x, float* y, long long n, int op, float scale) {
    pdl_enter();
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float v = x[i];
        y[i] = op == 0 ? v * scale : (op == 1 ? silu(v) : gelu_f16(v));
    }
}

// op 0: silu(g) * u, 1: gelu(g) * u
extern "C" __global__ void glu(const float* g, const float* u, float* y, long long n, int op) {
    pdl_enter();
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float v = g[i];
        y[i] = (op == 0 ? silu(v) : gelu_f16(v)) * u[i];
    }
}

// One block per row: mode 0 rms_norm, 1 norm; times w[col] when w is not null.
extern "C" __global__ void norm_rows(const float* x, float* y, const float* w, int ncols, double eps,
                                int mode) {
    pdl_enter();
    __shared__ double red[32];
    const float* xr = x + (size_t)blockIdx.x * ncols;
    float* yr = y + (size_t)blockIdx.x * ncols;
    double mean;
    const double den = row_norm_den(xr, ncols, eps, mode, &mean, red);
    for (int i = threadIdx.x; i < ncols; i += blockDim.x) {
        const float v = norm_apply(xr[i], mean, den);
        yr[i] = w ? v * w[i] : v;
    }
}

// x0 cos - x1 sin (first of a pair) or x0 sin + x1 cos, each product rounded (no FMA), as the
// reference computes it.
__device__ __forceinline__ float rope_mix(float xs, float xo, float c, float s, int first) {
    return first ? __fsub_rn(__fmul_rn(xs, c), __fmul_rn(xo, s))
                 : __fadd_rn(__fmul_rn(xo, s), __fmul_rn(xs, c));
}

// Rotary embedding of x [T, H, D] over the first n_dims of D; mode 0 adjacent pairs, 2 neox.
extern "C" __global__ void rope(const float* x, const int* pos, const float* factors, float* y,
                                int H, int D, int n_dims, int mode, double base, double freq_scale,
                                double attn_factor, long long n) {
    pdl_enter();
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const int d = (int)(i % D);
        const long long row = i / D;
        const int t = (int)(row / H);
        if (d >= n_dims) {
            y[i] = x[i];
            continue;
        }
        const int half = n_dims / 2;
        int p, first, other;
        if (mode == 2) {
            p = d < half ? d : d - half;
            first = d < half;
            other = first ? d + half : d - half;
        } else {
            p = d / 2;
            first = (d & 1) == 0;
            other = first ? d + 1 : d - 1;
        }
        double inv_freq = pow(base, -2.0 * p / n_dims);
        if (factors) inv_freq /= (double)factors[p];
        const double theta = (double)pos[t] * inv_freq * freq_scale;
        const float c = (float)(cos(theta) * attn_factor), s = (float)(sin(theta) * attn_factor);
        y[i] = rope_mix(x[i], x[row * D + other], c, s, first);
    }
}

// dst[ids[r], :] = src[r, :] (row = elements per row); dst f16 when f16 != 0.
extern "C" __global__ void set_rows(const float* src, const int* ids, u8* dst, long long n, int row,
                                    int f16) {
    pdl_enter();
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const long long r = i / row, j = i % row;
        const long long o = (long long)ids[r] * row + j;
        if (f16) ((u16*)dst)[o] = f2h(src[i]);
        else ((float*)dst)[o] = src[i];
    }
}

// out[i, :] = table[ids[i], :] for an f32 activation table.
extern "C" __global__ void get_rows_f32(const float* table, const int* ids, float* out, int ncols) {
    pdl_enter();
    const float* src = table + (size_t)ids[blockIdx.x] * ncols;
    float* dst = out + (size_t)blockIdx.x * ncols;
    for (int i = threadIdx.x; i < ncols; i += blockDim.x) dst[i] = src[i];
}

// softmax(x * scale + mask[row % T]) over rows of S; one block per row.
extern "C" __global__ void soft_max(const float* x, const float* mask, float* y, int S, int T,
                                    float scale) {
    pdl_enter();
    __shared__ float red[32];
    const float* xr = x + (size_t)blockIdx.x * S;
    float* yr = y + (size_t)blockIdx.x * S;
    const float* mr = mask ? mask + (size_t)(blockIdx.x % T) * S : nullptr;
    float mx = -INF;
    for (int i = threadIdx.x; i < S; i += blockDim.x) {
        const float v = xr[i] * scale + (mr ? mr[i] : 0.0f);
        yr[i] = v;
        mx = fmaxf(mx, v);
    }
    mx = block_max(mx, red);
    float s = 0.0f;
    for (int i = threadIdx.x; i < S; i += blockDim.x) {
        const float e = mx == -INF ? 0.0f : expf(yr[i] - mx);
        yr[i] = e;
        s += e;
    }
    const float inv = 1.0f / block_sum(s, red);
    for (int i = threadIdx.x; i < S; i += blockDim.x) yr[i] *= inv;
}

// Index of the largest element of each row (the first on ties); one block per row.
extern "C" __global__ void argmax(const float* x, int* y, int S) {
    pdl_enter();
    __shared__ float sv[32];
    __shared__ int si[32];
    const float* xr = x + (size_t)blockIdx.x * S;
    float best = -INF;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < S; i += blockDim.x) {
        const float v = xr[i];
        if (v > best || (v == best && i < bi) || bi == 0x7fffffff) {
            best = v;
            bi = i;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > best || (ov == best && oi < bi)) {
            best = ov;
            bi = oi;
        }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    if (lane == 0) {
        sv[warp] = best;
        si[warp] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < nw; ++w)
            if (sv[w] > best || (sv[w] == best && si[w] < bi)) {
                best = sv[w];
                bi = si[w];
            }
        y[blockIdx.x] = bi;
    }
}

// Activations x activations (attention-like), ggml broadcasting over flattened batches:
// y[b, t, m] = sum_k A[b / r, m, k] * B[b, t, k]; A f32 or f16 (then B is rounded to f16).
extern "C" __global__ void mm_act(const u8* A, int a_f16, const float* B, float* Y, int nb, int r,
                                  int T, int M, int K) {
    pdl_enter();
    const long long n = (long long)nb * T * M;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const int m = (int)(i % M);
        const long long bt = i / M;
        const int t = (int)(bt % T), b = (int)(bt / T);
        const float* br = B + ((size_t)b * T + t) * K;
        const size_t ao = ((size_t)(b / r) * M + m) * K;
        float s = 0.0f;
        if (a_f16) {
            const u16* ar = (const u16*)A + ao;
            for (int k = 0; k < K; ++k) s += h2f(ar[k]) * h2f(f2h(br[k]));
        } else {
            const float* ar = (const float*)A + ao;
            for (int k = 0; k < K; ++k) s += ar[k] * br[k];
        }
        Y[i] = s;
    }
}

extern "C" __global__ void to_f16(const float* x, u16* y, long long n) {
    pdl_enter();
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        y[i] = f2h(x[i]);
}

// Attention of q [T, Hq, D] over S cached keys/values of head h / (Hq / Hkv); one block of 256
// threads per (head, token). D/8 threads share one key (8 elements each); scores sit in shared
// memory, followed by the partial sums of the PV product.
// q·k over one lane's 8 elements of a key row (f16 or f32 cache).
template <int F16>
__device__ __forceinline__ float kdot8(const u8* __restrict__ k, size_t o, const float* qr) {
    if (F16) {
        const uint4 u = *(const uint4*)((const u16*)k + o);
        const u32 w[4] = {u.x, u.y, u.z, u.w};
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < 4; ++i)
            dot += qr[2 * i] * h2f((u16)(w[i] & 0xffff)) + qr[2 * i + 1] * h2f((u16)(w[i] >> 16));
        return dot;
    }
    const float4 a = *(const float4*)((const float*)k + o);
    const float4 b = *(const float4*)((const float*)k + o + 4);
    return qr[0] * a.x + qr[1] * a.y + qr[2] * a.z + qr[3] * a.w + qr[4] * b.x + qr[5] * b.y +
           qr[6] * b.z + qr[7] * b.w;
}

// acc[0..8) += p * the 8 values of V at element o (f16 or f32 cache).
template <int F16>
__device__ __forceinline__ void vacc8(const u8* __restrict__ v, size_t o, float p, float* acc) {
    if (F16) {
        const uint4 u = *(const uint4*)((const u16*)v + o);
        const u32 w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            acc[2 * i] += p * h2f((u16)(w[i] & 0xffff));
            acc[2 * i + 1] += p * h2f((u16)(w[i] >> 16));
        }
    } else {
        const float4 a = *(const float4*)((const float*)v + o);
        const float4 b = *(const float4*)((const float*)v + o + 4);
        acc[0] += p * a.x; acc[1] += p * a.y; acc[2] += p * a.z; acc[3] += p * a.w;
        acc[4] += p * b.x; acc[5] += p * b.y; acc[6] += p * b.z; acc[7] += p * b.w;
    }
}

// kdot8 over 8 values already in f32 (shared memory), summed in kdot8's order.
template <int F16>
__device__ __forceinline__ float sdot8(const float* x, const float* qr) {
    if (F16) {
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < 4; ++i) dot += qr[2 * i] * x[2 * i] + qr[2 * i + 1] * x[2 * i + 1];
        return dot;
    }
    return qr[0] * x[0] + qr[1] * x[1] + qr[2] * x[2] + qr[3] * x[3] + qr[4] * x[4] + qr[5] * x[5] +
           qr[6] * x[6] + qr[7] * x[7];
}

template <int D, int F16>
__device__ __forceinline__ void fattn_body(const float* __restrict__ q, const u8* __restrict__ k,
                                           const u8* __restrict__ v, const float* __restrict__ mask,
                                           float* __restrict__ out, int Hq, int Hkv, int S,
                                           long long ks, long long kh, long long vs, long long vh,
                                           float scale, float softcap, u8* XQ, long long dso) {
    extern __shared__ float smem[];
    __shared__ float red[32];
    constexpr int LPK = D / 8, KPI = 256 / LPK;
    float* sq = smem;
    float* sc = smem + D;
    float* part = sc + S;
    const int h = blockIdx.x, t = blockIdx.y, hk = h / (Hq / Hkv), tid = threadIdx.x;
    for (int d = tid; d < D; d += 256) {
        float x = q[((size_t)t * Hq + h) * D + d];
        sq[d] = F16 ? h2f(f2h(x)) : x;
    }
    __syncthreads();
    const int g = tid / LPK, j = tid % LPK;
    float qr[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) qr[i] = sq[j * 8 + i];
    const float* mrow = mask ? mask + (size_t)t * S : nullptr;
#pragma unroll 4
    for (int s0 = 0; s0 < S; s0 += KPI) {
        const int s = s0 + g;
        float dot = 0.0f;
        if (s < S && !(mrow && mrow[s] == -INF)) {
            dot = kdot8<F16>(k, (size_t)s * ks + (size_t)hk * kh + j * 8, qr);
        }
#pragma unroll
        for (int o = LPK / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        if (j == 0 && s < S) {
            float x = dot * scale;
            if (softcap > 0.0f) x = tanhf(x / softcap) * softcap;
            sc[s] = mrow ? x + mrow[s] : x;
        }
    }
    __syncthreads();
    float mx = -INF;
    for (int s = tid; s < S; s += 256) mx = fmaxf(mx, sc[s]);
    mx = block_max(mx, red);
    float sum = 0.0f;
    for (int s = tid; s < S; s += 256) {
        const float e = mx == -INF ? 0.0f : expf(sc[s] - mx);
        sc[s] = e;
        sum += e;
    }
    sum = block_sum(sum, red);
    __syncthreads();
    float acc[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[i] = 0.0f;
#pragma unroll 4
    for (int s = g; s < S; s += KPI) {
        float p = sum > 0.0f ? sc[s] / sum : 0.0f;
        if (F16) p = h2f(f2h(p));
        if (p != 0.0f) {
            const size_t o = (size_t)s * vs + (size_t)hk * vh + j * 8;
            vacc8<F16>(v, o, p, acc);
        }
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) part[g * D + j * 8 + i] = acc[i];
    __syncthreads();
    for (int d = tid; d < D; d += 256) {  // D % 32 == 0 when XQ: whole warps
        float o = 0.0f;
        for (int gg = 0; gg < KPI; ++gg) o += part[gg * D + d];
        const size_t oi = ((size_t)t * Hq + h) * D + d;
        out[oi] = o;
        if (XQ) q8_store32(o, tid & 31, XQ, dso, (long long)(oi >> 5));
    }
}

#define FATTN(D, F16)                                                                          \
    extern "C" __global__ void __launch_bounds__(256) fattn_##D##_##F16(                       \
        const float* q, const u8* k, const u8* v, const float* mask, float* out, int Hq,       \
        int Hkv, int S, long long ks, long long kh, long long vs, long long vh, float scale,   \
        float softcap, u8* XQ, long long dso) {                                                \
        pdl_enter();                                                                           \
        fattn_body<D, F16>(q, k, v, mask, out, Hq, Hkv, S, ks, kh, vs, vh, scale, softcap, XQ, \
                           dso);                                                               \
    }
FATTN(16, 0)
FATTN(16, 1)
FATTN(32, 0)
FATTN(32, 1)
FATTN(64, 0)
FATTN(64, 1)
FATTN(128, 0)
FATTN(128, 1)
FATTN(256, 0)
FATTN(256, 1)

// --- prompt attention on tensor cores ---------------------------------------------------------

__device__ __forceinline__ u32 pack_f16x2(float lo, float hi) {
    return (u32)f2h(lo) | ((u32)f2h(hi) << 16);
}

#define FA_ROWS 64  // query rows a block: 16 a warp, 4 warps
#define FA_KEYS 64  // keys a shared-memory tile
#define FA_THREADS 128

// Attention of a prompt (many query rows) on an f16 KV cache, after FlashAttention-2: a block
// takes 64 query rows of one head, K and V pass through shared memory 64 keys at a time, and each
// warp keeps its 16 rows' running maximum, sum and output in registers. S = Q K^T lands in the
// accumulator layout, which is the A-operand layout of P x V, so P never leaves registers. q and
// p are rounded to f16 as they enter the products (as the one-block-a-row kernel and ggml do); a
// tile masked out for all of a warp's rows (the causal mask's upper triangle) is skipped.
template <int D>
__device__ __forceinline__ void fattn_mma_body(const float* __restrict__ q, const u16* __restrict__ k,
                                               const u16* __restrict__ v, const float* __restrict__ mask,
                                               float* __restrict__ out, int T, int Hq, int Hkv, int S,
                                               long long ks, long long kh, long long vs, long long vh,
                                               float scale, float softcap) {
    constexpr int P = D + 8;  // tile row stride in halves: a row's 32-bit words 4 banks apart
    __shared__ __align__(16) u16 sk[FA_KEYS * P];
    __shared__ __align__(16) u16 sv[FA_KEYS * P];
    const int h = blockIdx.y, hk = h / (Hq / Hkv), warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, c = lane & 3;
    const int ra = blockIdx.x * FA_ROWS + warp * 16 + g, rb = ra + 8;  // this thread's rows
    u32 qa[D / 16][4];
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int r = i & 1 ? rb : ra, d = kc * 16 + c * 2 + (i & 2) * 4;
            const float* x = q + ((size_t)r * Hq + h) * D + d;
            qa[kc][i] = r < T ? pack_f16x2(x[0], x[1]) : 0u;
        }
    }
    float o[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float ma = -INF, mb = -INF, la = 0.0f, lb = 0.0f;
    const u32 sv_base = (u32)__cvta_generic_to_shared(sv);
    for (int s0 = 0; s0 < S; s0 += FA_KEYS) {
        float sc[FA_KEYS / 8][4];
        bool live = false;  // any key of the tile unmasked for this thread's rows
#pragma unroll
        for (int n = 0; n < FA_KEYS / 8; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = s0 + n * 8 + c * 2 + (e & 1), r = e < 2 ? ra : rb;
                float m = key < S && r < T ? 0.0f : -INF;
                if (mask && m == 0.0f) m = mask[(size_t)r * S + key];
                sc[n][e] = m;
                live |= m != -INF;
            }
        }
        // a tile no row of the block sees is not loaded; this barrier also waits for the last
        // tile's readers
        if (!__syncthreads_or(live)) continue;
        // 16-byte pieces of K and of V a thread stores, NC at a time: all of a chunk's loads are
        // issued before the first store waits on one
        constexpr int NL = FA_KEYS * D / 8 / FA_THREADS, NC = NL < 4 ? NL : 4;
#pragma unroll
        for (int j0 = 0; j0 < NL; j0 += NC) {
            uint4 kx[NC], vx[NC];
#pragma unroll
            for (int j = 0; j < NC; ++j) {
                const int i = threadIdx.x + (j0 + j) * FA_THREADS, r = i / (D / 8), d = i % (D / 8) * 8;
                kx[j] = vx[j] = make_uint4(0, 0, 0, 0);
                if (s0 + r < S) {
                    kx[j] = *(const uint4*)(k + (size_t)(s0 + r) * ks + (size_t)hk * kh + d);
                    vx[j] = *(const uint4*)(v + (size_t)(s0 + r) * vs + (size_t)hk * vh + d);
                }
            }
#pragma unroll
            for (int j = 0; j < NC; ++j) {
                const int i = threadIdx.x + (j0 + j) * FA_THREADS, r = i / (D / 8), d = i % (D / 8) * 8;
                *(uint4*)(sk + r * P + d) = kx[j];
                *(uint4*)(sv + r * P + d) = vx[j];
            }
        }
        __syncthreads();
        if (!__any_sync(0xffffffffu, live)) continue;
        float acc[FA_KEYS / 8][4];
#pragma unroll
        for (int n = 0; n < FA_KEYS / 8; ++n) {
            acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
#pragma unroll
            for (int kc = 0; kc < D / 16; ++kc) {
                const u16* kr = sk + (n * 8 + g) * P + kc * 16 + c * 2;
                mma_16816(acc[n], qa[kc], *(const u32*)kr, *(const u32*)(kr + 8));
            }
        }
        float mxa = -INF, mxb = -INF;
#pragma unroll
        for (int n = 0; n < FA_KEYS / 8; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float x = acc[n][e] * scale;
                if (softcap > 0.0f) x = tanhf(x / softcap) * softcap;
                x = sc[n][e] == -INF ? -INF : x + sc[n][e];
                sc[n][e] = x;
                if (e < 2) mxa = fmaxf(mxa, x); else mxb = fmaxf(mxb, x);
            }
        }
#pragma unroll
        for (int o2 = 1; o2 < 4; o2 <<= 1) {  // a row's 4 threads: lanes 4g..4g+3
            mxa = fmaxf(mxa, __shfl_xor_sync(0xffffffffu, mxa, o2));
            mxb = fmaxf(mxb, __shfl_xor_sync(0xffffffffu, mxb, o2));
        }
        const float na = fmaxf(ma, mxa), nb = fmaxf(mb, mxb);
        const float fa = na == -INF ? 1.0f : expf(ma - na), fb = nb == -INF ? 1.0f : expf(mb - nb);
        ma = na, mb = nb;
        float sa = 0.0f, sb = 0.0f;
        u32 pa[FA_KEYS / 16][4];
#pragma unroll
        for (int n = 0; n < FA_KEYS / 8; ++n) {
            float p[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float x = sc[n][e];
                p[e] = x == -INF ? 0.0f : h2f(f2h(expf(x - (e < 2 ? na : nb))));
            }
            sa += p[0] + p[1], sb += p[2] + p[3];
            pa[n / 2][(n & 1) * 2] = pack_f16x2(p[0], p[1]);
            pa[n / 2][(n & 1) * 2 + 1] = pack_f16x2(p[2], p[3]);
        }
#pragma unroll
        for (int o2 = 1; o2 < 4; o2 <<= 1) {
            sa += __shfl_xor_sync(0xffffffffu, sa, o2);
            sb += __shfl_xor_sync(0xffffffffu, sb, o2);
        }
        la = la * fa + sa, lb = lb * fb + sb;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            o[n][0] *= fa, o[n][1] *= fa, o[n][2] *= fb, o[n][3] *= fb;
#pragma unroll
            for (int kc = 0; kc < FA_KEYS / 16; ++kc) {
                // B = V rows kc*16.. x cols n*8..: two 8x8 tiles of the row-major V tile, transposed
                // as they load (lanes 0-15 name the 16 rows)
                const u32 addr = sv_base + (((kc * 16 + (lane & 15)) * P + n * 8) << 1);
                u32 b0, b1;
                asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];"
                             : "=r"(b0), "=r"(b1) : "r"(addr));
                mma_16816(o[n], pa[kc], b0, b1);
            }
        }
    }
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        const int d = n * 8 + c * 2;
        if (ra < T) {
            float* y = out + ((size_t)ra * Hq + h) * D + d;
            y[0] = la > 0.0f ? o[n][0] / la : 0.0f, y[1] = la > 0.0f ? o[n][1] / la : 0.0f;
        }
        if (rb < T) {
            float* y = out + ((size_t)rb * Hq + h) * D + d;
            y[0] = lb > 0.0f ? o[n][2] / lb : 0.0f, y[1] = lb > 0.0f ? o[n][3] / lb : 0.0f;
        }
    }
}

#define FATTN_MMA(D)                                                                            \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) fattn_mma_##D(                            \
        const float* q, const u16* k, const u16* v, const float* mask, float* out, int T, int Hq, \
        int Hkv, int S, long long ks, long long kh, long long vs, long long vh, float scale,     \
        float softcap) {                                                                        \
        pdl_enter();                                                                            \
        fattn_mma_body<D>(q, k, v, mask, out, T, Hq, Hkv, S, ks, kh, vs, vh, scale, softcap);   \
    }
FATTN_MMA(32)
FATTN_MMA(64)
FATTN_MMA(128)

// --- decode fusions --------------------------------------------------------------------------

// X [nblk * 32] f32 -> q8 buffer (see q8_store32); one warp per block of 32.
extern "C" __global__ void quant_q8(const float* X, u8* XQ, long long dso, long long nblk) {
    pdl_enter();
    const int lane = threadIdx.x & 31;
    for (long long b = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5; b < nblk;
         b += ((long long)gridDim.x * blockDim.x) >> 5)
        q8_store32(X[b * 32 + lane], lane, XQ, dso, b);
}

// norm_rows that also writes its output quantized for the integer mat-vec (ncols % 32 == 0,
// blockDim a multiple of 32); y may be null when only mat-vecs read the result.
extern "C" __global__ void norm_rows_q8(const float* x, float* y, const float* w, int ncols, double eps,
                                        int mode, u8* XQ, long long dso) {
    pdl_enter();
    __shared__ double red[32];
    const float* xr = x + (size_t)blockIdx.x * ncols;
    double mean;
    const double den = row_norm_den(xr, ncols, eps, mode, &mean, red);
    // gridDim.y blocks share a row: each computes the divisor (the same way, so the same bits)
    // and writes every gridDim.y-th group of warps' q8 blocks
    const int lane = threadIdx.x & 31, nw = blockDim.x >> 5, nb = ncols >> 5;
    for (int c = blockIdx.y * nw + (threadIdx.x >> 5); c < nb; c += nw * gridDim.y) {
        const int i = c * 32 + lane;
        float v = norm_apply(xr[i], mean, den);
        if (w) v *= w[i];
        if (y) y[(size_t)blockIdx.x * ncols + i] = v;
        q8_store32(v, lane, XQ, dso, (long long)blockIdx.x * nb + c);
    }
}

__device__ __forceinline__ float rope_one(const float* x, long long i, int D, int H, const int* pos,
                                          const float* factors, int n_dims, int mode, double base,
                                          double freq_scale, double attn_factor) {
    const int d = (int)(i % D);
    const long long row = i / D;
    const int t = (int)(row / H);
    if (d >= n_dims) return x[i];
    const int half = n_dims / 2;
    int p, first, other;
    if (mode == 2) {
        p = d < half ? d : d - half;
        first = d < half;
        other = first ? d + half : d - half;
    } else {
        p = d / 2;
        first = (d & 1) == 0;
        other = first ? d + 1 : d - 1;
    }
    double inv_freq = pow(base, -2.0 * p / n_dims);
    if (factors) inv_freq /= (double)factors[p];
    const double theta = (double)pos[t] * inv_freq * freq_scale;
    const float c = (float)(cos(theta) * attn_factor), s = (float)(sin(theta) * attn_factor);
    return rope_mix(x[i], x[row * D + other], c, s, first);
}

// rope(q) -> qo; rope(k) -> rows ids[t] of the K cache; v -> rows ids[t] of the V cache: the
// two ropes and two set_rows of an attention layer in one launch. Caches f16 when kf16/vf16.
extern "C" __global__ void rope_qkv(const float* q, const float* k, const float* v, const int* pos,
                                    const float* factors, float* qo, u8* kc, u8* vc, const int* ids,
                                    int Hq, int Hk, int D, int n_dims, int mode, double base,
                                    double freq_scale, double attn_factor, int kf16, int vf16,
                                    long long nq, long long nk, long long nv, int vrow) {
    pdl_enter();
    const long long n = nq + nk + nv;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        if (i < nq) {
            qo[i] = rope_one(q, i, D, Hq, pos, factors, n_dims, mode, base, freq_scale, attn_factor);
        } else if (i < nq + nk) {
            const long long j = i - nq, row = (long long)Hk * D;
            const float y = rope_one(k, j, D, Hk, pos, factors, n_dims, mode, base, freq_scale, attn_factor);
            const long long o = (long long)ids[j / row] * row + j % row;
            if (kf16) ((u16*)kc)[o] = f2h(y);
            else ((float*)kc)[o] = y;
        } else {
            const long long j = i - nq - nk;
            const long long o = (long long)ids[j / vrow] * vrow + j % vrow;
            if (vf16) ((u16*)vc)[o] = f2h(v[j]);
            else ((float*)vc)[o] = v[j];
        }
    }
}

// Decode attention split over the KV length, with the reference's rounding: block (g, t, split)
// takes NH query heads g * NH... of one KV head (grouped-query attention: each K and V row is
// read once for the NH heads), scores keys [lo, hi) into shared memory and publishes each head's
// (max, sum of exp); the nsplit blocks of (g, t) wait for each other (all blocks of the launch
// are resident: the host caps the grid), then each rounds its probabilities exp(s - M) / L
// (global M, L) to f16 as ggml's f16 V product does, multiplies them with V and writes its
// partial outputs; the last block to finish sums the partials in split order (deterministic),
// writes the outputs (and their q8 form) and resets the counter for the next replay.
// A decode step's new K/V row, for attention that ropes and stores it itself (k null: none).
struct NewRow {
    const float *k, *v;
    const int* pos;
    const float* factors;
    const int* ids;
    u8 *kc, *vc;
    int n_dims, mode;
    double base, freq_scale, attn_factor;
};

// one lane's 8 elements of a K or V row (f16 or f32 cache), as f32
template <int F16>
__device__ __forceinline__ void load8(const u8* __restrict__ x, size_t o, float* r) {
    if (F16) {
        const uint4 u = *(const uint4*)((const u16*)x + o);
        const u32 w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            r[2 * i] = h2f((u16)(w[i] & 0xffff));
            r[2 * i + 1] = h2f((u16)(w[i] >> 16));
        }
    } else {
        const float4 a = *(const float4*)((const float*)x + o);
        const float4 b = *(const float4*)((const float*)x + o + 4);
        r[0] = a.x; r[1] = a.y; r[2] = a.z; r[3] = a.w;
        r[4] = b.x; r[5] = b.y; r[6] = b.z; r[7] = b.w;
    }
}

template <int D, int F16, int NH>
__device__ __forceinline__ void fattn_split_body(const float* __restrict__ q, const u8* __restrict__ k,
                                                 const u8* __restrict__ v, const float* __restrict__ mask,
                                                 float* __restrict__ out, int Hq, int Hkv, int S,
                                                 long long ks, long long kh, long long vs, long long vh,
                                                 float scale, float softcap, float* part, int* counter,
                                                 int nsplit, u8* XQ, long long dso, const NewRow nr) {
    extern __shared__ float smem[];
    __shared__ float red[32];
    __shared__ int last;
    constexpr int LPK = D / 8, KPI = 256 / LPK;
    const int h0 = blockIdx.x * NH, t = blockIdx.y, sp = blockIdx.z, tid = threadIdx.x;
    const int hk = h0 / (Hq / Hkv);
    const int chunk = (S + nsplit - 1) / nsplit;
    const int lo = sp * chunk, hi = min(S, lo + chunk), n = max(0, hi - lo);
    float* sq = smem;            // [NH][D]
    float* sc = smem + NH * D;   // [NH][chunk]
    float* acc_s = sc + NH * chunk;
    // with a new row (nr.k set): q and k arrive unroped; the block whose keys hold the new cell
    // keeps its K and V rows (rounded as the cache stores them) in shared memory and reads them
    // from there, and writes them into the caches
    float* nk = acc_s + KPI * D;
    float* nv = nk + D;
    const int cnew = nr.k ? nr.ids[t] : -1;
    const bool mine = cnew >= lo && cnew < hi;
    for (int e = tid; e < NH * D; e += 256) {
        const long long i = ((long long)t * Hq + h0) * D + e;
        float x = nr.k ? rope_one(q, i, D, Hq, nr.pos, nr.factors, nr.n_dims, nr.mode, nr.base,
                                  nr.freq_scale, nr.attn_factor)
                       : q[i];
        sq[e] = F16 ? h2f(f2h(x)) : x;
    }
    if (mine) {
        for (int d = tid; d < D; d += 256) {
            const long long j = ((long long)t * Hkv + hk) * D + d;
            const float kr = rope_one(nr.k, j, D, Hkv, nr.pos, nr.factors, nr.n_dims, nr.mode,
                                      nr.base, nr.freq_scale, nr.attn_factor);
            const float vr = nr.v[j];
            nk[d] = F16 ? h2f(f2h(kr)) : kr;
            nv[d] = F16 ? h2f(f2h(vr)) : vr;
            if (h0 % (Hq / Hkv) == 0) {
                const size_t ko = (size_t)cnew * ks + (size_t)hk * kh + d;
                const size_t vo = (size_t)cnew * vs + (size_t)hk * vh + d;
                if (F16) {
                    ((u16*)nr.kc)[ko] = f2h(kr);
                    ((u16*)nr.vc)[vo] = f2h(vr);
                } else {
                    ((float*)nr.kc)[ko] = kr;
                    ((float*)nr.vc)[vo] = vr;
                }
            }
        }
    }
    __syncthreads();
    const int g = tid / LPK, j = tid % LPK;
    {
        float qr[NH][8];
#pragma unroll
        for (int hh = 0; hh < NH; ++hh)
#pragma unroll
            for (int i = 0; i < 8; ++i) qr[hh][i] = sq[hh * D + j * 8 + i];
        const float* mrow = mask ? mask + (size_t)t * S : nullptr;
#pragma unroll 2
        for (int s0 = 0; s0 < n; s0 += KPI) {
            const int s = lo + s0 + g;
            float kr[8];
            const bool live = s < hi && !(mrow && mrow[s] == -INF);
            if (live) {
                if (s == cnew) {
#pragma unroll
                    for (int i = 0; i < 8; ++i) kr[i] = nk[j * 8 + i];
                } else {
                    load8<F16>(k, (size_t)s * ks + (size_t)hk * kh + j * 8, kr);
                }
            }
#pragma unroll
            for (int hh = 0; hh < NH; ++hh) {
                float dot = live ? sdot8<F16>(kr, qr[hh]) : 0.0f;
#pragma unroll
                for (int o = LPK / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
                if (j == 0 && s < hi) {
                    float x = dot * scale;
                    if (softcap > 0.0f) x = tanhf(x / softcap) * softcap;
                    sc[hh * chunk + s - lo] = live ? (mrow ? x + mrow[s] : x) : -INF;
                }
            }
        }
    }
    __syncthreads();
    const size_t stride = D + 2;
    const int ht0 = t * Hq + h0;
#pragma unroll
    for (int hh = 0; hh < NH; ++hh) {
        const float* sh = sc + hh * chunk;
        float mx = -INF;
        for (int s = tid; s < n; s += 256) mx = fmaxf(mx, sh[s]);
        mx = block_max(mx, red);
        float sum = 0.0f;
        for (int s = tid; s < n; s += 256) sum += mx == -INF ? 0.0f : expf(sh[s] - mx);
        sum = block_sum(sum, red);
        if (tid == 0) {
            float* base = part + (size_t)(ht0 + hh) * nsplit * stride;
            base[(size_t)sp * stride] = mx;
            base[(size_t)sp * stride + 1] = sum;
        }
    }
    if (tid == 0) {
        __threadfence();
        atomicAdd(counter + ht0, 1);
        // bounded: a grid that could not be resident at once gives wrong numbers, not a hang
        for (int it = 0; atomicAdd(counter + ht0, 0) < nsplit && it < (1 << 22); ++it)
            __nanosleep(64);
        __threadfence();
    }
    __syncthreads();
    // each head's global max M and sum L over the parts, a warp a head, its lanes over the parts
    // (a block's loads of the parts all in flight at once: there are up to 64 a head)
    __shared__ float ml[2 * NH];
    if (tid / 32 < NH) {
        const float* base = part + (size_t)(ht0 + tid / 32) * nsplit * stride;
        float mx = -INF;
        for (int i = tid % 32; i < nsplit; i += 32) mx = fmaxf(mx, __ldcg(base + (size_t)i * stride));
        mx = warp_max(mx);
        float l = 0.0f;
        for (int i = tid % 32; i < nsplit; i += 32) {
            const float m = __ldcg(base + (size_t)i * stride);
            if (m != -INF) l += __ldcg(base + (size_t)i * stride + 1) * expf(m - mx);
        }
        l = warp_sum(l);
        if (tid % 32 == 0) {
            ml[2 * (tid / 32)] = mx;
            ml[2 * (tid / 32) + 1] = l;
        }
    }
    __syncthreads();
    float M[NH], L[NH];
#pragma unroll
    for (int hh = 0; hh < NH; ++hh) {
        M[hh] = ml[2 * hh];
        L[hh] = ml[2 * hh + 1];
    }
    float acc[NH][8];
#pragma unroll
    for (int hh = 0; hh < NH; ++hh)
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[hh][i] = 0.0f;
#pragma unroll 2
    for (int s = g; s < n; s += KPI) {
        float p[NH];
        bool any = false;
#pragma unroll
        for (int hh = 0; hh < NH; ++hh) {
            p[hh] = (M[hh] == -INF || L[hh] <= 0.0f) ? 0.0f : expf(sc[hh * chunk + s] - M[hh]) / L[hh];
            if (F16) p[hh] = h2f(f2h(p[hh]));
            any |= p[hh] != 0.0f;
        }
        if (!any) continue;
        float vr[8];
        if (lo + s == cnew) {
#pragma unroll
            for (int i = 0; i < 8; ++i) vr[i] = nv[j * 8 + i];
        } else {
            load8<F16>(v, (size_t)(lo + s) * vs + (size_t)hk * vh + j * 8, vr);
        }
#pragma unroll
        for (int hh = 0; hh < NH; ++hh)
            if (p[hh] != 0.0f) {
#pragma unroll
                for (int i = 0; i < 8; ++i) acc[hh][i] += p[hh] * vr[i];
            }
    }
    // the partial outputs go to a separate area: the (max, sum) pairs are still being read
    float* pouts = part + (size_t)gridDim.y * Hq * nsplit * stride;
#pragma unroll
    for (int hh = 0; hh < NH; ++hh) {
#pragma unroll
        for (int i = 0; i < 8; ++i) acc_s[g * D + j * 8 + i] = acc[hh][i];
        __syncthreads();
        float* pout = pouts + ((size_t)(ht0 + hh) * nsplit + sp) * D;
        for (int d = tid; d < D; d += 256) {
            float o = 0.0f;
            for (int gg = 0; gg < KPI; ++gg) o += acc_s[gg * D + d];
            pout[d] = o;
        }
        __syncthreads();
    }
    __threadfence();
    __syncthreads();
    if (tid == 0) last = atomicAdd(counter + ht0, 1) == 2 * nsplit - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    for (int e = tid; e < NH * D; e += 256) {  // D % 32 == 0 when XQ: whole warps
        const float* pall = pouts + (size_t)(ht0 + e / D) * nsplit * D + e % D;
        float o = 0.0f;
#pragma unroll 8
        for (int i = 0; i < nsplit; ++i) o += __ldcg(pall + (size_t)i * D);
        const size_t oi = (size_t)ht0 * D + e;
        out[oi] = o;
        if (XQ) q8_store32(o, tid & 31, XQ, dso, (long long)(oi >> 5));
    }
    if (tid == 0) counter[ht0] = 0;
}

// four blocks a multiprocessor (64 registers a thread): more parts of the KV length resident at once
#define FATTN_SPLIT(D, F16, NH)                                                                \
    extern "C" __global__ void __launch_bounds__(256, 4) fattn_split_##D##_##F16##_##NH(          \
        const float* q, const u8* k, const u8* v, const float* mask, float* out, int Hq,       \
        int Hkv, int S, long long ks, long long kh, long long vs, long long vh, float scale,   \
        float softcap, float* part, int* counter, int nsplit, u8* XQ, long long dso,            \
        const float* nk, const float* nv, const int* pos, const float* factors, const int* ids, \
        u8* kc, u8* vc, int n_dims, int mode, double base, double freq_scale,                  \
        double attn_factor) {                                                                  \
        pdl_enter();                                                                           \
        const NewRow nr = {nk, nv, pos, factors, ids, kc, vc, n_dims, mode, base, freq_scale,  \
                           attn_factor};                                                       \
        fattn_split_body<D, F16, NH>(q, k, v, mask, out, Hq, Hkv, S, ks, kh, vs, vh, scale,    \
                                     softcap, part, counter, nsplit, XQ, dso, nr);             \
    }
#define FATTN_SPLITS(D, F16) FATTN_SPLIT(D, F16, 1) FATTN_SPLIT(D, F16, 2) FATTN_SPLIT(D, F16, 4)
FATTN_SPLITS(16, 0)
FATTN_SPLITS(16, 1)
FATTN_SPLITS(32, 0)
FATTN_SPLITS(32, 1)
FATTN_SPLITS(64, 0)
FATTN_SPLITS(64, 1)
FATTN_SPLITS(128, 0)
FATTN_SPLITS(128, 1)
FATTN_SPLITS(256, 0)
FATTN_SPLITS(256, 1)
