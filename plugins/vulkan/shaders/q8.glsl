// One block of 32 activations to q8 as ggml's quantize_row_q8_0 rounds it (x86 path: scale
// 127/amax, round half to even, f16 scale): int8 values packed four to a word into q8q (two uvec4
// a block), vec2(scale, sum of the int8 values) into q8s. Shared by quantize_q8.comp and
// norm.comp, which declare those buffers.

// a / b rounded as IEEE division is (numpy's, ggml's): GPU drivers may divide through an
// approximate reciprocal, off by an ulp, which flips an int8 value now and then (seen on NVIDIA:
// nmse 7e-8 against ggml's rounding). One fused correction step gives the rounded quotient.
float div_rn(float a, float b) {
    precise float q = a / b;
    precise float r = fma(-b, q, a);
    return fma(r, 1.0 / b, q);
}

// f (finite, >= 0) rounded to f16 to nearest even, as ggml (F16C) and numpy round it: the rounding
// of packHalf2x16 is the driver's choice (NVIDIA's is not to nearest even: block scales one f16 ulp
// off, nmse 7e-8 against ggml's rounding).
float f16_rne(float f) {
    uint x = floatBitsToUint(f);
    uint h;
    if (x >= 0x477FF000u) {
        h = 0x7C00u;  // 65520 and above: infinity
    } else if (x < 0x38800000u) {  // below 2^-14: a subnormal f16, in steps of 2^-24
        h = uint(roundEven(f * 16777216.0));
    } else {  // rebias the exponent (127 - 15), round away the low 13 bits half to even
        uint r = x - 0x38000000u;
        h = r >> 13;
        uint rem = r & 0x1FFFu;
        h += (rem > 0x1000u || (rem == 0x1000u && (h & 1u) != 0u)) ? 1u : 0u;
    }
    return unpackHalf2x16(h).x;
}

void q8_store(uint b, vec4 x[8]) {
    float amax = 0.0;
    [[unroll]] for (uint u = 0; u < 8u; u++) {
        vec4 m = abs(x[u]);
        amax = max(amax, max(max(m.x, m.y), max(m.z, m.w)));
    }
    float inv = amax > 0.0 ? div_rn(127.0, amax) : 0.0;
    float d = f16_rne(div_rn(amax, 127.0));
    uint w[8];
    int sum = 0;
    [[unroll]] for (uint u = 0; u < 8u; u++) {
        ivec4 q = ivec4(roundEven(x[u] * inv));
        sum += q.x + q.y + q.z + q.w;
        w[u] = uint(q.x & 0xFF) | uint(q.y & 0xFF) << 8 | uint(q.z & 0xFF) << 16 | uint(q.w & 0xFF) << 24;
    }
    q8q[2u * b] = uvec4(w[0], w[1], w[2], w[3]);
    q8q[2u * b + 1u] = uvec4(w[4], w[5], w[6], w[7]);
    q8s[b] = vec2(d, float(sum));
}

#ifdef Q8_QUADS
// The same rounding, eight invocations to a block, four values each: invocations 8i..8i+7 of the
// workgroup hold quads 0..7 of block b (those with `on` false take part in the barriers only).
// Called in uniform control flow: it has two barriers.
shared float q8_amax_[WG];
shared int q8_sum_[WG];

void q8_store_quad(uint tid, bool on, uint b, uint c, vec4 x) {
    vec4 m = abs(x);
    q8_amax_[tid] = max(max(m.x, m.y), max(m.z, m.w));
    barrier();
    uint g = tid & ~7u;
    float amax = 0.0;
    [[unroll]] for (uint i = 0; i < 8u; i++) amax = max(amax, q8_amax_[g + i]);
    float inv = amax > 0.0 ? div_rn(127.0, amax) : 0.0;
    ivec4 q = ivec4(roundEven(x * inv));
    q8_sum_[tid] = q.x + q.y + q.z + q.w;
    if (on) {
        q8q[2u * b + c / 4u][c % 4u] =
            uint(q.x & 0xFF) | uint(q.y & 0xFF) << 8 | uint(q.z & 0xFF) << 16 | uint(q.w & 0xFF) << 24;
    }
    barrier();
    if (on && c == 0u) {
        int sum = 0;
        [[unroll]] for (uint i = 0; i < 8u; i++) sum += q8_sum_[g + i];
        q8s[b] = vec2(f16_rne(div_rn(amax, 127.0)), float(sum));
    }
}
#endif
