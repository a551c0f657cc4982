#version 450
// dst[ids[r], :] = src[r, :] for a cache of f32 or f16 rows; two elements per invocation.
#define WG 256
layout(local_size_x = WG) in;

layout(binding = 0) readonly buffer S { float s[]; };
layout(binding = 1) readonly buffer I { int ids[]; };
layout(binding = 2) buffer D { uint d[]; };

layout(push_constant) uniform P { uint width, rows, os, oi, od, f16, groups_x; } p;

void main() {
    uint idx = (gl_WorkGroupID.y * p.groups_x + gl_WorkGroupID.x) * WG + gl_LocalInvocationID.x;
    uint pairs = (p.width + 1u) / 2u;
    if (idx >= p.rows * pairs) return;
    uint r = idx / pairs, c = 2u * (idx % pairs);
    uint dst = p.od + uint(ids[p.oi + r]) * p.width + c, src = p.os + r * p.width + c;
    bool second = c + 1u < p.width;
    if (p.f16 != 0u) {  // width is even for f16 caches
        d[dst >> 1] = packHalf2x16(vec2(s[src], s[src + 1u]));
    } else {
        d[dst] = floatBitsToUint(s[src]);
        if (second) d[dst + 1u] = floatBitsToUint(s[src + 1u]);
    }
}
