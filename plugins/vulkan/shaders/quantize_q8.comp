#version 450
#extension GL_EXT_control_flow_attributes : require
// Activations (contiguous f32 rows whose length is a multiple of 32) to q8 blocks of 32 as ggml's
// quantize_row_q8_0 rounds them (x86 path: scale 127/amax, round half to even, f16 scale), one
// invocation per block: the int8 values packed four to a word (two uvec4 a block), and per block
// vec2(scale, sum of the int8 values) for the integer mat-vec (matvec_q8.comp).
#define WG 64
layout(local_size_x = WG) in;

layout(binding = 0) readonly buffer A { vec4 a4[]; };
layout(binding = 1) writeonly buffer Q { uvec4 q4[]; };
layout(binding = 2) writeonly buffer S { vec2 s2[]; };

layout(push_constant) uniform P { uint nblocks, oa4, groups_x; } p;

void main() {
    uint b = (gl_WorkGroupID.y * p.groups_x + gl_WorkGroupID.x) * WG + gl_LocalInvocationID.x;
    if (b >= p.nblocks) return;
    vec4 x[8];
    float amax = 0.0;
    [[unroll]] for (uint u = 0; u < 8u; u++) {
        x[u] = a4[p.oa4 + 8u * b + u];
        vec4 m = abs(x[u]);
        amax = max(amax, max(max(m.x, m.y), max(m.z, m.w)));
    }
    float inv = amax > 0.0 ? 127.0 / amax : 0.0;
    float d = unpackHalf2x16(packHalf2x16(vec2(amax / 127.0, 0.0))).x;
    uint w[8];
    int sum = 0;
    [[unroll]] for (uint u = 0; u < 8u; u++) {
        ivec4 q = ivec4(roundEven(x[u] * inv));
        sum += q.x + q.y + q.z + q.w;
        w[u] = uint(q.x & 0xFF) | uint(q.y & 0xFF) << 8 | uint(q.z & 0xFF) << 16 | uint(q.w & 0xFF) << 24;
    }
    q4[2u * b] = uvec4(w[0], w[1], w[2], w[3]);
    q4[2u * b + 1u] = uvec4(w[4], w[5], w[6], w[7]);
    s2[b] = vec2(d, float(sum));
}
