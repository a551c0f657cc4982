#version 450
#extension GL_EXT_control_flow_attributes : require
// y[t, row] = dot(W[row, :], x[t, :]) (+ r[t, row] with the residual flag) for weights of the q8_0
// family (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and activations in q8 blocks of 32 (quantize_q8.comp), as
// ggml computes it: per block an integer dot product of the weight's and the activation's int8
// values, times both scales. USE_DOT: through SPV_KHR_integer_dot_product (OpSDot on four packed
// bytes); otherwise the bytes are unpacked. Each weight block is turned into eight words of four
// int8 values once, for all activation rows.
//
// Default: ROWS weight rows per workgroup, TPR threads per row, each taking whole blocks (blocks
// sub, sub + TPR, ...), reduced by clustered subgroup adds (USE_SUBGROUP, subgroups of at least
// TPR) or through shared memory. PER_ROW: one invocation per row and up to 8 activation rows per
// dispatch row (gl_WorkGroupID.y picks the block of 8), no shared memory or barrier (lavapipe).
//
// PROLOGUE: the activations arrive as f32 (bindings 5, 6) and each workgroup makes their q8 blocks
// itself, in shared memory, from what produced them (one barrier stage and dispatch less than a
// producer writing q8 blocks): mode 1 the values as they are, 2 rms_norm or norm (bit 8: mean
// subtracted, bit 9: times the f32 vector b), 3 swiglu(a, b), 4 the parts of split attention merged
// (attn_combine.comp's arithmetic). 8 rows per workgroup; t * k / 32 <= MAX_NB blocks. Its epilogue
// (emode) may take the rows in pairs (2i, 2i + 1): bit 0 rotates them as rope.comp does (normal
// mode, heads of `dim` rows), bit 1 writes them into row ids[token] of a cache `width` wide (the
// set_rows that reads them), bit 2: that cache is f16.
#ifdef USE_DOT
#extension GL_EXT_spirv_intrinsics : require
spirv_instruction(extensions = ["SPV_KHR_integer_dot_product"], capabilities = [6019, 6018], id = 4450)
int sdot_packed(uint a, uint b, spirv_literal int fmt);
int dot8(uint a, uint b) { return sdot_packed(a, b, 0); }
#else
int dot8(uint a, uint b) {
    ivec4 x = ivec4(int(a) << 24, int(a) << 16, int(a) << 8, int(a)) >> 24;
    ivec4 y = ivec4(int(b) << 24, int(b) << 16, int(b) << 8, int(b)) >> 24;
    return x.x * y.x + x.y * y.y + x.z * y.z + x.w * y.w;
}
#endif
#ifdef USE_SUBGROUP
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_clustered : require
#endif
#ifdef PER_ROW
#define WG 64
#elif defined(PROLOGUE)
#define WG 256
#define TPR 32
#define ROWS (WG / TPR)
#else
#define WG 128
#define TPR 32
#define ROWS (WG / TPR)
#endif
#define MAX_T 8
layout(local_size_x = WG) in;

layout(binding = 0) readonly restrict buffer W { uint Wq[]; };
#ifdef PROLOGUE
#define MAX_NB 512
layout(binding = 5) readonly restrict buffer A { float pa[]; };
layout(binding = 6) readonly restrict buffer B { float pb[]; };
// the q8 blocks, written by q8_store (q8.glsl) and read by block_dot as xq / xs
shared uvec4 q8q[2 * MAX_NB];
shared vec2 q8s[MAX_NB];
#define xq q8q
#define xs q8s
#else
layout(binding = 1) readonly buffer XQ { uvec4 xq[]; };
layout(binding = 2) readonly buffer XS { vec2 xs[]; };
#endif
layout(binding = 3) writeonly buffer D { float d[]; };
layout(binding = 4) readonly buffer R { float res[]; };
#ifdef PROLOGUE
// the epilogue's: D as f16 pairs, rope positions, frequencies and factors, cache row ids
layout(binding = 3) writeonly buffer DH { uint dh[]; };
layout(binding = 7) readonly buffer Pos { int pos[]; };
layout(binding = 8) readonly buffer F { float inv_freq[]; };
layout(binding = 9) readonly buffer FF { float factors[]; };
layout(binding = 10) readonly buffer I { int ids[]; };
#endif
#include "quant.glsl"

