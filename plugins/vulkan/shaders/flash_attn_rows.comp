#version 450
// flash_attn.comp's result with one invocation per (token, query head), each walking every key
// with an online softmax and the output row in registers: no shared memory and no barrier, for
// devices that run invocations as SIMD lanes of a CPU (lavapipe).
#define WG 16
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

void main() {
    uint gid = group_index(p.groups_x) * WG + gl_LocalInvocationID.x;
    if (gid >= p.t * p.hq) return;
    uint tok = gid / p.hq, h = gid % p.hq, hk = h / (p.hq / p.hkv);
    bool kf16 = (p.flags & 1u) != 0u, vf16 = (p.flags & 2u) != 0u, masked = (p.flags & 4u) != 0u;
    float qv[MAX_D], acc[MAX_D];
    for (uint i = 0; i < p.dk; i++) {
        float x = q[p.oq + gid * p.dk + i];
        qv[i] = kf16 ? round_f16(x) : x;
    }
    for (uint i = 0; i < p.dv; i++) acc[i] = 0.0;
    const float NEG_INF = -1.0 / 0.0;
    float m = NEG_INF, l = 0.0;
    for (uint key = 0; key < p.s; key++) {
        float score = masked ? mask[p.om + tok * p.s + key] : 0.0;
        if (score == NEG_INF) continue;
        uint kb = p.ok + key * p.k_row + hk * p.dk;
        float dot_ = 0.0;
        if (kf16) {
            for (uint i = 0; i < p.dk; i += 2u) {
                vec2 kv = unpackHalf2x16(kc[(kb + i) >> 1]);
                dot_ += qv[i] * kv.x + qv[i + 1u] * kv.y;
            }
        } else {
            for (uint i = 0; i < p.dk; i++) dot_ += qv[i] * uintBitsToFloat(kc[kb + i]);
        }
        float sc = dot_ * p.scale;
        if (p.softcap != 0.0) sc = safe_tanh(sc / p.softcap) * p.softcap;
        score += sc;
        float mnew = max(m, score);
        float alpha = exp(m - mnew);  // 0 while m is -inf
        float e = exp(score - mnew);
        if (vf16) e = round_f16(e);
        l = l * alpha + e;
        uint vb = p.ov + key * p.v_row + hk * p.dv;
        for (uint i = 0; i < p.dv; i++) acc[i] = acc[i] * alpha + e * LOAD_F(vc, vb + i, vf16);
        m = mnew;
    }
    for (uint i = 0; i < p.dv; i++) d[p.od + gid * p.dv + i] = acc[i] / l;
}
