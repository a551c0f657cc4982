#version 450
// Rotary embedding of x [T, H, D] (contiguous) at positions pos[T]: one invocation per two adjacent
// output elements, each computed from its own rotation pair (neox pairs i, i + n_dims/2).
// inv_freq[i] = freq_base^(-2i/n_dims) * freq_scale is computed on the host in double precision.
// Flag bit 0: the result goes to row ids[tok] of a cache `width` elements wide (the set_rows that
// reads it, fused); bit 1: that cache is f16.
#define WG 256
layout(local_size_x = WG) in;

layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 1) readonly buffer Pos { int pos[]; };
layout(binding = 2) readonly buffer F { float inv_freq[]; };
layout(binding = 3) readonly buffer FF { float factors[]; };
layout(binding = 4) writeonly buffer D { uint d[]; };
layout(binding = 5) readonly buffer I { int ids[]; };

layout(push_constant) uniform P {
    uint t, h, dim, n_dims, ox, opos, off, od;
    uint neox, has_factors;
    float attn_factor;
    uint groups_x, flags, oi, width;
} p;

float rope_at(uint base, uint e, uint tok) {
    if (e >= p.n_dims) return x[p.ox + base + e];  // past n_dims: copied as they are
    uint half_ = p.n_dims / 2u;
    uint i = p.neox != 0u ? e % half_ : e / 2u;
    bool second = p.neox != 0u ? e >= half_ : (e & 1u) != 0u;
    float theta = float(pos[p.opos + tok]) * inv_freq[i];
    if (p.has_factors != 0u) theta /= factors[p.off + i];
    // reduce to [-pi, pi] before cos/sin: a two-part 2*pi keeps the error of large angles small
    float k = round(theta * 0.15915494309189535);
    theta = (theta - k * 6.28125) - k * 0.0019353071795864769;
    float c = cos(theta) * p.attn_factor, s = sin(theta) * p.attn_factor;
    uint i0 = p.neox != 0u ? i : 2u * i;
    uint i1 = p.neox != 0u ? i + half_ : 2u * i + 1u;
    float x0 = x[p.ox + base + i0], x1 = x[p.ox + base + i1];
    return second ? x0 * s + x1 * c : x0 * c - x1 * s;
}

void main() {
    uint idx = (gl_WorkGroupID.y * p.groups_x + gl_WorkGroupID.x) * WG + gl_LocalInvocationID.x;
    uint pairs = p.dim / 2u;
    if (idx >= p.t * p.h * pairs) return;
    uint e = 2u * (idx % pairs), row = idx / pairs, tok = row / p.h, base = row * p.dim;
    float v0 = rope_at(base, e, tok), v1 = rope_at(base, e + 1u, tok);
    uint dst = p.od + base + e;
    if ((p.flags & 1u) != 0u) dst = p.od + uint(ids[p.oi + tok]) * p.width + (row % p.h) * p.dim + e;
    if ((p.flags & 2u) != 0u) {
        d[dst >> 1] = packHalf2x16(vec2(v0, v1));
    } else {
        d[dst] = floatBitsToUint(v0);
        d[dst + 1u] = floatBitsToUint(v1);
    }
}
