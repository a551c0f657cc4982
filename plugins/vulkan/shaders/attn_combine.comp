#version 450
#extension GL_EXT_control_flow_attributes : require
// The parts of attention split over the KV length (flash_attn.comp, splits > 1) merged: each part
// is DV unnormalized sums, its running max m and its sum of weights l; out = sum_i acc_i e^(m_i - M)
// / sum_i l_i e^(m_i - M), M the largest m. One invocation per output element; with q8 set (DV a
// multiple of 32), one per four elements, which also go to q8 blocks (eight invocations to a
// block) for the integer mat-vec reading them (q8.glsl).
#define WG 256
layout(local_size_x = WG) in;

layout(binding = 0) readonly buffer A { float part[]; };
layout(binding = 1) writeonly buffer D { float d[]; };
layout(binding = 2) writeonly buffer Q { uvec4 q8q[]; };
layout(binding = 3) writeonly buffer S { vec2 q8s[]; };
#define Q8_QUADS
#include "q8.glsl"

layout(push_constant) uniform P { uint dv, splits, rows, op, od, groups_x, q8; } p;

const float NEG_INF = -1.0 / 0.0;

void main() {
    uint tid = gl_LocalInvocationID.x;
    uint idx = (gl_WorkGroupID.y * p.groups_x + gl_WorkGroupID.x) * WG + tid;
    uint width = p.q8 != 0u ? 4u : 1u, per_row = p.dv / width;
    bool on = idx < p.rows * per_row;
    uint row = on ? idx / per_row : 0u, e0 = (idx % per_row) * width, rec = p.dv + 2u;
    uint base = p.op + row * p.splits * rec;
    float mx = NEG_INF;
    for (uint i = 0; i < p.splits; i++) mx = max(mx, part[base + i * rec + p.dv]);
    float l = 0.0;
    for (uint i = 0; i < p.splits; i++) {
        float m = part[base + i * rec + p.dv];
        l += part[base + i * rec + p.dv + 1u] * (m == NEG_INF ? 0.0 : exp(m - mx));
    }
    if (p.q8 == 0u) {
        if (!on) return;
        float acc = 0.0;
        for (uint i = 0; i < p.splits; i++) {
            float m = part[base + i * rec + p.dv];
            acc += part[base + i * rec + e0] * (m == NEG_INF ? 0.0 : exp(m - mx));
        }
        d[p.od + idx] = acc / l;
        return;
    }
    // q8: four elements an invocation, eight invocations to a q8 block
    vec4 x = vec4(0.0);
    for (uint i = 0; i < p.splits; i++) {
        float m = part[base + i * rec + p.dv];
        float w = m == NEG_INF ? 0.0 : exp(m - mx);
        uint o = base + i * rec + e0;
        x += vec4(part[o], part[o + 1u], part[o + 2u], part[o + 3u]) * w;
    }
    x /= l;
    if (on) {
        uint o = p.od + row * p.dv + e0;
        d[o] = x.x;
        d[o + 1u] = x.y;
        d[o + 2u] = x.z;
        d[o + 3u] = x.w;
    }
    q8_store_quad(tid, on, idx / 8u, idx % 8u, x);
}
