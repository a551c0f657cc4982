#version 450
#extension GL_EXT_control_flow_attributes : require
// softmax(q k^T * scale (soft-capped) + mask) v over a KV cache of f32 or f16 rows, grouped-query
// heads: one workgroup per (token, NH query heads of one KV head), keys taken WG at a time with an
// online softmax.
// Head sizes and cache types are specialization constants, so every loop over a row has a fixed
// trip count and is unrolled: a thread's loads are all in flight at once. Scores: one thread per
// key. Values: a thread owns two output elements of one of LANES key lanes (keys j, j + LANES,
// ...), reading V rows a word per thread; the lanes are summed at the end.
// Split over the KV length (splits > 1): workgroup (token, heads, split) takes keys
// [split * chunk, (split + 1) * chunk) and writes each head's unnormalized sums, running max and
// sum of weights (DV + 2 floats) for attn_combine.comp. Masked keys (-inf) read no K row, and V
// rows are read up to the last key of nonzero weight only (a decode graph sees 256 cells, mostly
// masked).
#define WG 128
layout(local_size_x = WG) in;
#include "common.glsl"

layout(constant_id = 0) const uint DK = 64;
layout(constant_id = 1) const uint DV = 64;
layout(constant_id = 2) const uint KF16 = 1;
layout(constant_id = 3) const uint VF16 = 1;
// query heads a workgroup takes (1, 2 or 4), all of one KV head: each K and V row it reads serves
// all of them
layout(constant_id = 4) const uint NH = 1;
const uint NP = (DV + 1u) / 2u;               // output element pairs (NP <= WG)
const uint LANES = NP >= WG ? 1u : WG / NP;   // key lanes of the value pass

layout(binding = 0) readonly buffer Q { float q[]; };
layout(binding = 1) readonly buffer K { uint kc[]; };
layout(binding = 2) readonly buffer V { uint vc[]; };
layout(binding = 3) readonly buffer M { float mask[]; };
layout(binding = 4) writeonly buffer D { float d[]; };

layout(push_constant) uniform P {
    uint dk, dv, s, hq, hkv, t, oq, ok, ov, om, od, k_row, v_row;
    uint flags;  // bit 2: a mask (bits 0 and 1, the cache types, are KF16 and VF16 here)
    float scale, softcap;
    uint groups_x, splits, chunk;
} p;

shared float qs[NH * DK];
shared float ps[NH * WG];
shared vec2 accs[WG];
shared vec4 red4_[WG];

const float NEG_INF = -1.0 / 0.0;
bool has2;  // whether this thread's pair has a second element (DV odd)

// wg_max and wg_sum of four values at once (one per head), each summed in their order
vec4 wg_max4(vec4 v) {
#ifdef USE_SUBGROUP
    v = subgroupMax(v);
    if (subgroupElect()) red4_[gl_SubgroupID] = v;
    barrier();
    v = red4_[0];
    for (uint i = 1; i < gl_NumSubgroups; i++) v = max(v, red4_[i]);
    barrier();
    return v;
#else
    uint t = gl_LocalInvocationID.x;
    red4_[t] = v;
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (t < s) red4_[t] = max(red4_[t], red4_[t + s]);
        barrier();
    }
    v = red4_[0];
    barrier();
    return v;
#endif
}

vec4 wg_sum4(vec4 v) {
#ifdef USE_SUBGROUP
    v = subgroupAdd(v);
    if (subgroupElect()) red4_[gl_SubgroupID] = v;
    barrier();
    v = vec4(0.0);
    for (uint i = 0; i < gl_NumSubgroups; i++) v += red4_[i];
    barrier();
    return v;
#else
    uint t = gl_LocalInvocationID.x;
    red4_[t] = v;
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (t < s) red4_[t] += red4_[t + s];
        barrier();
    }
    v = red4_[0];
    barrier();
    return v;
#endif
}

vec2 v_pair(uint e) {  // V elements e and e + 1
    if (VF16 != 0u && (e & 1u) == 0u) return unpackHalf2x16(vc[e >> 1]);
    return vec2(LOAD_F(vc, e, VF16 != 0u), has2 ? LOAD_F(vc, e + 1u, VF16 != 0u) : 0.0);
}

