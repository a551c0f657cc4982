#version 450
#extension GL_EXT_control_flow_attributes : require
// y[t, row] = dot(W[row, :], x[t, :]) for a weight in its ggml blocks and up to 8 activation rows:
// one workgroup per weight row, which is read once for all of them (decode and small batches).
#define WG 64
#define MAX_T 8
layout(local_size_x = WG) in;

layout(binding = 0) readonly buffer W { uint Wq[]; };
layout(binding = 1) readonly buffer B { vec4 b4[]; };
layout(binding = 2) writeonly buffer D { float d[]; };
#include "common.glsl"
#include "quant.glsl"

layout(push_constant) uniform P {
    uint k, row_bytes, rows, t, ob4, od, d_stride, round_f16, groups_x;
} p;

void main() {
    uint row = group_index(p.groups_x);
    if (row >= p.rows) return;
    uint tid = gl_LocalInvocationID.x, k4 = p.k / 4u, rb = row * p.row_bytes;
    float acc[MAX_T];
    [[unroll]] for (uint j = 0; j < MAX_T; j++) acc[j] = 0.0;
    for (uint g = tid; g < k4; g += WG) {
        vec4 w = deq4(rb, 4u * g);
        [[unroll]] for (uint j = 0; j < MAX_T; j++) {
            if (j >= p.t) break;
            vec4 x = b4[p.ob4 + j * k4 + g];
            if (p.round_f16 != 0u) x = vec4(unpackHalf2x16(packHalf2x16(x.xy)), unpackHalf2x16(packHalf2x16(x.zw)));
            acc[j] += dot(w, x);
        }
    }
    [[unroll]] for (uint j = 0; j < MAX_T; j++) {
        if (j >= p.t) break;
        float s = wg_sum(acc[j]);
        if (tid == 0u) d[p.od + j * p.d_stride + row] = s;
    }
}
