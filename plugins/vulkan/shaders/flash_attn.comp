#version 450
#extension GL_EXT_control_flow_attributes : require
// softmax(q k^T * scale (soft-capped) + mask) v over a KV cache of f32 or f16 rows, grouped-query
// heads: one workgroup per (token, query head), keys taken WG at a time with an online softmax.
// Head sizes and cache types are specialization constants, so every loop over a row has a fixed
// trip count and is unrolled: a thread's loads are all in flight at once. Scores: one thread per
// key. Values: a thread owns two output elements of one of LANES key lanes (keys j, j + LANES,
// ...), reading V rows a word per thread; the lanes are summed at the end.
// Split over the KV length (splits > 1): workgroup (token, head, split) takes keys
// [split * chunk, (split + 1) * chunk) and writes its unnormalized sums, running max and sum of
// weights (DV + 2 floats) for attn_combine.comp. Masked keys (-inf) read no K row, and V rows are
// read up to the last key of nonzero weight only (a decode graph sees 256 cells, mostly masked).
#define WG 128
layout(local_size_x = WG) in;
#include "common.glsl"

layout(constant_id = 0) const uint DK = 64;
layout(constant_id = 1) const uint DV = 64;
layout(constant_id = 2) const uint KF16 = 1;
layout(constant_id = 3) const uint VF16 = 1;
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

shared float qs[DK];
shared float ps[WG];
shared vec2 accs[WG];

const float NEG_INF = -1.0 / 0.0;
bool has2;  // whether this thread's pair has a second element (DV odd)

vec2 v_pair(uint e) {  // V elements e and e + 1
    if (VF16 != 0u && (e & 1u) == 0u) return unpackHalf2x16(vc[e >> 1]);
    return vec2(LOAD_F(vc, e, VF16 != 0u), has2 ? LOAD_F(vc, e + 1u, VF16 != 0u) : 0.0);
}

void main() {
    uint wg_flat = group_index(p.groups_x), gid = wg_flat / p.splits, sp = wg_flat % p.splits;
    if (gid >= p.t * p.hq) return;
    uint c0 = sp * p.chunk, c1 = min(p.s, c0 + p.chunk);
    uint tok = gid / p.hq, h = gid % p.hq, hk = h / (p.hq / p.hkv), tid = gl_LocalInvocationID.x;
    bool masked = (p.flags & 4u) != 0u;
    for (uint i = tid; i < DK; i += WG) {
        float x = q[p.oq + gid * DK + i];
        qs[i] = KF16 != 0u ? round_f16(x) : x;
    }
    barrier();
    uint pair = tid % NP, lane = tid / NP;
    has2 = 2u * pair + 1u < DV;
    float m = NEG_INF, l = 0.0;
    vec2 acc = vec2(0.0);
    for (uint c = c0; c < c1; c += WG) {
        uint key = c + tid;
        float score = NEG_INF;
        // a masked key (-inf) costs no K row read
        float mk = key < c1 && masked ? mask[p.om + tok * p.s + key] : 0.0;
        if (key < c1 && mk != NEG_INF) {
            uint kb = p.ok + key * p.k_row + hk * DK;
            float dot_ = 0.0;
            if (KF16 != 0u && (kb & 1u) == 0u) {
                [[unroll]] for (uint i = 0; i < DK / 2u; i++) {
                    vec2 kv = unpackHalf2x16(kc[(kb >> 1) + i]);
                    dot_ += qs[2u * i] * kv.x + qs[2u * i + 1u] * kv.y;
                }
                if ((DK & 1u) != 0u) dot_ += qs[DK - 1u] * LOAD_F(kc, kb + DK - 1u, true);
            } else {
                [[unroll]] for (uint i = 0; i < DK; i++) dot_ += qs[i] * LOAD_F(kc, kb + i, KF16 != 0u);
            }
            score = dot_ * p.scale;
            if (p.softcap != 0.0) score = safe_tanh(score / p.softcap) * p.softcap;
            score += mk;
        }
        float mnew = max(m, wg_max(score));  // its barriers also end the last chunk's reads of ps
        if (mnew == NEG_INF) continue;  // every key so far masked
        float e = score == NEG_INF ? 0.0 : exp(score - mnew);
        if (VF16 != 0u) e = round_f16(e);
        ps[tid] = e;
        float alpha = m == NEG_INF ? 0.0 : exp(m - mnew);
        l = l * alpha + wg_sum(e);  // wg_sum's barriers also publish ps
        m = mnew;
        acc *= alpha;
        // V rows up to the last key of nonzero weight (a masked tail of the cache is not read)
        uint n = min(min(uint(WG), c1 - c), uint(wg_max(e > 0.0 ? float(tid + 1u) : 0.0)));
        if (lane < LANES) {
            uint vb = p.ov + c * p.v_row + hk * DV + 2u * pair;
            uint j = lane;
            for (; j + 3u * LANES < n; j += 4u * LANES) {
                vec2 v0 = v_pair(vb + j * p.v_row);
                vec2 v1 = v_pair(vb + (j + LANES) * p.v_row);
                vec2 v2 = v_pair(vb + (j + 2u * LANES) * p.v_row);
                vec2 v3 = v_pair(vb + (j + 3u * LANES) * p.v_row);
                acc += ps[j] * v0 + ps[j + LANES] * v1 + ps[j + 2u * LANES] * v2
                     + ps[j + 3u * LANES] * v3;
            }
            for (; j < n; j += LANES) acc += ps[j] * v_pair(vb + j * p.v_row);
        }
    }
    accs[tid] = acc;
    barrier();
    if (lane == 0u && p.splits > 1u) {
        vec2 sum = acc;
        for (uint r = 1u; r < LANES; r++) sum += accs[tid + r * NP];
        uint o = p.od + wg_flat * (DV + 2u);
        d[o + 2u * pair] = sum.x;
        if (has2) d[o + 2u * pair + 1u] = sum.y;
        if (pair == 0u) {
            d[o + DV] = m;
            d[o + DV + 1u] = l;
        }
    } else if (lane == 0u) {
        vec2 sum = acc;
        for (uint r = 1u; r < LANES; r++) sum += accs[tid + r * NP];
        d[p.od + gid * DV + 2u * pair] = sum.x / l;
        if (has2) d[p.od + gid * DV + 2u * pair + 1u] = sum.y / l;
    }
}