void main() {
    uint wg_flat = group_index(p.groups_x), gid = wg_flat / p.splits, sp = wg_flat % p.splits;
    uint groups = p.hq / NH;  // head groups of a token
    if (gid >= p.t * groups) return;
    uint c0 = sp * p.chunk, c1 = min(p.s, c0 + p.chunk);
    uint tok = gid / groups, h0 = (gid % groups) * NH, hk = h0 / (p.hq / p.hkv);
    uint tid = gl_LocalInvocationID.x, row0 = tok * p.hq + h0;  // the first head's output row
    bool masked = (p.flags & 4u) != 0u;
    for (uint i = tid; i < NH * DK; i += WG) {
        float x = q[p.oq + row0 * DK + i];
        qs[i] = KF16 != 0u ? round_f16(x) : x;
    }
    barrier();
    uint pair = tid % NP, lane = tid / NP;
    has2 = 2u * pair + 1u < DV;
    vec4 m = vec4(NEG_INF), l = vec4(0.0);
    vec2 acc[4] = vec2[4](vec2(0.0), vec2(0.0), vec2(0.0), vec2(0.0));
    for (uint c = c0; c < c1; c += WG) {
        uint key = c + tid;
        vec4 score = vec4(NEG_INF);
        // a masked key (-inf) costs no K row read
        float mk = key < c1 && masked ? mask[p.om + tok * p.s + key] : 0.0;
        if (key < c1 && mk != NEG_INF) {
            uint kb = p.ok + key * p.k_row + hk * DK;
            float dot_[4] = float[4](0.0, 0.0, 0.0, 0.0);
            if (KF16 != 0u && (kb & 1u) == 0u) {
                [[unroll]] for (uint i = 0; i < DK / 2u; i++) {
                    vec2 kv = unpackHalf2x16(kc[(kb >> 1) + i]);
                    [[unroll]] for (uint hh = 0; hh < NH; hh++)
                        dot_[hh] += qs[hh * DK + 2u * i] * kv.x + qs[hh * DK + 2u * i + 1u] * kv.y;
                }
                if ((DK & 1u) != 0u) {
                    float kl = LOAD_F(kc, kb + DK - 1u, true);
                    [[unroll]] for (uint hh = 0; hh < NH; hh++)
                        dot_[hh] += qs[hh * DK + DK - 1u] * kl;
                }
            } else {
                [[unroll]] for (uint i = 0; i < DK; i++) {
                    float kv = LOAD_F(kc, kb + i, KF16 != 0u);
                    [[unroll]] for (uint hh = 0; hh < NH; hh++) dot_[hh] += qs[hh * DK + i] * kv;
                }
            }
            [[unroll]] for (uint hh = 0; hh < NH; hh++) {
                float x = dot_[hh] * p.scale;
                if (p.softcap != 0.0) x = safe_tanh(x / p.softcap) * p.softcap;
                score[hh] = x + mk;
            }
        }
        vec4 mnew = max(m, wg_max4(score));  // its barriers also end the last chunk's reads of ps
        if (mnew.x == NEG_INF) continue;  // every key so far masked (the heads share the mask)
        vec4 e = vec4(0.0), alpha = vec4(0.0);
        [[unroll]] for (uint hh = 0; hh < NH; hh++) {
            e[hh] = score[hh] == NEG_INF ? 0.0 : exp(score[hh] - mnew[hh]);
            if (VF16 != 0u) e[hh] = round_f16(e[hh]);
            ps[hh * WG + tid] = e[hh];
            alpha[hh] = m[hh] == NEG_INF ? 0.0 : exp(m[hh] - mnew[hh]);
            acc[hh] *= alpha[hh];
        }
        l = l * alpha + wg_sum4(e);  // wg_sum4's barriers also publish ps
        m = mnew;
        // V rows up to the last key of nonzero weight (a masked tail of the cache is not read)
        bool live = any(greaterThan(e, vec4(0.0)));
        uint n = min(min(uint(WG), c1 - c), uint(wg_max(live ? float(tid + 1u) : 0.0)));
        if (lane < LANES) {
            uint vb = p.ov + c * p.v_row + hk * DV + 2u * pair;
            uint j = lane;
            for (; j + 3u * LANES < n; j += 4u * LANES) {
                vec2 v0 = v_pair(vb + j * p.v_row);
                vec2 v1 = v_pair(vb + (j + LANES) * p.v_row);
                vec2 v2 = v_pair(vb + (j + 2u * LANES) * p.v_row);
                vec2 v3 = v_pair(vb + (j + 3u * LANES) * p.v_row);
                [[unroll]] for (uint hh = 0; hh < NH; hh++) {
                    uint o = hh * WG + j;
                    acc[hh] += ps[o] * v0 + ps[o + LANES] * v1 + ps[o + 2u * LANES] * v2
                             + ps[o + 3u * LANES] * v3;
                }
            }
            for (; j < n; j += LANES) {
                vec2 v0 = v_pair(vb + j * p.v_row);
                [[unroll]] for (uint hh = 0; hh < NH; hh++) acc[hh] += ps[hh * WG + j] * v0;
            }
        }
    }
    [[unroll]] for (uint hh = 0; hh < NH; hh++) {
        accs[tid] = acc[hh];
        barrier();
        if (lane == 0u) {
            vec2 sum = acc[hh];
            for (uint r = 1u; r < LANES; r++) sum += accs[tid + r * NP];
            uint row = row0 + hh;
            if (p.splits > 1u) {
                uint o = p.od + (row * p.splits + sp) * (DV + 2u);
                d[o + 2u * pair] = sum.x;
                if (has2) d[o + 2u * pair + 1u] = sum.y;
                if (pair == 0u) {
                    d[o + DV] = m[hh];
                    d[o + DV + 1u] = l[hh];
                }
            } else {
                d[p.od + row * DV + 2u * pair] = sum.x / l[hh];
                if (has2) d[p.od + row * DV + 2u * pair + 1u] = sum.y / l[hh];
            }
        }
        barrier();
    }
}