layout(push_constant) uniform P {
    uint k, row_bytes, rows, t, od, d_stride, groups_x, flags, ores;
#ifdef PROLOGUE
    uint mode, oa, ob, dv, splits;
    float eps;
    uint ngroups;
    uint emode, eo, width, dim, n_dims, opos, off, oi, has_factors;
    float attn_factor;
#endif
} p;

#ifdef PROLOGUE
#include "common.glsl"
#define Q8_QUADS
#include "q8.glsl"

const float NEG_INF = -1.0 / 0.0;
shared float pro_mean[MAX_T], pro_scale[MAX_T];

// quad c (values 4c..4c+3) of block b of the activations, from their producer
vec4 pro_quad(uint b, uint c) {
    uint nb = p.k / 32u, j = b / nb, e = (b % nb) * 32u + 4u * c, kind = p.mode & 7u;
    if (kind == 4u) {  // split attention: rows of (token, head), parts of dv + 2 floats
        uint hq = p.k / p.dv, rec = p.dv + 2u;
        uint base = p.oa + (j * hq + e / p.dv) * p.splits * rec, e0 = e % p.dv;
        float mx = NEG_INF;
        for (uint i = 0; i < p.splits; i++) mx = max(mx, pa[base + i * rec + p.dv]);
        float l = 0.0;
        vec4 x = vec4(0.0);
        for (uint i = 0; i < p.splits; i++) {
            uint q = base + i * rec;
            float m = pa[q + p.dv];
            float w = m == NEG_INF ? 0.0 : exp(m - mx);
            l += pa[q + p.dv + 1u] * w;
            x += vec4(pa[q + e0], pa[q + e0 + 1u], pa[q + e0 + 2u], pa[q + e0 + 3u]) * w;
        }
        return x / l;
    }
    uint o = p.oa + j * p.k + e;
    vec4 x = vec4(pa[o], pa[o + 1u], pa[o + 2u], pa[o + 3u]);
    if (kind == 2u) {
        x = (x - pro_mean[j]) * pro_scale[j];
        if ((p.mode & 512u) != 0u) {
            uint q = p.ob + e;
            x *= vec4(pb[q], pb[q + 1u], pb[q + 2u], pb[q + 3u]);
        }
    } else if (kind == 3u) {
        uint q = p.ob + j * p.k + e;
        x = x / (1.0 + exp(-x)) * vec4(pb[q], pb[q + 1u], pb[q + 2u], pb[q + 3u]);
    }
    return x;
}

// the q8 blocks of all t activation rows into shared memory (then a barrier)
void prologue() {
    uint tid = gl_LocalInvocationID.x;
    if ((p.mode & 7u) == 2u) {
        for (uint j = 0; j < p.t; j++) {
            uint base = p.oa + j * p.k;
            float mean = 0.0;
            if ((p.mode & 256u) != 0u) {
                float s = 0.0;
                for (uint i = tid; i < p.k; i += WG) s += pa[base + i];
                mean = wg_sum(s) / float(p.k);
            }
            float s2 = 0.0;
            for (uint i = tid; i < p.k; i += WG) {
                float x = pa[base + i] - mean;
                s2 += x * x;
            }
            float scale = inversesqrt(wg_sum(s2) / float(p.k) + p.eps);
            if (tid == 0u) {
                pro_mean[j] = mean;
                pro_scale[j] = scale;
            }
        }
        barrier();
    }
    uint nq = p.t * (p.k / 32u) * 8u;
    for (uint q0 = 0; q0 < nq; q0 += WG) {
        uint qd = q0 + tid;
        bool on = qd < nq;
        q8_store_quad(tid, on, qd / 8u, qd % 8u, on ? pro_quad(qd / 8u, qd % 8u) : vec4(0.0));
    }
    barrier();
}
#endif

uint spread4(uint h) {  // bits 0..3 of h to bit 4 of bytes 0..3
    return ((h & 1u) | ((h & 2u) << 7) | ((h & 4u) << 14) | ((h & 8u) << 21)) << 4;
}

