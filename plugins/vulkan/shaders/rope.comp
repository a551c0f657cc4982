#version 450
// Rotary embedding of x [T, H, D] (contiguous) at positions pos[T]: one invocation per pair.
// inv_freq[i] = freq_base^(-2i/n_dims) * freq_scale is computed on the host in double precision.
#define WG 256
layout(local_size_x = WG) in;

layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 1) readonly buffer Pos { int pos[]; };
layout(binding = 2) readonly buffer F { float inv_freq[]; };
layout(binding = 3) readonly buffer FF { float factors[]; };
layout(binding = 4) writeonly buffer D { float d[]; };

layout(push_constant) uniform P {
    uint t, h, dim, n_dims, ox, opos, off, od;
    uint neox, has_factors;
    float attn_factor;
    uint groups_x;
} p;

void main() {
    uint idx = (gl_WorkGroupID.y * p.groups_x + gl_WorkGroupID.x) * WG + gl_LocalInvocationID.x;
    uint pairs = p.dim / 2u;
    if (idx >= p.t * p.h * pairs) return;
    uint i = idx % pairs, row = idx / pairs, tok = row / p.h;
    uint base = row * p.dim, half_ = p.n_dims / 2u;
    if (i >= half_) {  // past n_dims: copied as they are
        d[p.od + base + 2u * i] = x[p.ox + base + 2u * i];
        d[p.od + base + 2u * i + 1u] = x[p.ox + base + 2u * i + 1u];
        return;
    }
    float theta = float(pos[p.opos + tok]) * inv_freq[i];
    if (p.has_factors != 0u) theta /= factors[p.off + i];
    // reduce to [-pi, pi] before cos/sin: a two-part 2*pi keeps the error of large angles small
    float k = round(theta * 0.15915494309189535);
    theta = (theta - k * 6.28125) - k * 0.0019353071795864769;
    float c = cos(theta) * p.attn_factor, s = sin(theta) * p.attn_factor;
    uint i0 = p.neox != 0u ? i : 2u * i;
    uint i1 = p.neox != 0u ? i + half_ : 2u * i + 1u;
    float x0 = x[p.ox + base + i0], x1 = x[p.ox + base + i1];
    d[p.od + base + i0] = x0 * c - x1 * s;
    d[p.od + base + i1] = x0 * s + x1 * c;
}
