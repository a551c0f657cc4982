#version 450
#extension GL_EXT_control_flow_attributes : require
#extension GL_EXT_shader_16bit_storage : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_EXT_shader_explicit_arithmetic_types_int16 : require
#extension GL_EXT_buffer_reference : require
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_NV_cooperative_matrix2 : require
// Y[t, m] = sum_k W[m, k] X[t, k] on NVIDIA's cooperative matrix 2 (VK_NV_cooperative_matrix2),
// a probe that llmrt does not ship (benchmarks/vulkan_cm2_probe.py builds it and puts it in place
// of the prompt's matmul_coop dispatches, whose push constants and bindings it takes; on the H100
// it ran pp512 slower than matmul_coop_wide: BENCHMARKS.md, 2026-12-07, eighteenth). A workgroup
// holds a BM x BN accumulator of f32 at workgroup scope, and the driver's compiler plans how its
// subgroups share it and how the operands are staged through shared memory. The weight tile is
// read straight from the GGUF blocks through a decode function (`weight`) that the load calls per
// element, in f32 then rounded to f16 as matmul_coop's tiles are; the activations are rounded to
// f16 by another (`activation`: a load of f32 values into an f16 matrix reinterprets their bits).
// A workgroup whose tiles the matrix's edges cut reads zeros past them and stores nothing there;
// one with whole tiles loads and stores without those checks (2.4 times as fast on the H100).
#ifndef BM
#define BM 256
#define BN 128
#endif
#define BK 32
layout(local_size_x = 256) in;

// TYPE (quant.glsl's codes), the bytes of one of its blocks, and the weights a block holds
layout(constant_id = 0) const uint TYPE = 3;
layout(constant_id = 1) const uint BLOCK_BYTES = 18;
layout(constant_id = 2) const uint QK = 32;
const uint T_F16 = 1, T_Q4_0 = 3, T_Q4_1 = 4, T_Q5_0 = 5, T_Q5_1 = 6, T_Q8_0 = 7, T_Q4_K = 8,
           T_Q5_K = 9, T_Q6_K = 10;

layout(binding = 0) readonly buffer W { uint16_t w16[]; };
layout(binding = 1) readonly buffer B { float b[]; };
layout(binding = 2) writeonly buffer D { float d[]; };
layout(buffer_reference, std430, buffer_reference_align = 2) buffer Block {
    uint16_t h[BLOCK_BYTES / 2];
};

layout(push_constant) uniform P {
    uint k, row_bytes, rows, t, ob4, od, d_stride, round_f16, groups_x;
} p;

uint byte_at(const in Block bl, uint i) { return (uint(bl.h[i >> 1]) >> ((i & 1u) * 8u)) & 0xFFu; }
float f16_at(const in Block bl, uint i) { return float(uint16BitsToHalf(bl.h[i >> 1])); }
uint u32_at(const in Block bl, uint i) { return uint(bl.h[i >> 1]) | (uint(bl.h[(i >> 1) + 1u]) << 16); }

// get_scale_min_k4 of a Q4_K/Q5_K block: scale and min of sub-block s (0..7), 12 bytes from 4
vec2 scale_min(const in Block bl, uint s) {
    if (s < 4u) return vec2(byte_at(bl, 4u + s) & 63u, byte_at(bl, 8u + s) & 63u);
    uint a = byte_at(bl, 8u + s), lo = byte_at(bl, s), mi = byte_at(bl, 4u + s);
    return vec2((a & 0xFu) | ((lo >> 6) << 4), (a >> 4) | ((mi >> 6) << 4));
}

