// Shared by matvec.comp and matvec_rows.comp (which define MAX_T, xload and the buffers).
// acc[j] += dot(block blk of the row at byte rb, activations of row j from vec4 xb + j * k4),
// for j < nt: one block of 32 weights. Q4_0, Q4_1 and Q8_0 blocks are read as a few whole words
// and unpacked in registers, other types through deq4.

vec4 nib_lo(uint q) { return vec4(q & 0xFu, (q >> 8) & 0xFu, (q >> 16) & 0xFu, (q >> 24) & 0xFu); }
vec4 nib_hi(uint q) { return nib_lo(q >> 4); }

void block_dot(uint rb, uint blk, uint xb0, uint k4, uint nt, inout float acc[MAX_T]) {
    uint xb = xb0 + 8u * blk;
    if (TYPE == T_Q4_0 || TYPE == T_Q8_0) {
        uint bsz = TYPE == T_Q4_0 ? 18u : 34u;
        uint b = rb + blk * bsz, i = b >> 2;
        bool odd = (b & 2u) != 0u;
        uint w[9];
        [[unroll]] for (uint u = 0; u < (TYPE == T_Q4_0 ? 5u : 9u); u++) w[u] = Wq[i + u];
        float scale = unpackHalf2x16(odd ? w[0] >> 16 : w[0]).x;
        if (TYPE == T_Q4_0) {
            uint q[4];
            [[unroll]] for (uint u = 0; u < 4u; u++) q[u] = odd ? w[u + 1u] : (w[u] >> 16) | (w[u + 1u] << 16);
            [[unroll]] for (uint j = 0; j < MAX_T; j++) {
                if (j >= nt) break;
                uint xo = xb + j * k4;
                float s = 0.0;
                [[unroll]] for (uint u = 0; u < 4u; u++)
                    s += dot(nib_lo(q[u]) - 8.0, xload(xo + u)) + dot(nib_hi(q[u]) - 8.0, xload(xo + 4u + u));
                acc[j] += scale * s;
            }
        } else {
            uint q[8];
            [[unroll]] for (uint u = 0; u < 8u; u++) q[u] = odd ? w[u + 1u] : (w[u] >> 16) | (w[u + 1u] << 16);
            [[unroll]] for (uint j = 0; j < MAX_T; j++) {
                if (j >= nt) break;
                uint xo = xb + j * k4;
                float s = 0.0;
                [[unroll]] for (uint u = 0; u < 8u; u++) s += dot(bytes_s(q[u]), xload(xo + u));
                acc[j] += scale * s;
            }
        }
    } else if (TYPE == T_Q4_1) {
        uint i = (rb + blk * 20u) >> 2;  // 20-byte blocks: always word aligned
        uint w0 = Wq[i], q0 = Wq[i + 1u], q1 = Wq[i + 2u], q2 = Wq[i + 3u], q3 = Wq[i + 4u];
        vec2 dm = unpackHalf2x16(w0);
        uint q[4] = uint[4](q0, q1, q2, q3);
        [[unroll]] for (uint j = 0; j < MAX_T; j++) {
            if (j >= nt) break;
            uint xo = xb + j * k4;
            float s = 0.0, sx = 0.0;
            [[unroll]] for (uint u = 0; u < 4u; u++) {
                vec4 xa = xload(xo + u), xc = xload(xo + 4u + u);
                s += dot(nib_lo(q[u]), xa) + dot(nib_hi(q[u]), xc);
                sx += dot(xa + xc, vec4(1.0));
            }
            acc[j] += dm.x * s + dm.y * sx;
        }
    } else {
        vec4 wv[8];
        [[unroll]] for (uint u = 0; u < 8u; u++) wv[u] = deq4(rb, 32u * blk + 4u * u);
        [[unroll]] for (uint j = 0; j < MAX_T; j++) {
            if (j >= nt) break;
            uint xo = xb + j * k4;
            float s = 0.0;
            [[unroll]] for (uint u = 0; u < 8u; u++) s += dot(wv[u], xload(xo + u));
            acc[j] += s;
        }
    }
}
