#version 450
// rms_norm (mode 0) and norm (mode 1) of contiguous rows: one workgroup per row. Mode bit 1: the
// result is multiplied by the f32 vector w (the norm weight that follows in the graph, fused).
// Mode bit 2 (rows a multiple of 32 long): the result also goes to q8 blocks for the integer
// mat-vec that reads it (q8.glsl), eight invocations to a block (through subgroup shuffles with
// USE_SUBGROUP). Rows a multiple of 4 long are read a quad an invocation, four quads in flight.
#extension GL_EXT_control_flow_attributes : require
#ifdef USE_SUBGROUP
#extension GL_KHR_shader_subgroup_shuffle : require
#define Q8_SHUFFLE
#endif
#define WG 256
layout(local_size_x = WG) in;
#include "common.glsl"

layout(binding = 0) readonly buffer A { float a[]; };
layout(binding = 1) writeonly buffer D { float d[]; };
layout(binding = 2) readonly buffer W { float w[]; };
layout(binding = 0) readonly buffer A4 { vec4 a4[]; };  // the same, 16 bytes an access
layout(binding = 1) writeonly buffer D4 { vec4 d4[]; };
layout(binding = 2) readonly buffer W4 { vec4 w4[]; };
layout(binding = 3) writeonly buffer Q { uvec4 q8q[]; };
layout(binding = 4) writeonly buffer S { vec2 q8s[]; };
#define Q8_QUADS
#include "q8.glsl"

layout(push_constant) uniform P {
    uint n, rows, oa, od, mode;
    float eps;
    uint groups_x, ow;
} p;

// a[o..o + 3], w[o..o + 3] (o = p.oa, p.ow modulo 4): one 16-byte load where aligned
vec4 lda(uint o) {
    return (p.oa & 3u) == 0u ? a4[o >> 2] : vec4(a[o], a[o + 1u], a[o + 2u], a[o + 3u]);
}
vec4 ldw(uint o) {
    return (p.ow & 3u) == 0u ? w4[o >> 2] : vec4(w[o], w[o + 1u], w[o + 2u], w[o + 3u]);
}

// this invocation's share of the sum over the row at base of x - mean (squared with `squares`)
float row_sum(uint base, float mean, bool squares) {
    uint t = gl_LocalInvocationID.x;
    float s = 0.0;
    if (p.n % 4u != 0u) {
        for (uint i = t; i < p.n; i += WG) {
            float x = a[base + i] - mean;
            s += squares ? x * x : x;
        }
        return s;
    }
    uint nq = p.n / 4u;
    vec4 acc = vec4(0.0);
    for (uint q0 = t; q0 < nq; q0 += 4u * WG) {
        vec4 x[4];
        [[unroll]] for (uint u = 0; u < 4u; u++) {
            x[u] = lda(base + 4u * min(q0 + u * WG, nq - 1u));
        }
        [[unroll]] for (uint u = 0; u < 4u; u++) {
            if (q0 + u * WG < nq) {
                vec4 y = x[u] - mean;
                acc += squares ? y * y : y;
            }
        }
    }
    return (acc.x + acc.y) + (acc.z + acc.w);
}

void main() {
    uint row = group_index(p.groups_x);
    if (row >= p.rows) return;
    uint t = gl_LocalInvocationID.x, base = p.oa + row * p.n;
    float mean = 0.0;
    if ((p.mode & 1u) != 0u) mean = wg_sum(row_sum(base, 0.0, false)) / float(p.n);
    float scale = inversesqrt(wg_sum(row_sum(base, mean, true)) / float(p.n) + p.eps);
    bool weighted = (p.mode & 2u) != 0u;
    if ((p.mode & 4u) != 0u) {  // eight invocations to a q8 block, four values each
        uint nq = p.n / 4u, nb = p.n / 32u;
        for (uint q0 = 0; q0 < nq; q0 += 4u * WG) {
            vec4 x[4];
            [[unroll]] for (uint u = 0; u < 4u; u++) {
                uint qd = q0 + u * WG + t, e = 4u * min(qd, nq - 1u);
                vec4 y = (lda(base + e) - mean) * scale;
                x[u] = weighted ? y * ldw(p.ow + e) : y;
            }
            [[unroll]] for (uint u = 0; u < 4u; u++) {
                uint qd = q0 + u * WG + t;
                bool on = qd < nq;
                if (on) {
                    uint o = p.od + row * p.n + 4u * qd;
                    if ((p.od & 3u) == 0u) {
                        d4[o >> 2] = x[u];
                    } else {
                        d[o] = x[u].x;
                        d[o + 1u] = x[u].y;
                        d[o + 2u] = x[u].z;
                        d[o + 3u] = x[u].w;
                    }
                }
                q8_quad(t, on, row * nb + qd / 8u, qd % 8u, on ? x[u] : vec4(0.0));
            }
        }
        return;
    }
    for (uint i = t; i < p.n; i += WG) {
        float y = (a[base + i] - mean) * scale;
        d[p.od + row * p.n + i] = weighted ? y * w[p.ow + i] : y;
    }
}
