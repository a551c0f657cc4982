#version 450
// softmax(x * scale + mask) over contiguous rows; the mask [T, S] repeats every T rows.
#define WG 256
layout(local_size_x = WG) in;
#include "common.glsl"

layout(binding = 0) readonly buffer A { float a[]; };
layout(binding = 1) readonly buffer M { float m[]; };
layout(binding = 2) writeonly buffer D { float d[]; };

layout(push_constant) uniform P {
    uint n, rows, oa, om, od, mask_rows;  // mask_rows 0: no mask
    float scale;
    uint groups_x;
} p;

float z(uint row, uint i) {
    float v = a[p.oa + row * p.n + i] * p.scale;
    if (p.mask_rows != 0u) v += m[p.om + (row % p.mask_rows) * p.n + i];
    return v;
}

void main() {
    uint row = group_index(p.groups_x);
    if (row >= p.rows) return;
    uint t = gl_LocalInvocationID.x;
    float mx = -1.0 / 0.0;
    for (uint i = t; i < p.n; i += WG) mx = max(mx, z(row, i));
    mx = wg_max(mx);
    float s = 0.0;
    for (uint i = t; i < p.n; i += WG) s += exp(z(row, i) - mx);
    float inv = 1.0 / wg_sum(s);
    for (uint i = t; i < p.n; i += WG) d[p.od + row * p.n + i] = exp(z(row, i) - mx) * inv;
}