// acc[j] += dot of block blk of the row at byte rb with block blk of activation rows t0 + j
void block_dot(uint rb, uint blk, uint nb, uint t0, uint nt, inout float acc[MAX_T]) {
    uint qw[8];
    float dw, mw = 0.0, off = 0.0;
    if (TYPE == T_Q4_0 || TYPE == T_Q8_0) {
        uint b = rb + blk * (TYPE == T_Q4_0 ? 18u : 34u), i = b >> 2;
        bool odd = (b & 2u) != 0u;
        uint w[9];
        [[unroll]] for (uint u = 0; u < (TYPE == T_Q4_0 ? 5u : 9u); u++) w[u] = Wq[i + u];
        dw = unpackHalf2x16(odd ? w[0] >> 16 : w[0]).x;
        [[unroll]] for (uint u = 0; u < (TYPE == T_Q4_0 ? 4u : 8u); u++) {
            uint q = odd ? w[u + 1u] : (w[u] >> 16) | (w[u + 1u] << 16);
            if (TYPE == T_Q4_0) {
                qw[u] = q & 0x0F0F0F0Fu;
                qw[u + 4u] = (q >> 4) & 0x0F0F0F0Fu;
            } else {
                qw[u] = q;
            }
        }
        off = TYPE == T_Q4_0 ? -8.0 : 0.0;
    } else if (TYPE == T_Q4_1) {
        uint i = (rb + blk * 20u) >> 2;
        vec2 dm = unpackHalf2x16(Wq[i]);
        dw = dm.x;
        mw = dm.y;
        [[unroll]] for (uint u = 0; u < 4u; u++) {
            uint q = Wq[i + 1u + u];
            qw[u] = q & 0x0F0F0F0Fu;
            qw[u + 4u] = (q >> 4) & 0x0F0F0F0Fu;
        }
    } else {  // Q5_0 (22-byte blocks: d, qh, qs) and Q5_1 (24 bytes: d, m, qh, qs)
        uint b = rb + blk * (TYPE == T_Q5_0 ? 22u : 24u), qh, qb;
        if (TYPE == T_Q5_0) {
            dw = rdf16(b);
            qh = rd32(b + 2u);
            qb = b + 6u;
            off = -16.0;
        } else {
            vec2 dm = unpackHalf2x16(Wq[b >> 2]);
            dw = dm.x;
            mw = dm.y;
            qh = Wq[(b >> 2) + 1u];
            qb = b + 8u;
        }
        [[unroll]] for (uint u = 0; u < 4u; u++) {
            uint q = rd32(qb + 4u * u);
            qw[u] = (q & 0x0F0F0F0Fu) | spread4(qh >> (4u * u));
            qw[u + 4u] = ((q >> 4) & 0x0F0F0F0Fu) | spread4(qh >> (16u + 4u * u));
        }
    }
    [[unroll]] for (uint j = 0; j < MAX_T; j++) {
        if (j >= nt) break;
        uint xb = (t0 + j) * nb + blk;
        uvec4 a = xq[2u * xb], c = xq[2u * xb + 1u];
        int s = dot8(qw[0], a.x) + dot8(qw[1], a.y) + dot8(qw[2], a.z) + dot8(qw[3], a.w);
        s += dot8(qw[4], c.x) + dot8(qw[5], c.y) + dot8(qw[6], c.z) + dot8(qw[7], c.w);
        vec2 sx = xs[xb];
        acc[j] += dw * sx.x * (float(s) + off * sx.y) + mw * sx.x * sx.y;
    }
}

void store(uint row, uint j, float v) {
    uint o = j * p.d_stride + row;
    if ((p.flags & 1u) != 0u) v += res[p.ores + o];
    d[p.od + o] = v;
}

#ifdef PER_ROW
void main() {
    uint row = gl_WorkGroupID.x * WG + gl_LocalInvocationID.x;
    if (row >= p.rows) return;
    uint t0 = gl_WorkGroupID.y * MAX_T, nt = min(uint(MAX_T), p.t - t0), nb = p.k / 32u;
    float acc[MAX_T];
    [[unroll]] for (uint j = 0; j < MAX_T; j++) acc[j] = 0.0;
    for (uint blk = 0; blk < nb; blk++) block_dot(row * p.row_bytes, blk, nb, t0, nt, acc);
    [[unroll]] for (uint j = 0; j < MAX_T; j++) {
        if (j >= nt) break;
        store(row, t0 + j, acc[j]);
    }
}
#else
shared float part[MAX_T][WG];

