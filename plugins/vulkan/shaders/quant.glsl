// Reading GGUF blocks as they are stored, from a buffer of 32-bit words named Wq.
// TYPE (specialization constant 0) picks the ggml type; every reader is folded to one branch when
// the pipeline is created. All block sizes are even and every field read here starts at an even
// byte offset, so a 16- or 32-bit field takes at most two words.
layout(constant_id = 0) const uint TYPE = 0;

const uint T_F32 = 0, T_F16 = 1, T_BF16 = 2, T_Q4_0 = 3, T_Q4_1 = 4, T_Q5_0 = 5, T_Q5_1 = 6,
           T_Q8_0 = 7, T_Q4_K = 8, T_Q5_K = 9, T_Q6_K = 10;

uint rd8(uint b) { return (Wq[b >> 2] >> ((b & 3u) * 8u)) & 0xFFu; }
uint rd16(uint b) { return (Wq[b >> 2] >> ((b & 2u) * 8u)) & 0xFFFFu; }
uint rd32(uint b) {
    uint i = b >> 2;
    return (b & 2u) == 0u ? Wq[i] : (Wq[i] >> 16) | (Wq[i + 1] << 16);
}
float rdf16(uint b) { return unpackHalf2x16(rd16(b)).x; }

vec4 nibbles(uint q) { return vec4(q & 0xFu, (q >> 8) & 0xFu, (q >> 16) & 0xFu, (q >> 24) & 0xFu); }
vec4 bytes_u(uint q) { return vec4(q & 0xFFu, (q >> 8) & 0xFFu, (q >> 16) & 0xFFu, q >> 24); }
vec4 bytes_s(uint q) {
    int s = int(q);
    return vec4(bitfieldExtract(s, 0, 8), bitfieldExtract(s, 8, 8), bitfieldExtract(s, 16, 8),
                bitfieldExtract(s, 24, 8));
}
// bits j..j+3 of qh as a vec4 of 0/1
vec4 bits4(uint qh, uint j) {
    uint h = qh >> j;
    return vec4(h & 1u, (h >> 1) & 1u, (h >> 2) & 1u, (h >> 3) & 1u);
}

// get_scale_min_k4: scale and min of sub-block s (0..7) of a Q4_K/Q5_K block whose 12 scale bytes
// start at byte sb.
vec2 scale_min_k4(uint sb, uint s) {
    if (s < 4u) return vec2(rd8(sb + s) & 63u, rd8(sb + s + 4u) & 63u);
    uint a = rd8(sb + s + 4u), lo = rd8(sb + s - 4u), mi = rd8(sb + s);
    return vec2((a & 0xFu) | ((lo >> 6) << 4), (a >> 4) | ((mi >> 6) << 4));
}

// Four consecutive elements k..k+3 (k a multiple of 4) of the row starting at byte rb.
vec4 deq4(uint rb, uint k) {
    if (TYPE == T_F32) {
        uint i = (rb >> 2) + k;
        return uintBitsToFloat(uvec4(Wq[i], Wq[i + 1], Wq[i + 2], Wq[i + 3]));
    }
    if (TYPE == T_F16) {
        uint i = (rb >> 2) + (k >> 1);
        return vec4(unpackHalf2x16(Wq[i]), unpackHalf2x16(Wq[i + 1]));
    }
    if (TYPE == T_BF16) {
        uint i = (rb >> 2) + (k >> 1);
        uint a = Wq[i], b = Wq[i + 1];
        return uintBitsToFloat(uvec4(a << 16, a & 0xFFFF0000u, b << 16, b & 0xFFFF0000u));
    }
    if (TYPE == T_Q4_0 || TYPE == T_Q4_1) {
        uint bb = TYPE == T_Q4_0 ? 18u : 20u;
        uint b = rb + (k >> 5) * bb, j = k & 31u;
        uint q = rd32(b + (bb - 16u) + (j & 15u)) >> (j >= 16u ? 4u : 0u);
        vec4 v = nibbles(q);
        if (TYPE == T_Q4_0) return rdf16(b) * (v - 8.0);
        return rdf16(b) * v + rdf16(b + 2u);
    }
    if (TYPE == T_Q5_0 || TYPE == T_Q5_1) {
        uint bb = TYPE == T_Q5_0 ? 22u : 24u;
        uint b = rb + (k >> 5) * bb, j = k & 31u;
        uint qh = rd32(b + bb - 20u);
        uint q = rd32(b + (bb - 16u) + (j & 15u)) >> (j >= 16u ? 4u : 0u);
        vec4 v = nibbles(q) + 16.0 * bits4(qh, j);
        if (TYPE == T_Q5_0) return rdf16(b) * (v - 16.0);
        return rdf16(b) * v + rdf16(b + 2u);
    }
    if (TYPE == T_Q8_0) {
        uint b = rb + (k >> 5) * 34u, j = k & 31u;
        return rdf16(b) * bytes_s(rd32(b + 2u + j));
    }
    if (TYPE == T_Q4_K || TYPE == T_Q5_K) {
        uint bb = TYPE == T_Q4_K ? 144u : 176u;
        uint qs = TYPE == T_Q4_K ? 16u : 48u;
        uint b = rb + (k >> 8) * bb, j = k & 255u;
        uint chunk = j >> 6, hi = (j >> 5) & 1u, l = j & 31u;
        vec2 sm = scale_min_k4(b + 4u, 2u * chunk + hi);
        vec4 v = nibbles(rd32(b + qs + 32u * chunk + l) >> (4u * hi));
        if (TYPE == T_Q5_K) {
            uint h = rd32(b + 16u + l) >> (2u * chunk + hi);
            v += 16.0 * vec4(h & 1u, (h >> 8) & 1u, (h >> 16) & 1u, (h >> 24) & 1u);
        }
        return rdf16(b) * sm.x * v - rdf16(b + 2u) * sm.y;
    }
    // T_Q6_K: ql[128], qh[64], int8 scales[16], d
    uint b = rb + (k >> 8) * 210u, j = k & 255u;
    uint half_ = j >> 7, w = j & 127u, quarter = w >> 5, l = w & 31u;
    uint ql = rd32(b + 64u * half_ + 32u * (quarter & 1u) + l) >> (quarter >= 2u ? 4u : 0u);
    uint qh = rd32(b + 128u + 32u * half_ + l) >> (2u * quarter);
    uvec4 lo = uvec4(ql & 0xFu, (ql >> 8) & 0xFu, (ql >> 16) & 0xFu, (ql >> 24) & 0xFu);
    uvec4 hb = uvec4(qh & 3u, (qh >> 8) & 3u, (qh >> 16) & 3u, (qh >> 24) & 3u);
    vec4 q = vec4(lo | (hb << 4)) - 32.0;
    int sc = bitfieldExtract(int(rd8(b + 192u + 8u * half_ + (l >> 4) + 2u * quarter)), 0, 8);
    return rdf16(b + 208u) * float(sc) * q;
}
