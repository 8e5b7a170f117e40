// qk_norm_rope_cache — offline template. Per token t at position p = positions[t]:
//   q and k heads: n = dtype(w * dtype(x * rsqrt(mean(x^2) + EPS))), then rotate-half RoPE with
//   the cos/sin table rows of p; q heads -> q_out[t, h], k heads -> k_cache[h, p]; v heads are
//   copied to v_cache[h, p]. A position outside 0..s_max writes no cache row (q takes row 0).
// Layout: LPH = D / KO_VEC lanes per head, each holding KO_VEC consecutive elements; a head's
// lanes are adjacent inside one warp, so its sum of squares and the rotate-half partner are
// shuffles of width LPH. A block holds HPB heads of one token: grid = T * ceil(NH / HPB).
// Knobs (defined above): KO_VEC, KO_HPB (0: every head of the token), KO_VLD (vector loads),
// KO_LDH (load hint of qkv), KO_STH (store hint), KO_MINB, KO_BLOCK.
#define D KILN_D
#define NH (KILN_QH + 2 * KILN_KVH)
#define LPH (D / KO_VEC)
#if KO_HPB == 0 || KO_HPB > NH
#define HPB NH
#else
#define HPB KO_HPB
#endif
#define GPT ((NH + HPB - 1) / HPB)
static_assert(D % KO_VEC == 0, "D must be a multiple of vec");
static_assert(LPH >= 2 && LPH <= 32 && (LPH & (LPH - 1)) == 0, "lanes per head: a power of two in 2..=32");
static_assert(HPB * LPH <= KO_BLOCK, "the block must hold its heads");

// KO_VEC consecutive elements of p into v (as f32), through the vector or the element path.
template <int H> __device__ __forceinline__ void load_vec(const scalar_t* p, float* v) {
#if KO_VLD
    const Pack c = ld_pack<H>(p);
#pragma unroll
    for (int j = 0; j < KO_VEC; ++j) v[j] = pget(c, j);
#else
#pragma unroll
    for (int j = 0; j < KO_VEC; ++j) v[j] = ld_elem<H>(p + j);
#endif
}

__device__ __forceinline__ void store_vec(scalar_t* p, const float* v) {
#if KO_VLD
    Pack c;
#pragma unroll
    for (int j = 0; j < KO_VEC; ++j) pset(c, j, v[j]);
    st_pack<KO_STH>(p, c);
#else
#pragma unroll
    for (int j = 0; j < KO_VEC; ++j) p[j] = from_f<scalar_t>(v[j]);
#endif
}

// KO_VEC elements copied bit for bit (the v heads: no rounding through f32).
__device__ __forceinline__ void copy_vec(scalar_t* dst, const scalar_t* src) {
#if KO_VLD
    st_pack<KO_STH>(dst, ld_pack<0>(src));
#else
#pragma unroll
    for (int j = 0; j < KO_VEC; ++j) dst[j] = src[j];
#endif
}

extern "C" __global__ void KO_BOUNDS qk_norm_rope_cache(const scalar_t* __restrict__ qkv,
                                                       const scalar_t* __restrict__ q_w,
                                                       const scalar_t* __restrict__ k_w,
                                                       const scalar_t* __restrict__ cos_table,
                                                       const scalar_t* __restrict__ sin_table,
                                                       const int* __restrict__ positions,
                                                       scalar_t* __restrict__ q_out,
                                                       scalar_t* __restrict__ k_cache,
                                                       scalar_t* __restrict__ v_cache,
                                                       int t_rows, int s_max) {
#if __CUDA_ARCH__ >= 900
    // Early launch: wait for the kernel before this one, then let the next one be scheduled.
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    const int t = blockIdx.x / GPT;
    if (t >= t_rows) return;  // block-uniform
    const int slot = threadIdx.x / LPH;
    const int lane = threadIdx.x % LPH;
    const int h_raw = (blockIdx.x % GPT) * HPB + slot;
    // Every thread of a warp takes part in the shuffles: threads past the block's heads work on
    // head 0 and write nothing.
    const bool valid = slot < HPB && h_raw < NH;
    const int head = valid ? h_raw : 0;
    const bool is_q = head < KILN_QH;
    const bool is_v = head >= KILN_QH + KILN_KVH;
    const int p = positions[t];
    const bool in_cache = p >= 0 && p < s_max;
    const int pc = in_cache ? p : 0;
    const int d0 = lane * KO_VEC;
    const scalar_t* src = qkv + ((long long)t * NH + head) * D + d0;
    float x[KO_VEC], w[KO_VEC];
    load_vec<KO_LDH>(src, x);
    load_vec<1>((is_q ? q_w : k_w) + d0, w);
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < KO_VEC; ++j) ss += x[j] * x[j];
#pragma unroll
    for (int o = LPH / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o, LPH);
    const float r = rsqrtf(ss / (float)D + KILN_EPS);
    float n[KO_VEC], partner[KO_VEC];
#pragma unroll
    for (int j = 0; j < KO_VEC; ++j) n[j] = round_dt(round_dt(x[j] * r) * w[j]);
    // Rotate-half: lane l < LPH/2 holds the first halves of its pairs, lane l + LPH/2 the second.
#pragma unroll
    for (int j = 0; j < KO_VEC; ++j) partner[j] = __shfl_xor_sync(0xffffffffu, n[j], LPH / 2, LPH);
    if (!valid) return;
    if (is_v) {
        if (!in_cache) return;
        copy_vec(v_cache + ((long long)(head - KILN_QH - KILN_KVH) * s_max + p) * D + d0, src);
        return;
    }
    if (!is_q && !in_cache) return;
    const bool first = lane < LPH / 2;
    const int i0 = first ? d0 : d0 - D / 2;
    float c[KO_VEC], s[KO_VEC], y[KO_VEC];
    load_vec<1>(cos_table + (long long)pc * (D / 2) + i0, c);
    load_vec<1>(sin_table + (long long)pc * (D / 2) + i0, s);
#pragma unroll
    for (int j = 0; j < KO_VEC; ++j) {
        y[j] = first ? round_dt(round_dt(n[j] * c[j]) - round_dt(partner[j] * s[j]))
                     : round_dt(round_dt(n[j] * c[j]) + round_dt(partner[j] * s[j]));
    }
    store_vec(is_q ? q_out + ((long long)t * KILN_QH + head) * D + d0
                   : k_cache + ((long long)(head - KILN_QH) * s_max + p) * D + d0,
              y);
}