// element j of the block, as ggml's dequantize_row_* computes it
float16_t weight(const in Block bl, const in uint block_coords[2], const in uint in_block[2]) {
    uint j = in_block[1];
    float v;
    if (TYPE == T_F16) {
        return uint16BitsToHalf(bl.h[0]);
    } else if (TYPE == T_Q4_0 || TYPE == T_Q4_1 || TYPE == T_Q5_0 || TYPE == T_Q5_1) {
        uint q = (byte_at(bl, BLOCK_BYTES - 16u + (j & 15u)) >> (j >= 16u ? 4u : 0u)) & 0xFu;
        if (TYPE == T_Q5_0 || TYPE == T_Q5_1) q |= ((u32_at(bl, BLOCK_BYTES - 20u) >> j) & 1u) << 4;
        float base = TYPE == T_Q4_0 ? 8.0 : (TYPE == T_Q5_0 ? 16.0 : 0.0);
        v = f16_at(bl, 0u) * (float(q) - base);
        if (TYPE == T_Q4_1 || TYPE == T_Q5_1) v += f16_at(bl, 2u);
    } else if (TYPE == T_Q8_0) {
        v = f16_at(bl, 0u) * float(bitfieldExtract(int(byte_at(bl, 2u + j)), 0, 8));
    } else if (TYPE == T_Q4_K || TYPE == T_Q5_K) {
        uint chunk = j >> 6, hi = (j >> 5) & 1u, l = j & 31u;
        uint qs = TYPE == T_Q4_K ? 16u : 48u;
        vec2 sm = scale_min(bl, 2u * chunk + hi);
        uint q = (byte_at(bl, qs + 32u * chunk + l) >> (4u * hi)) & 0xFu;
        if (TYPE == T_Q5_K) q |= ((byte_at(bl, 16u + l) >> (2u * chunk + hi)) & 1u) << 4;
        v = f16_at(bl, 0u) * sm.x * float(q) - f16_at(bl, 2u) * sm.y;
    } else {  // T_Q6_K: ql[128], qh[64], int8 scales[16], d
        uint half_ = j >> 7, w = j & 127u, quarter = w >> 5, l = w & 31u;
        uint lo = (byte_at(bl, 64u * half_ + 32u * (quarter & 1u) + l) >> (quarter >= 2u ? 4u : 0u)) & 0xFu;
        uint hb = (byte_at(bl, 128u + 32u * half_ + l) >> (2u * quarter)) & 3u;
        int sc = bitfieldExtract(int(byte_at(bl, 192u + 8u * half_ + (l >> 4) + 2u * quarter)), 0, 8);
        v = f16_at(bl, 208u) * float(sc) * (float(lo | (hb << 4)) - 32.0);
    }
    return float16_t(v);
}

layout(buffer_reference, std430, buffer_reference_align = 4) buffer Activation { float x; };
float16_t activation(const in Activation a, const in uint block_coords[2], const in uint in_block[2]) {
    return float16_t(a.x);
}

// the weights: rows x k in blocks of QK along k; the activations: t x k from b[4 * ob4]; the
// output: t x rows, rows d_stride apart from d[od]; MODE: whether loads and stores check bounds
#define PRODUCTS(MODE) {                                                                       \
    tensorLayoutNV<2, MODE> lw = createTensorLayoutNV(2, MODE);                                 \
    lw = setTensorLayoutBlockSizeNV(lw, 1, QK);                                                 \
    lw = setTensorLayoutDimensionNV(lw, p.rows, p.k);                                           \
    lw = setTensorLayoutStrideNV(lw, p.k / QK, 1);                                              \
    tensorLayoutNV<2, MODE> lx = createTensorLayoutNV(2, MODE);                                 \
    lx = setTensorLayoutDimensionNV(lx, p.t, p.k);                                              \
    lx = setTensorLayoutStrideNV(lx, p.k, 1);                                                   \
    tensorLayoutNV<2, MODE> ld = createTensorLayoutNV(2, MODE);                                 \
    ld = setTensorLayoutDimensionNV(ld, p.t, p.rows);                                           \
    ld = setTensorLayoutStrideNV(ld, p.d_stride, 1);                                            \
    coopmat<float, gl_ScopeWorkgroup, BM, BN, gl_MatrixUseAccumulator> acc =                    \
        coopmat<float, gl_ScopeWorkgroup, BM, BN, gl_MatrixUseAccumulator>(0.0);                \
    for (uint k0 = 0; k0 < p.k; k0 += BK) {                                                     \
        coopmat<float16_t, gl_ScopeWorkgroup, BM, BK, gl_MatrixUseA> wt;                        \
        coopmat<float16_t, gl_ScopeWorkgroup, BK, BN, gl_MatrixUseB> xt;                        \
        coopMatLoadTensorNV(wt, w16, 0, sliceTensorLayoutNV(lw, m0, BM, k0, BK), weight);       \
        coopMatLoadTensorNV(xt, b, 4u * p.ob4, sliceTensorLayoutNV(lx, t0, BN, k0, BK),         \
                            transposed, activation);                                            \
        acc = coopMatMulAdd(wt, xt, acc);                                                       \
    }                                                                                           \
    coopMatStoreTensorNV(acc, d, p.od, sliceTensorLayoutNV(ld, t0, BN, m0, BM), transposed);    \
}

void main() {
    uint m0 = gl_WorkGroupID.x * BM, t0 = gl_WorkGroupID.y * BN;
    tensorViewNV<2, false, 1, 0> transposed = createTensorViewNV(2, false, 1, 0);
    if (m0 + BM <= p.rows && t0 + BN <= p.t && p.k % BK == 0)
        PRODUCTS(gl_CooperativeMatrixClampModeUndefinedNV)
    else
        PRODUCTS(gl_CooperativeMatrixClampModeConstantNV)
}
