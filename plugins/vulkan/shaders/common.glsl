// Shared by every llmrt shader: workgroup reductions, f16 rounding, 2-D dispatch and the f16
// element reads of tensors kept in buffers of 32-bit words.
//
// Define WG (the workgroup size) before including. With USE_SUBGROUP the reductions go through
// subgroup arithmetic (GL_KHR_shader_subgroup_arithmetic); without it, a shared-memory tree.
#extension GL_KHR_shader_subgroup_basic : enable
#ifdef USE_SUBGROUP
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif

shared float red_[WG];

float wg_sum(float v) {
#ifdef USE_SUBGROUP
    v = subgroupAdd(v);
    if (subgroupElect()) red_[gl_SubgroupID] = v;
    barrier();
    v = 0.0;
    for (uint i = 0; i < gl_NumSubgroups; i++) v += red_[i];
    barrier();
    return v;
#else
    uint t = gl_LocalInvocationID.x;
    red_[t] = v;
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (t < s) red_[t] += red_[t + s];
        barrier();
    }
    v = red_[0];
    barrier();
    return v;
#endif
}

float wg_max(float v) {
#ifdef USE_SUBGROUP
    v = subgroupMax(v);
    if (subgroupElect()) red_[gl_SubgroupID] = v;
    barrier();
    v = red_[0];
    for (uint i = 1; i < gl_NumSubgroups; i++) v = max(v, red_[i]);
    barrier();
    return v;
#else
    uint t = gl_LocalInvocationID.x;
    red_[t] = v;
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (t < s) red_[t] = max(red_[t], red_[t + s]);
        barrier();
    }
    v = red_[0];
    barrier();
    return v;
#endif
}

float round_f16(float x) { return unpackHalf2x16(packHalf2x16(vec2(x, 0.0))).x; }

// tanh from exp, finite for any argument: drivers' own tanh may be a coarse approximation (enough
// to flip GELU's f16 rounding) or overflow through exp(2x).
float safe_tanh(float x) {
    float e = exp(2.0 * clamp(x, -15.0, 15.0));
    return (e - 1.0) / (e + 1.0);
}

// The flat workgroup index of a dispatch split over x and y (x is limited to 65535 groups).
uint group_index(uint groups_x) { return gl_WorkGroupID.y * groups_x + gl_WorkGroupID.x; }

// Element i of a tensor of f16 (two per word) or f32 (one per word) in a word buffer.
#define LOAD_F(buf, i, is_f16) \
    ((is_f16) ? unpackHalf2x16(buf[(i) >> 1])[(i) & 1u] : uintBitsToFloat(buf[i]))
