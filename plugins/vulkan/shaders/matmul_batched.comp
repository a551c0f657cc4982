#version 450
// Batched activation x activation products, ggml broadcasting: a [Ba, M, K] (f32 or f16),
// b [Bb, T, K], out [Bb, T, M]; a's batch i serves b's batches i*r .. i*r+r-1 (r = Bb / Ba).
#define WG 256
layout(local_size_x = WG) in;
#include "common.glsl"

layout(binding = 0) readonly buffer A { uint a[]; };
layout(binding = 1) readonly buffer B { float b[]; };
layout(binding = 2) writeonly buffer D { float d[]; };

layout(push_constant) uniform P { uint m, t, k, ba, bb, oa, ob, od, a_f16, n, groups_x; } p;

void main() {
    uint idx = group_index(p.groups_x) * WG + gl_LocalInvocationID.x;
    if (idx >= p.n) return;
    uint col = idx % p.m, r = idx / p.m, tok = r % p.t, batch = r / p.t;
    uint abatch = batch / (p.bb / p.ba);
    uint ia = p.oa + (abatch * p.m + col) * p.k, ib = p.ob + (batch * p.t + tok) * p.k;
    bool f16 = p.a_f16 != 0u;
    float s = 0.0;
    for (uint i = 0; i < p.k; i++) {
        float x = b[ib + i];
        if (f16) x = round_f16(x);
        s += LOAD_F(a, ia + i, f16) * x;
    }
    d[p.od + idx] = s;
}
