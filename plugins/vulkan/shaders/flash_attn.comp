#version 450
// softmax(q k^T * scale (soft-capped) + mask) v over a KV cache of f32 or f16 rows, grouped-query
// heads: one workgroup per (token, query head), keys taken WG at a time with an online softmax.
#define WG 64
#define MAX_D 256
layout(local_size_x = WG) in;
#include "common.glsl"

layout(binding = 0) readonly buffer Q { float q[]; };
layout(binding = 1) readonly buffer K { uint kc[]; };
layout(binding = 2) readonly buffer V { uint vc[]; };
layout(binding = 3) readonly buffer M { float mask[]; };
layout(binding = 4) writeonly buffer D { float d[]; };

layout(push_constant) uniform P {
    uint dk, dv, s, hq, hkv, t, oq, ok, ov, om, od, k_row, v_row;
    uint flags;  // bit 0: k is f16, bit 1: v is f16, bit 2: a mask
    float scale, softcap;
    uint groups_x;
} p;

shared float qs[MAX_D];
shared float ps[WG];

void main() {
    uint gid = group_index(p.groups_x);
    if (gid >= p.t * p.hq) return;
    uint tok = gid / p.hq, h = gid % p.hq, hk = h / (p.hq / p.hkv), tid = gl_LocalInvocationID.x;
    bool kf16 = (p.flags & 1u) != 0u, vf16 = (p.flags & 2u) != 0u, masked = (p.flags & 4u) != 0u;
    for (uint i = tid; i < p.dk; i += WG) {
        float x = q[p.oq + gid * p.dk + i];
        qs[i] = kf16 ? round_f16(x) : x;
    }
    barrier();
    const float NEG_INF = -1.0 / 0.0;
    float m = NEG_INF, l = 0.0;
    float acc[MAX_D / WG];
    for (uint r = 0; r < MAX_D / WG; r++) acc[r] = 0.0;
    for (uint c = 0; c < p.s; c += WG) {
        uint key = c + tid;
        float score = NEG_INF;
        if (key < p.s) {
            uint kb = p.ok + key * p.k_row + hk * p.dk;
            float dot_ = 0.0;
            if (kf16) {
                for (uint i = 0; i < p.dk; i += 2u) {
                    vec2 kv = unpackHalf2x16(kc[(kb + i) >> 1]);
                    dot_ += qs[i] * kv.x + qs[i + 1u] * kv.y;
                }
            } else {
                for (uint i = 0; i < p.dk; i++) dot_ += qs[i] * uintBitsToFloat(kc[kb + i]);
            }
            score = dot_ * p.scale;
            if (p.softcap != 0.0) score = safe_tanh(score / p.softcap) * p.softcap;
            if (masked) score += mask[p.om + tok * p.s + key];
        }
        float mnew = max(m, wg_max(score));
        float e = score == NEG_INF ? 0.0 : exp(score - mnew);
        if (vf16) e = round_f16(e);
        ps[tid] = e;
        float alpha = m == NEG_INF ? 0.0 : exp(m - mnew);
        l = l * alpha + wg_sum(e);  // wg_sum's barriers also publish ps
        uint n = min(uint(WG), p.s - c);
        for (uint r = 0; r < MAX_D / WG; r++) {
            uint di = tid + r * WG;
            if (di >= p.dv) break;
            float a = acc[r] * alpha;
            uint vb = p.ov + c * p.v_row + hk * p.dv + di;
            for (uint j = 0; j < n; j++) a += ps[j] * LOAD_F(vc, vb + j * p.v_row, vf16);
            acc[r] = a;
        }
        m = mnew;
        barrier();
    }
    for (uint r = 0; r < MAX_D / WG; r++) {
        uint di = tid + r * WG;
        if (di < p.dv) d[p.od + gid * p.dv + di] = acc[r] / l;
    }
}
