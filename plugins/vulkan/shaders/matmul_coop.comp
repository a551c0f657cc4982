#version 450
#extension GL_EXT_control_flow_attributes : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_KHR_shader_subgroup_basic : require
// Y[t, m] = sum_k W[m, k] X[t, k] on the matrix units (VK_KHR_cooperative_matrix: CM x CM x CM
// f16 products into f32): the prompt matmul of matmul.comp, whose push constants it takes. A
// workgroup of SGM x SGN subgroups of SG invocations computes BM weight rows x BN tokens, each
// subgroup a block of BM/SGM rows x BN/SGN tokens as accumulators of CM x CM. The shipped
// variants give each subgroup one block of weight rows (one accumulator; the _wide ones four,
// along the tokens): no layout of more weight blocks a subgroup ran the H100's prompts faster on
// both the 1B and the 8B (BENCHMARKS.md, 2026-12-07, eighteenth). The host picks a variant only
// where the device's subgroup size is fixed at its SG. Per 32 columns of k the workgroup
// dequantizes its weight tile and rounds its activation tile to f16 in shared memory (as
// llama.cpp's Vulkan matmul does); the products are summed in f32.
#ifndef CM
#define CM 16
#define SG 32
#define SGM 4
#define SGN 4
#define BM 64
#define BN 64
#endif
#define WG (SG * SGM * SGN)
#define AM (BM / SGM / CM)  // accumulators a subgroup along the weight rows
#define AN (BN / SGN / CM)  // and along the tokens
#define BK 32
// Row strides in shared memory: 40 halves (80 bytes) and CM + 4 floats keep each row a multiple
// of 16 bytes, as cooperative-matrix loads and stores require, and stagger rows across banks;
// 8 x 8 products (lavapipe's) stage unpadded, so that 64 subgroups' rows fit its 32 KiB.
#define SK 40
#define SC (CM == 16 ? CM + 4 : CM)
layout(local_size_x = WG) in;

layout(binding = 0) readonly buffer W { uint Wq[]; };
layout(binding = 1) readonly buffer B { vec4 b4[]; };
layout(binding = 2) writeonly buffer D { float d[]; };
#include "quant.glsl"

layout(push_constant) uniform P {
    uint k, row_bytes, rows, t, ob4, od, d_stride, round_f16, groups_x;
} p;

shared float16_t Xs[BN * SK];  // tokens x k
shared float16_t Ws[BM * SK];  // weight rows x k
shared float Cs[SGM * SGN][CM * SC];  // each subgroup's accumulator on its way out

// this invocation's share of a K-step's tiles (a tile row is 8 vec4 of k, its 8 side by side in
// consecutive invocations), loaded into registers a step ahead, so that the loads' latency hides
// behind the step before; the activations stay f32 until they are stored, so that nothing waits
// on their loads before the products
f16vec4 wr[BM * 8 / WG];
vec4 xr[BN * 8 / WG];

void fetch(uint m0, uint t0, uint k0) {
    [[unroll]] for (uint j = 0; j < BM * 8 / WG; j++) {
        uint e = gl_LocalInvocationID.x + j * WG, r = e >> 3, c = (e & 7u) * 4u;
        wr[j] = f16vec4(m0 + r < p.rows ? deq4((m0 + r) * p.row_bytes, k0 + c) : vec4(0.0));
    }
    [[unroll]] for (uint j = 0; j < BN * 8 / WG; j++) {
        uint e = gl_LocalInvocationID.x + j * WG, r = e >> 3, c = (e & 7u) * 4u;
        xr[j] = t0 + r < p.t ? b4[p.ob4 + (t0 + r) * (p.k / 4u) + (k0 + c) / 4u] : vec4(0.0);
    }
}

void main() {
    uint tid = gl_LocalInvocationID.x, sg = gl_SubgroupID;
    uint m0 = gl_WorkGroupID.x * BM, t0 = gl_WorkGroupID.y * BN;
    uint sr = (sg % SGM) * (BM / SGM), st = (sg / SGM) * (BN / SGN);
    coopmat<float, gl_ScopeSubgroup, CM, CM, gl_MatrixUseAccumulator> acc[AN][AM];
    [[unroll]] for (uint i = 0; i < AN; i++)
        [[unroll]] for (uint j = 0; j < AM; j++)
            acc[i][j] = coopmat<float, gl_ScopeSubgroup, CM, CM, gl_MatrixUseAccumulator>(0.0);
    fetch(m0, t0, 0);
    for (uint k0 = 0; k0 < p.k; k0 += BK) {
        [[unroll]] for (uint j = 0; j < BM * 8 / WG; j++) {
            uint e = tid + j * WG, r = e >> 3, c = (e & 7u) * 4u;
            [[unroll]] for (uint q = 0; q < 4; q++) Ws[r * SK + c + q] = wr[j][q];
        }
        [[unroll]] for (uint j = 0; j < BN * 8 / WG; j++) {
            uint e = tid + j * WG, r = e >> 3, c = (e & 7u) * 4u;
            [[unroll]] for (uint q = 0; q < 4; q++) Xs[r * SK + c + q] = float16_t(xr[j][q]);
        }
        barrier();
        // the next step's tiles (the last step's again at the end): no branch around the loads,
        // so that the compiler may interleave them with this step's products
        fetch(m0, t0, min(k0 + BK, p.k - BK));
        [[unroll]] for (uint kk = 0; kk < BK; kk += CM) {
            coopmat<float16_t, gl_ScopeSubgroup, CM, CM, gl_MatrixUseA> a[AN];
            coopmat<float16_t, gl_ScopeSubgroup, CM, CM, gl_MatrixUseB> b[AM];
            [[unroll]] for (uint i = 0; i < AN; i++)
                coopMatLoad(a[i], Xs, (st + CM * i) * SK + kk, SK, gl_CooperativeMatrixLayoutRowMajor);
            // B is k x rows: the weight tile's rows are its columns
            [[unroll]] for (uint j = 0; j < AM; j++)
                coopMatLoad(b[j], Ws, (sr + CM * j) * SK + kk, SK, gl_CooperativeMatrixLayoutColumnMajor);
            [[unroll]] for (uint i = 0; i < AN; i++)
                [[unroll]] for (uint j = 0; j < AM; j++)
                    acc[i][j] = coopMatMulAdd(a[i], b[j], acc[i][j]);
        }
        barrier();
    }
    // out through shared memory, an accumulator at a time: a partial tile is cut at its edges,
    // and the output's offset and stride need not be 16-byte aligned. The copy loop's trip count
    // is a constant: with the lane as its start, NVIDIA's compiler kept two or more weight
    // blocks' accumulators in local memory, at under half the speed (BENCHMARKS.md, 2026-12-07,
    // eighteenth)
    uint lane = gl_SubgroupInvocationID;
    [[unroll]] for (uint i = 0; i < AN; i++)
        [[unroll]] for (uint j = 0; j < AM; j++) {
            coopMatStore(acc[i][j], Cs[sg], 0, SC, gl_CooperativeMatrixLayoutRowMajor);
            subgroupMemoryBarrierShared();
            subgroupBarrier();
            [[unroll]] for (uint q = 0; q < CM * CM / SG; q++) {
                uint e = lane + q * SG;
                uint tt = t0 + st + CM * i + e / CM, rr = m0 + sr + CM * j + e % CM;
                if (tt < p.t && rr < p.rows) d[p.od + tt * p.d_stride + rr] = Cs[sg][(e / CM) * SC + e % CM];
            }
            subgroupBarrier();
        }
}
