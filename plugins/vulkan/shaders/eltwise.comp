#version 450
// Element-wise ops over up to four dimensions with strided (and broadcast) sources: copies and
// type conversions (cont, cpy), add, mul, scale, silu, gelu, swiglu, geglu. One invocation
// writes two consecutive output elements, so an f16 output is written a whole word at a time.
#define WG 256
layout(local_size_x = WG) in;
#include "common.glsl"

layout(binding = 0) readonly buffer A { uint a[]; };
layout(binding = 1) readonly buffer B { uint b[]; };
layout(binding = 2) buffer D { uint d[]; };
layout(binding = 3) readonly buffer G { uint gelu_table[]; };  // 65536 f16 GELU values

layout(push_constant) uniform P {
    uvec4 ne;   // output shape, innermost first (ggml order)
    uvec4 sa;   // strides of a in elements, innermost first
    uvec4 sb;   // strides of b (0 where b broadcasts)
    uint oa, ob, od;
    uint op;    // bits 0-7: the operation; bit 8: a is f16; bit 9: b is f16; bit 10: output f16
    float s;
    uint n;
    uint groups_x;
} p;

const uint COPY = 0, ADD = 1, MUL = 2, SCALE = 3, SILU = 4, GELU = 5, SWIGLU = 6, GEGLU = 7;

float gelu(float x) {
    // as ggml's CPU backend: a table indexed by the f16 value of x, holding f16 results (made by
    // the reference formula on the host, so that every driver gives the same bits); exact beyond
    // +-10
    if (x <= -10.0) return 0.0;
    if (x >= 10.0) return x;
    uint h = packHalf2x16(vec2(x, 0.0)) & 0xFFFFu;
    return unpackHalf2x16(gelu_table[h >> 1] >> ((h & 1u) * 16u)).x;
}

float value(uint e) {
    uint i0 = e % p.ne.x, r = e / p.ne.x;
    uint i1 = r % p.ne.y;
    r /= p.ne.y;
    uint i2 = r % p.ne.z, i3 = r / p.ne.z;
    uint ia = p.oa + i0 * p.sa.x + i1 * p.sa.y + i2 * p.sa.z + i3 * p.sa.w;
    float x = LOAD_F(a, ia, (p.op & 256u) != 0u);
    uint op = p.op & 255u;
    if (op == COPY) return x;
    if (op == SCALE) return x * p.s;
    if (op == SILU) return x / (1.0 + exp(-x));
    if (op == GELU) return gelu(x);
    uint ib = p.ob + i0 * p.sb.x + i1 * p.sb.y + i2 * p.sb.z + i3 * p.sb.w;
    float y = LOAD_F(b, ib, (p.op & 512u) != 0u);
    if (op == ADD) return x + y;
    if (op == MUL) return x * y;
    if (op == SWIGLU) return x / (1.0 + exp(-x)) * y;
    return gelu(x) * y;  // GEGLU
}

void main() {
    uint e = 2u * (group_index(p.groups_x) * WG + gl_LocalInvocationID.x);
    if (e >= p.n) return;
    float v0 = value(e);
    bool second = e + 1u < p.n;
    float v1 = second ? value(e + 1u) : 0.0;
    if ((p.op & 1024u) != 0u) {
        uint o = p.od + e;  // even: f16 outputs start on a word
        d[o >> 1] = packHalf2x16(vec2(v0, v1));
    } else {
        d[p.od + e] = floatBitsToUint(v0);
        if (second) d[p.od + e + 1u] = floatBitsToUint(v1);
    }
}
