#version 450
// Rows of a table kept in its ggml blocks, dequantized to f32: four elements per invocation. The
// binding may hold rows row0 .. row0 + n_rows - 1 of a larger table (one binding's range of it):
// ids of other rows are left to the dispatches of the other ranges.
#define WG 256
layout(local_size_x = WG) in;

layout(binding = 0) readonly buffer W { uint Wq[]; };
layout(binding = 1) readonly buffer I { int ids[]; };
layout(binding = 2) writeonly buffer D { vec4 d[]; };
#include "quant.glsl"

layout(push_constant) uniform P {
    uint k, row_bytes, table_byte, oi, od4, n4, groups_x, row0, n_rows;
} p;

void main() {
    uint idx = (gl_WorkGroupID.y * p.groups_x + gl_WorkGroupID.x) * WG + gl_LocalInvocationID.x;
    if (idx >= p.n4) return;
    uint groups = p.k / 4u, r = idx / groups, g = idx % groups;
    uint row = uint(ids[p.oi + r]) - p.row0;
    if (row >= p.n_rows) return;
    d[p.od4 + idx] = deq4(p.table_byte + row * p.row_bytes, 4u * g);
}
