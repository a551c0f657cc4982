#version 450
#extension GL_EXT_control_flow_attributes : require
// y[t, row] = dot(W[row, :], x[t, :]) with one invocation per weight row and up to 8 activation
// rows per dispatch row (gl_WorkGroupID.y picks the block of 8): no shared memory and no barrier.
// For devices that run invocations as SIMD lanes of a CPU (lavapipe), where a workgroup barrier
// costs far more than the arithmetic around it.
#define WG 64
#define MAX_T 8
layout(local_size_x = WG) in;

layout(binding = 0) readonly buffer W { uint Wq[]; };
layout(binding = 1) readonly buffer B { vec4 b4[]; };
layout(binding = 2) writeonly buffer D { float d[]; };
#include "quant.glsl"

layout(push_constant) uniform P {
    uint k, row_bytes, rows, t, ob4, od, d_stride, round_f16, groups_x;
} p;

vec4 xload(uint i) {
    vec4 x = b4[i];
    if (p.round_f16 != 0u) x = vec4(unpackHalf2x16(packHalf2x16(x.xy)), unpackHalf2x16(packHalf2x16(x.zw)));
    return x;
}

#include "blockdot.glsl"

void main() {
    uint row = gl_WorkGroupID.x * WG + gl_LocalInvocationID.x;
    if (row >= p.rows) return;
    uint t0 = gl_WorkGroupID.y * MAX_T, nt = min(uint(MAX_T), p.t - t0);
    uint k4 = p.k / 4u, rb = row * p.row_bytes, xb = p.ob4 + t0 * k4;
    float acc[MAX_T];
    [[unroll]] for (uint j = 0; j < MAX_T; j++) acc[j] = 0.0;
    if (p.k % 32u == 0u) {
        for (uint blk = 0; blk < p.k / 32u; blk++) block_dot(rb, blk, xb, k4, nt, acc);
    } else {
        for (uint g = 0; g < k4; g++) {
            vec4 w = deq4(rb, 4u * g);
            [[unroll]] for (uint j = 0; j < MAX_T; j++) {
                if (j >= nt) break;
                acc[j] += dot(w, xload(xb + j * k4 + g));
            }
        }
    }
    [[unroll]] for (uint j = 0; j < MAX_T; j++) {
        if (j >= nt) break;
        d[p.od + (t0 + j) * p.d_stride + row] = acc[j];
    }
}
