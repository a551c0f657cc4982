#version 450
// The parts of attention split over the KV length (flash_attn.comp, splits > 1) merged: each part
// is DV unnormalized sums, its running max m and its sum of weights l; out = sum_i acc_i e^(m_i - M)
// / sum_i l_i e^(m_i - M), M the largest m. One invocation per output element.
#define WG 256
layout(local_size_x = WG) in;

layout(binding = 0) readonly buffer A { float part[]; };
layout(binding = 1) writeonly buffer D { float d[]; };

layout(push_constant) uniform P { uint dv, splits, rows, op, od, groups_x; } p;

void main() {
    uint idx = (gl_WorkGroupID.y * p.groups_x + gl_WorkGroupID.x) * WG + gl_LocalInvocationID.x;
    if (idx >= p.rows * p.dv) return;
    uint row = idx / p.dv, e = idx % p.dv, rec = p.dv + 2u, base = p.op + row * p.splits * rec;
    const float NEG_INF = -1.0 / 0.0;
    float mx = NEG_INF;
    for (uint i = 0; i < p.splits; i++) mx = max(mx, part[base + i * rec + p.dv]);
    float l = 0.0, acc = 0.0;
    for (uint i = 0; i < p.splits; i++) {
        float m = part[base + i * rec + p.dv];
        float w = m == NEG_INF ? 0.0 : exp(m - mx);
        l += part[base + i * rec + p.dv + 1u] * w;
        acc += part[base + i * rec + e] * w;
    }
    d[p.od + idx] = acc / l;
}