#ifdef PROLOGUE
shared float ep[MAX_T][ROWS];  // the rows' results, for an epilogue that takes them in pairs

void epilogue_pair(uint row0, uint j, float x0, float x1) {
    uint e = row0 % p.dim;
    if ((p.emode & 1u) != 0u && e < p.n_dims) {  // rope.comp's rope_at, normal mode
        uint i = e / 2u;
        float theta = float(pos[p.opos + j]) * inv_freq[i];
        if (p.has_factors != 0u) theta /= factors[p.off + i];
        float k = round(theta * 0.15915494309189535);
        theta = (theta - k * 6.28125) - k * 0.0019353071795864769;
        float c = cos(theta) * p.attn_factor, s = sin(theta) * p.attn_factor;
        float y0 = x0 * c - x1 * s, y1 = x0 * s + x1 * c;
        x0 = y0;
        x1 = y1;
    }
    uint o = p.od + j * p.d_stride + row0;
    if ((p.emode & 2u) != 0u) o = p.eo + uint(ids[p.oi + j]) * p.width + row0;
    if ((p.emode & 4u) != 0u) {
        dh[o >> 1] = packHalf2x16(vec2(x0, x1));
    } else {
        d[o] = x0;
        d[o + 1u] = x1;
    }
}
#endif

void emit(uint row, uint r, uint j, float v) {
#ifdef PROLOGUE
    if (p.emode != 0u) {
        ep[j][r] = v;
        return;
    }
#endif
    store(row, j, v);
}

// rows rg * ROWS .. rg * ROWS + ROWS - 1
void row_group(uint rg) {
    uint tid = gl_LocalInvocationID.x, sub = tid % TPR, r = tid / TPR;
    uint row = rg * ROWS + r;
    bool live = row < p.rows;
    uint nb = p.k / 32u, nt = min(p.t, uint(MAX_T));
    float acc[MAX_T];
    [[unroll]] for (uint j = 0; j < MAX_T; j++) acc[j] = 0.0;
    if (live) {
        // four blocks an iteration: their loads are in flight together
        uint rb = row * p.row_bytes, blk = sub;
        for (; blk + 3u * TPR < nb; blk += 4u * TPR) {
            block_dot(rb, blk, nb, 0u, nt, acc);
            block_dot(rb, blk + TPR, nb, 0u, nt, acc);
            block_dot(rb, blk + 2u * TPR, nb, 0u, nt, acc);
            block_dot(rb, blk + 3u * TPR, nb, 0u, nt, acc);
        }
        for (; blk < nb; blk += TPR) block_dot(rb, blk, nb, 0u, nt, acc);
    }
    bool done = false;
#ifdef USE_SUBGROUP
    if (gl_SubgroupSize >= TPR) {
        [[unroll]] for (uint j = 0; j < MAX_T; j++) {
            if (j >= nt) break;
            float v = subgroupClusteredAdd(acc[j], TPR);
            if (live && sub == 0u) emit(row, r, j, v);
        }
        done = true;
    }
#endif
    if (!done) {
        [[unroll]] for (uint j = 0; j < MAX_T; j++) {
            if (j >= nt) break;
            part[j][tid] = acc[j];
        }
        barrier();
        if (live && sub < nt) {
            float v = 0.0;
            [[unroll]] for (uint i = 0; i < TPR; i++) v += part[sub][r * TPR + i];
            emit(row, r, sub, v);
        }
        barrier();
    }
#ifdef PROLOGUE
    if (p.emode != 0u) {
        barrier();
        uint pr = tid % (ROWS / 2u), j = tid / (ROWS / 2u), row0 = rg * ROWS + 2u * pr;
        if (j < nt && row0 < p.rows) epilogue_pair(row0, j, ep[j][2u * pr], ep[j][2u * pr + 1u]);
        barrier();
    }
#endif
}

void main() {
    uint g = gl_WorkGroupID.y * p.groups_x + gl_WorkGroupID.x;
#ifdef PROLOGUE
    // the prologue's cost is paid once per workgroup: a workgroup takes every ngroups-th group
    prologue();
    uint n_rg = (p.rows + ROWS - 1u) / ROWS;
    for (uint rg = g; rg < n_rg; rg += p.ngroups) row_group(rg);
#else
    row_group(g);
#endif
}
#endif
