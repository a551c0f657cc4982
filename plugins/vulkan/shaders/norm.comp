#version 450
// rms_norm (mode 0) and norm (mode 1) of contiguous rows: one workgroup per row. Mode bit 1: the
// result is multiplied by the f32 vector w (the norm weight that follows in the graph, fused).
// Mode bit 2 (rows a multiple of 32 long): the result also goes to q8 blocks for the integer
// mat-vec that reads it (q8.glsl), eight invocations to a block.
#extension GL_EXT_control_flow_attributes : require
#define WG 256
layout(local_size_x = WG) in;
#include "common.glsl"

layout(binding = 0) readonly buffer A { float a[]; };
layout(binding = 1) writeonly buffer D { float d[]; };
layout(binding = 2) readonly buffer W { float w[]; };
layout(binding = 3) writeonly buffer Q { uvec4 q8q[]; };
layout(binding = 4) writeonly buffer S { vec2 q8s[]; };
#define Q8_QUADS
#include "q8.glsl"

layout(push_constant) uniform P {
    uint n, rows, oa, od, mode;
    float eps;
    uint groups_x, ow;
} p;

void main() {
    uint row = group_index(p.groups_x);
    if (row >= p.rows) return;
    uint t = gl_LocalInvocationID.x, base = p.oa + row * p.n;
    float mean = 0.0;
    if ((p.mode & 1u) != 0u) {
        float s = 0.0;
        for (uint i = t; i < p.n; i += WG) s += a[base + i];
        mean = wg_sum(s) / float(p.n);
    }
    float s2 = 0.0;
    for (uint i = t; i < p.n; i += WG) {
        float x = a[base + i] - mean;
        s2 += x * x;
    }
    float scale = inversesqrt(wg_sum(s2) / float(p.n) + p.eps);
    bool weighted = (p.mode & 2u) != 0u;
    if ((p.mode & 4u) != 0u) {  // eight invocations to a q8 block, four values each
        uint nq = p.n / 4u, nb = p.n / 32u;
        for (uint q0 = 0; q0 < nq; q0 += WG) {
            uint qd = q0 + t;
            bool on = qd < nq;
            vec4 x = vec4(0.0);
            if (on) {
                [[unroll]] for (uint i = 0; i < 4u; i++) {
                    uint e = 4u * qd + i;
                    float y = (a[base + e] - mean) * scale;
                    y = weighted ? y * w[p.ow + e] : y;
                    d[p.od + row * p.n + e] = y;
                    x[i] = y;
                }
            }
            q8_store_quad(t, on, row * nb + qd / 8u, qd % 8u, x);
        }
        return;
    }
    for (uint i = t; i < p.n; i += WG) {
        float y = (a[base + i] - mean) * scale;
        d[p.od + row * p.n + i] = weighted ? y * w[p.ow + i] : y;
    }
}
