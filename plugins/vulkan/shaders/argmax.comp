#version 450
// argmax of contiguous rows (the first index on ties, as numpy): one workgroup per row.
#define WG 256
layout(local_size_x = WG) in;

layout(binding = 0) readonly buffer A { float a[]; };
layout(binding = 1) writeonly buffer D { int d[]; };

layout(push_constant) uniform P { uint n, rows, oa, od, groups_x; } p;

shared float sv[WG];
shared uint si[WG];

void main() {
    uint row = gl_WorkGroupID.y * p.groups_x + gl_WorkGroupID.x;
    if (row >= p.rows) return;
    uint t = gl_LocalInvocationID.x;
    float best = -1.0 / 0.0;
    uint at = 0xFFFFFFFFu;
    for (uint i = t; i < p.n; i += WG) {
        float v = a[p.oa + row * p.n + i];
        if (v > best || at == 0xFFFFFFFFu) { best = v; at = i; }
    }
    sv[t] = best;
    si[t] = at;
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (t < s) {
            float v = sv[t + s];
            uint i = si[t + s];
            if (i != 0xFFFFFFFFu && (si[t] == 0xFFFFFFFFu || v > sv[t] || (v == sv[t] && i < si[t]))) {
                sv[t] = v;
                si[t] = i;
            }
        }
        barrier();
    }
    if (t == 0u) d[p.od + row] = int(si[0]);
}
