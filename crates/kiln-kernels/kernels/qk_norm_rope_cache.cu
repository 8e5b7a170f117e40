// qk_norm_rope_cache — Qwen3's attention inputs in one launch: per-head RMSNorm of q and k,
// rotate-half RoPE at each token's position, k and v written into the KV cache, q written out.
//
// Math, for token t at position p = positions[t], head dim D, pairs i < D/2 (HF's rounding in
// the model dtype throughout):
//   q and k heads:  r = 1 / sqrt(mean_d(x_d^2) + EPS)        (f32)
//                   n_d = dtype( w_d * dtype(x_d * r) )     (w = q_norm or k_norm weight)
//                   c = cos_table[p, i], s = sin_table[p, i] (already in the dtype)
//                   y_i       = dtype( dtype(n_i * c) - dtype(n_{i+D/2} * s) )
//                   y_{i+D/2} = dtype( dtype(n_{i+D/2} * c) + dtype(n_i * s) )
//   q heads -> q_out[t, h, :];  k heads -> k_cache[h, p, :];  v heads (no norm, no rope) ->
//   v_cache[h, p, :]. A position outside 0..S_MAX writes no cache row.
// Layout: qkv[T, (QH + 2 KVH) * D] (q heads, then k heads, then v heads: the fused projection's
// output); q_w, k_w [D]; cos_table, sin_table [S_MAX, D/2]; positions i32[T];
// q_out[T, QH, D]; k_cache, v_cache [KVH, S_MAX, D]; 16-byte aligned.
// Defines: KILN_DTYPE, KILN_QH, KILN_KVH, KILN_D (64, 128 or 256), KILN_EPS (float literal).
// Arguments: qkv, q_w, k_w, cos_table, sin_table, positions, q_out, k_cache, v_cache, T, S_MAX.
// Why: at decode these were four launches (two RMSNorms, rope, the cache write) of 2.6–3.9 µs
// each per layer (H100, ncu), for 10 KB of data.
// Launch: one block per token, D/8 threads per head (each holds 8 consecutive elements; a head's
// lanes are adjacent within a warp, so its sum of squares and the rotate-half partner exchange
// are warp shuffles): block = (QH + 2 KVH) * D / 8 threads rounded up to a warp (<= 1024),
// grid = T.
// Early launch: the models may start this kernel while the one before it runs; it waits
// (griddepcontrol.wait) before its first memory access.
// kiln: block=ceil_div((QH+2*KVH)*D/8,32)*32 grid=T smem=0
#include <cuda_bf16.h>
#include <cuda_fp16.h>

typedef KILN_DTYPE scalar_t;

#define D KILN_D
#define LPH (D / 8)  // lanes per head
#define NHEADS (KILN_QH + 2 * KILN_KVH)
static_assert(D == 64 || D == 128 || D == 256, "qk_norm_rope_cache: D must be 64, 128 or 256");
static_assert(NHEADS * LPH <= 1024, "qk_norm_rope_cache: (QH + 2 KVH) * D / 8 must be <= 1024");

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename S> __device__ __forceinline__ S from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
__device__ __forceinline__ float round_dt(float v) { return to_f(from_f<scalar_t>(v)); }

extern "C" __global__ void qk_norm_rope_cache(const scalar_t* __restrict__ qkv,
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
    const int t = blockIdx.x;
    if (t >= t_rows) return;  // block-uniform
    const int head = threadIdx.x / LPH;
    const int lane = threadIdx.x % LPH;
    // Every thread of the block takes part in the shuffles: padding threads (past the last head)
    // and v-head threads compute on harmless values and write only what is theirs at the end.
    const bool valid = head < NHEADS;
    const bool is_v = head >= KILN_QH + KILN_KVH;
    const bool is_q = head < KILN_QH;
    const int p = positions[t];
    const bool in_cache = p >= 0 && p < s_max;
    const int pc = in_cache ? p : 0;
    const int d0 = lane * 8;
    const scalar_t* src = qkv + ((long long)t * NHEADS + (valid ? head : 0)) * D + d0;
    float x[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) x[j] = to_f(src[j]);

    const scalar_t* w = is_q ? q_w : k_w;
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) ss += x[j] * x[j];
#pragma unroll
    for (int o = LPH / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o, LPH);
    const float r = rsqrtf(ss / (float)D + KILN_EPS);
    float n[8], partner[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) n[j] = round_dt(round_dt(x[j] * r) * to_f(w[d0 + j]));
    // Rotate-half: lane l < LPH/2 holds x1 of pairs d0..d0+7, lane l + LPH/2 their x2.
#pragma unroll
    for (int j = 0; j < 8; ++j) partner[j] = __shfl_xor_sync(0xffffffffu, n[j], LPH / 2, LPH);
    if (!valid) return;
    if (is_v) {
        if (!in_cache) return;
        scalar_t* dst = v_cache + ((long long)(head - KILN_QH - KILN_KVH) * s_max + p) * D + d0;
#pragma unroll
        for (int j = 0; j < 8; ++j) dst[j] = src[j];
        return;
    }
    const bool first = lane < LPH / 2;
    const int i0 = first ? d0 : d0 - D / 2;
    float y[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const float c = to_f(cos_table[(long long)pc * (D / 2) + i0 + j]);
        const float s = to_f(sin_table[(long long)pc * (D / 2) + i0 + j]);
        y[j] = first ? round_dt(round_dt(n[j] * c) - round_dt(partner[j] * s))
                     : round_dt(round_dt(n[j] * c) + round_dt(partner[j] * s));
    }
    scalar_t* dst;
    if (is_q) {
        dst = q_out + ((long long)t * KILN_QH + head) * D + d0;
    } else {
        if (!in_cache) return;
        dst = k_cache + ((long long)(head - KILN_QH) * s_max + p) * D + d0;
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) dst[j] = from_f<scalar_t>(y[j]);
}
