#version 450
#extension GL_EXT_control_flow_attributes : require
// y[t, row] = dot(W[row, :], x[t, :]) for a weight in its ggml blocks and up to 8 activation rows
// (decode and small batches): ROWS weight rows per workgroup, TPR threads per row. When the row
// length is a multiple of 32, a thread takes whole blocks of 32 weights (blocks tpr, tpr + TPR,
// ...): Q4_0, Q4_1 and Q8_0 blocks are read as a few whole words and unpacked in registers, other
// types through deq4. Each weight is read once for all activation rows.
#define WG 128
#define TPR 32
#define ROWS (WG / TPR)
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

shared float part[MAX_T][WG];

vec4 xload(uint i) {
    vec4 x = b4[i];
    if (p.round_f16 != 0u) x = vec4(unpackHalf2x16(packHalf2x16(x.xy)), unpackHalf2x16(packHalf2x16(x.zw)));
    return x;
}

#include "blockdot.glsl"

void main() {
    uint tid = gl_LocalInvocationID.x, sub = tid % TPR, r = tid / TPR;
    uint row = group_index(p.groups_x) * ROWS + r;
    bool live = row < p.rows;
    uint k4 = p.k / 4u, rb = row * p.row_bytes;
    float acc[MAX_T];
    [[unroll]] for (uint j = 0; j < MAX_T; j++) acc[j] = 0.0;
    if (live && p.k % 32u == 0u) {
        uint nb = p.k / 32u;
        for (uint blk = sub; blk < nb; blk += TPR) {
            block_dot(rb, blk, p.ob4, k4, p.t, acc);
        }
    } else if (live) {
        for (uint g = sub; g < k4; g += TPR) {
            vec4 w = deq4(rb, 4u * g);
            [[unroll]] for (uint j = 0; j < MAX_T; j++) {
                if (j >= p.t) break;
                acc[j] += dot(w, xload(p.ob4 + j * k4 + g));
            }
        }
    }
    [[unroll]] for (uint j = 0; j < MAX_T; j++) part[j][tid] = acc[j];
    barrier();
    [[unroll]] for (uint s = TPR / 2u; s > 0u; s >>= 1) {
        if (sub < s) {
            [[unroll]] for (uint j = 0; j < MAX_T; j++) part[j][tid] += part[j][tid + s];
        }
        barrier();
    }
    if (live && sub < p.t) d[p.od + sub * p.d_stride + row] = part[sub][r * TPR];
}
