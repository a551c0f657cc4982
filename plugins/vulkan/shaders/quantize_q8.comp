#version 450
#extension GL_EXT_control_flow_attributes : require
// Activations (contiguous f32 rows whose length is a multiple of 32) to q8 blocks of 32 for the
// integer mat-vec (matvec_q8.comp), eight invocations to a block (q8.glsl). Flag bit 0: the values are
// swiglu(a, b) = silu(a) * b (as eltwise.comp computes it), also written as f32 to o.
#define WG 256
layout(local_size_x = WG) in;

layout(binding = 0) readonly buffer A { vec4 a4[]; };
layout(binding = 1) writeonly buffer Q { uvec4 q8q[]; };
layout(binding = 2) writeonly buffer S { vec2 q8s[]; };
layout(binding = 3) readonly buffer B { vec4 b4[]; };
layout(binding = 4) writeonly buffer O { vec4 o4[]; };
#define Q8_QUADS
#include "q8.glsl"

layout(push_constant) uniform P { uint nblocks, oa4, groups_x, flags, ob4, oo4; } p;

void main() {
    uint tid = gl_LocalInvocationID.x;
    uint qd = (gl_WorkGroupID.y * p.groups_x + gl_WorkGroupID.x) * WG + tid;
    bool on = qd < p.nblocks * 8u;
    vec4 x = vec4(0.0);
    if (on) {
        x = a4[p.oa4 + qd];
        if ((p.flags & 1u) != 0u) {
            x = x / (1.0 + exp(-x)) * b4[p.ob4 + qd];
            o4[p.oo4 + qd] = x;
        }
    }
    q8_store_quad(tid, on, qd / 8u, qd % 8u, x);
}
