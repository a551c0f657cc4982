#version 450
#extension GL_EXT_control_flow_attributes : require
// Y[t, m] = sum_k W[m, k] X[t, k] for a weight in its ggml blocks and many activation rows
// (prefill): 64x64 output tiles, the weight tile dequantized into shared memory 16 columns of k
// at a time; each invocation accumulates 4x4 outputs.
#define BM 64
#define BN 64
#define BK 16
layout(local_size_x = 256) in;

layout(binding = 0) readonly buffer W { uint Wq[]; };
layout(binding = 1) readonly buffer B { vec4 b4[]; };
layout(binding = 2) writeonly buffer D { float d[]; };
#include "quant.glsl"

layout(push_constant) uniform P {
    uint k, row_bytes, rows, t, ob4, od, d_stride, round_f16, groups_x;
} p;

shared float As[BK][BM + 1];
shared float Bs[BK][BN + 1];

void main() {
    uint tid = gl_LocalInvocationID.x, tr = tid % 16u, tc = tid / 16u;
    uint m0 = gl_WorkGroupID.x * BM, t0 = gl_WorkGroupID.y * BN;
    uint lr = tid / 4u, lk = tid % 4u, k4 = p.k / 4u;
    float acc[4][4];
    [[unroll]] for (uint i = 0; i < 4; i++)
        [[unroll]] for (uint j = 0; j < 4; j++) acc[i][j] = 0.0;
    uint wrow = m0 + lr, xcol = t0 + lr;
    for (uint k0 = 0; k0 < p.k; k0 += BK) {
        vec4 w = wrow < p.rows ? deq4(wrow * p.row_bytes, k0 + 4u * lk) : vec4(0.0);
        vec4 x = xcol < p.t ? b4[p.ob4 + xcol * k4 + k0 / 4u + lk] : vec4(0.0);
        if (p.round_f16 != 0u) x = vec4(unpackHalf2x16(packHalf2x16(x.xy)), unpackHalf2x16(packHalf2x16(x.zw)));
        [[unroll]] for (uint i = 0; i < 4; i++) {
            As[4u * lk + i][lr] = w[i];
            Bs[4u * lk + i][lr] = x[i];
        }
        barrier();
        [[unroll]] for (uint kk = 0; kk < BK; kk++) {
            float a[4], b[4];
            [[unroll]] for (uint i = 0; i < 4; i++) a[i] = As[kk][tr + 16u * i];
            [[unroll]] for (uint j = 0; j < 4; j++) b[j] = Bs[kk][tc + 16u * j];
            [[unroll]] for (uint i = 0; i < 4; i++)
                [[unroll]] for (uint j = 0; j < 4; j++) acc[i][j] += a[i] * b[j];
        }
        barrier();
    }
    [[unroll]] for (uint j = 0; j < 4; j++) {
        uint col = t0 + tc + 16u * j;
        if (col >= p.t) continue;
        [[unroll]] for (uint i = 0; i < 4; i++) {
            uint row = m0 + tr + 16u * i;
            if (row < p.rows) d[p.od + col * p.d_stride + row] = acc[i][j];
        }
    }
}
