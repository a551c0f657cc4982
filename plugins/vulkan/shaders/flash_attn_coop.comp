#version 450
#extension GL_EXT_control_flow_attributes : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_vote : require
#extension GL_KHR_shader_subgroup_clustered : require
// flash_attn.comp for a prompt, on the matrix units (VK_KHR_cooperative_matrix: CM x CM x CM f16
// products into f32), over an f16 KV cache; the same bindings, push constants and specialization
// constants, the same parts when split over the KV length (splits > 1, for attn_combine.comp).
// A workgroup of NSG subgroups of SG takes BR query rows (BR / NH tokens x the NH query heads of
// one KV head, so that each K and V row it stages serves them all) and walks the keys BC at a
// time: S = Q K^T, one CM x CM block a subgroup; the online softmax on S by TPR invocations a row,
// which keep the row's output in registers; P V, staged through shared memory and added to them.
// A block of keys every row of the tile masks (-inf: a causal prompt's later keys) is skipped.
// As in flash_attn.comp, Q is rounded to f16 for its products with the f16 keys, and P to f16 for
// its products with the f16 values; the sums are f32.
#ifndef CM
#define CM 16
#define SG 32
#define NSG 4
#define BR 32
#endif
#ifndef BC
#define BC 32  // keys a block; (BR / CM) x (BC / CM) == NSG: one S block a subgroup
#endif
#define WG (SG * NSG)
#define TPR (WG / BR)  // invocations a query row
layout(local_size_x = WG) in;
#include "common.glsl"

layout(constant_id = 0) const uint DK = 64;
layout(constant_id = 1) const uint DV = 64;
layout(constant_id = 2) const uint KF16 = 1;  // the host takes this shader for f16 caches only
layout(constant_id = 3) const uint VF16 = 1;
layout(constant_id = 4) const uint NH = 1;
// shared row strides (in elements) that keep each row a multiple of 16 bytes, as cooperative
// matrix loads and stores require, and stagger the rows across banks
const uint SQ = DK + 8u, SKV = (DK > DV ? DK : DV) + 8u, SP = BC + 8u, SO = (DV > BC ? DV : BC) + 4u;
const uint OPT = DV / TPR;  // output elements an invocation keeps (columns q, q + TPR, ...)
const uint KPT = BC / TPR;  // keys of a block an invocation scores

layout(binding = 0) readonly buffer Q { float q[]; };
layout(binding = 1) readonly buffer K { uint kc[]; };
layout(binding = 2) readonly buffer V { uint vc[]; };
layout(binding = 3) readonly buffer M { float mask[]; };
layout(binding = 4) writeonly buffer D { float d[]; };

layout(push_constant) uniform P {
    uint dk, dv, s, hq, hkv, t, oq, ok, ov, om, od, k_row, v_row;
    uint flags;  // bit 2: a mask
    float scale, softcap;
    uint groups_x, splits, chunk;
} p;

shared float16_t Qs[BR * SQ];
shared float16_t KVs[BC * SKV];  // a block's keys, then its values
shared float16_t Ps[BR * SP];
shared float So[BR * SO];  // a block's scores, then its P V
shared bool live_[2][NSG];  // by the block's parity: a skipped block has no barrier after its vote

const float NEG_INF = -1.0 / 0.0;

// BC rows of `dim` f16 cache elements from element `base` of `buf`, `stride` elements apart, into
// KVs; rows from `valid` on as zeros (a value row past the keys would meet weights of 0, and
// garbage there could be NaN). Pairs of elements a word where the rows start at even elements.
#define STAGE(buf, base, stride, dim, valid)                                                     \
    {                                                                                            \
        uint b_ = (base), s_ = (stride), n_ = (valid), w_ = (dim) / 2u;                          \
        bool even_ = (b_ & 1u) == 0u && (s_ & 1u) == 0u;                                         \
        for (uint e_ = gl_LocalInvocationID.x; e_ < BC * w_; e_ += WG) {                         \
            uint r_ = e_ / w_, c_ = 2u * (e_ % w_), i_ = b_ + r_ * s_ + c_;                      \
            vec2 x_ = vec2(0.0);                                                                 \
            if (r_ < n_)                                                                         \
                x_ = even_ ? unpackHalf2x16(buf[i_ >> 1])                                        \
                           : vec2(LOAD_F(buf, i_, true), LOAD_F(buf, i_ + 1u, true));            \
            KVs[r_ * SKV + c_] = float16_t(x_.x);                                                \
            KVs[r_ * SKV + c_ + 1u] = float16_t(x_.y);                                           \
        }                                                                                        \
    }

