#version 450
#extension GL_EXT_control_flow_attributes : require
// Activations (contiguous f32 rows whose length is a multiple of 32) to q8 blocks of 32 for the
// integer mat-vec (matvec_q8.comp), one invocation per block (q8.glsl). Flag bit 0: the values are
// swiglu(a, b) = silu(a) * b (as eltwise.comp computes it), also written as f32 to o.
#define WG 64
layout(local_size_x = WG) in;

layout(binding = 0) readonly buffer A { vec4 a4[]; };
layout(binding = 1) writeonly buffer Q { uvec4 q8q[]; };
layout(binding = 2) writeonly buffer S { vec2 q8s[]; };
layout(binding = 3) readonly buffer B { vec4 b4[]; };
layout(binding = 4) writeonly buffer O { vec4 o4[]; };
#include "q8.glsl"

layout(push_constant) uniform P { uint nblocks, oa4, groups_x, flags, ob4, oo4; } p;

void main() {
    uint b = (gl_WorkGroupID.y * p.groups_x + gl_WorkGroupID.x) * WG + gl_LocalInvocationID.x;
    if (b >= p.nblocks) return;
    vec4 x[8];
    [[unroll]] for (uint u = 0; u < 8u; u++) {
        x[u] = a4[p.oa4 + 8u * b + u];
        if ((p.flags & 1u) != 0u) {
            x[u] = x[u] / (1.0 + exp(-x[u])) * b4[p.ob4 + 8u * b + u];
            o4[p.oo4 + 8u * b + u] = x[u];
        }
    }
    q8_store(b, x);
}