void main() {
    uint tid = gl_LocalInvocationID.x, sg = gl_SubgroupID;
    uint hgroups = p.hq / NH, tiles = (p.t * NH + BR - 1u) / BR;
    uint wg = group_index(p.groups_x), sp = wg % p.splits, g = wg / p.splits;
    if (g >= tiles * hgroups) return;
    uint tile = g / hgroups, h0 = (g % hgroups) * NH, hk = h0 / (p.hq / p.hkv);
    uint c0 = sp * p.chunk, c1 = min(p.s, c0 + p.chunk);
    bool masked = (p.flags & 4u) != 0u;
    // this invocation's row: token tok, head h
    uint r = tid / TPR, qc = tid % TPR;
    uint tok = tile * (BR / NH) + r / NH, h = h0 + r % NH, row = tok * p.hq + h;
    bool valid = tok < p.t;
    for (uint e = tid; e < BR * DK; e += WG) {
        uint rr = e / DK, tt = tile * (BR / NH) + rr / NH;
        float x = tt < p.t ? q[p.oq + (tt * p.hq + h0 + rr % NH) * DK + e % DK] : 0.0;
        Qs[rr * SQ + e % DK] = float16_t(x);
    }
    float o[OPT];
    [[unroll]] for (uint i = 0; i < OPT; i++) o[i] = 0.0;
    float m = NEG_INF, l = 0.0;
    uint sr = (sg % (BR / CM)) * CM, sc = (sg / (BR / CM)) * CM;  // this subgroup's S block
    uint parity = 0u;
    for (uint c = c0; c < c1; c += BC, parity ^= 1u) {
        float mk[KPT];
        bool live = false;
        [[unroll]] for (uint j = 0; j < KPT; j++) {
            uint key = c + qc + TPR * j;
            mk[j] = key < c1 && valid ? (masked ? mask[p.om + tok * p.s + key] : 0.0) : NEG_INF;
            live = live || mk[j] != NEG_INF;
        }
        bool any_ = subgroupAny(live);
        if (subgroupElect()) live_[parity][sg] = any_;
        barrier();  // also: the last block's P V read from So, its values from KVs
        any_ = false;
        [[unroll]] for (uint i = 0; i < NSG; i++) any_ = any_ || live_[parity][i];
        if (!any_) continue;
        STAGE(kc, p.ok + c * p.k_row + hk * DK, p.k_row, DK, c1 - c);
        barrier();
        coopmat<float, gl_ScopeSubgroup, CM, CM, gl_MatrixUseAccumulator> acc =
            coopmat<float, gl_ScopeSubgroup, CM, CM, gl_MatrixUseAccumulator>(0.0);
        [[unroll]] for (uint kk = 0; kk < DK; kk += CM) {
            coopmat<float16_t, gl_ScopeSubgroup, CM, CM, gl_MatrixUseA> a;
            coopmat<float16_t, gl_ScopeSubgroup, CM, CM, gl_MatrixUseB> b;
            coopMatLoad(a, Qs, sr * SQ + kk, SQ, gl_CooperativeMatrixLayoutRowMajor);
            // B is head dims x keys: the staged key rows are its columns
            coopMatLoad(b, KVs, sc * SKV + kk, SKV, gl_CooperativeMatrixLayoutColumnMajor);
            acc = coopMatMulAdd(a, b, acc);
        }
        coopMatStore(acc, So, sr * SO + sc, SO, gl_CooperativeMatrixLayoutRowMajor);
        barrier();  // the scores in So; every subgroup done with the keys
        STAGE(vc, p.ov + c * p.v_row + hk * DV, p.v_row, DV, c1 - c);
        float x[KPT], mx = NEG_INF;
        [[unroll]] for (uint j = 0; j < KPT; j++) {
            float y = So[r * SO + qc + TPR * j] * p.scale;
            if (p.softcap != 0.0) y = safe_tanh(y / p.softcap) * p.softcap;
            x[j] = mk[j] == NEG_INF ? NEG_INF : y + mk[j];
            mx = max(mx, x[j]);
        }
        float mnew = max(m, subgroupClusteredMax(mx, TPR));
        float alpha = m == NEG_INF ? 0.0 : exp(m - mnew), sum = 0.0;
        [[unroll]] for (uint j = 0; j < KPT; j++) {
            float e = x[j] == NEG_INF ? 0.0 : exp(x[j] - mnew);
            if (VF16 != 0u) e = round_f16(e);  // as the f16 operand of P V will hold it
            Ps[r * SP + qc + TPR * j] = float16_t(e);
            sum += e;
        }
        l = l * alpha + subgroupClusteredAdd(sum, TPR);
        m = mnew;
        [[unroll]] for (uint i = 0; i < OPT; i++) o[i] *= alpha;
        barrier();  // P in Ps, the values in KVs, every row done reading its scores
        for (uint blk = sg; blk < (BR / CM) * (DV / CM); blk += NSG) {
            uint br = (blk % (BR / CM)) * CM, bd = (blk / (BR / CM)) * CM;
            coopmat<float, gl_ScopeSubgroup, CM, CM, gl_MatrixUseAccumulator> pv =
                coopmat<float, gl_ScopeSubgroup, CM, CM, gl_MatrixUseAccumulator>(0.0);
            [[unroll]] for (uint kk = 0; kk < BC; kk += CM) {
                coopmat<float16_t, gl_ScopeSubgroup, CM, CM, gl_MatrixUseA> a;
                coopmat<float16_t, gl_ScopeSubgroup, CM, CM, gl_MatrixUseB> b;
                coopMatLoad(a, Ps, br * SP + kk, SP, gl_CooperativeMatrixLayoutRowMajor);
                coopMatLoad(b, KVs, kk * SKV + bd, SKV, gl_CooperativeMatrixLayoutRowMajor);
                pv = coopMatMulAdd(a, b, pv);
            }
            coopMatStore(pv, So, br * SO + bd, SO, gl_CooperativeMatrixLayoutRowMajor);
        }
        barrier();
        [[unroll]] for (uint i = 0; i < OPT; i++) o[i] += So[r * SO + qc + TPR * i];
    }
    if (!valid) return;
    if (p.splits > 1u) {
        uint base = p.od + (row * p.splits + sp) * (DV + 2u);
        [[unroll]] for (uint i = 0; i < OPT; i++) d[base + qc + TPR * i] = o[i];
        if (qc == 0u) {
            d[base + DV] = m;
            d[base + DV + 1u] = l;
        }
    } else {
        [[unroll]] for (uint i = 0; i < OPT; i++) d[p.od + row * DV + qc + TPR * i] = o[i] / l;
    }
}
