// qk_norm_rope_cache — naive seed: one thread per (token, head), scalar loads, two passes.
//
// Math, for token t at position p = positions[t], head dim D, pairs i < D/2 (HF's rounding in
// the model dtype throughout):
//   q and k heads:  r = 1 / sqrt(mean_d(x_d^2) + EPS)        (f32)
//                   n_d = dtype( w_d * dtype(x_d * r) )     (w = q_w or k_w)
//                   c = cos_table[p, i], s = sin_table[p, i]
//                   y_i       = dtype( dtype(n_i * c) - dtype(n_{i+D/2} * s) )
//                   y_{i+D/2} = dtype( dtype(n_{i+D/2} * c) + dtype(n_i * s) )
//   q heads -> q_out[t, h, :];  k heads -> k_cache[h, p, :];  v heads (copied) -> v_cache[h, p, :].
//   A position outside 0..s_max writes no cache row (q then takes table row 0); every other
//   cache row is left alone.
// Layout: qkv[T, (QH + 2 KVH) * D] (q heads, k heads, v heads); q_w, k_w [D];
// cos_table, sin_table [s_max, D/2]; positions i32[T]; q_out[T, QH, D]; k_cache, v_cache
// [KVH, s_max, D].
// Defines: KILN_DTYPE, KILN_QH, KILN_KVH, KILN_D, KILN_EPS.
// Launch: thread (t, h) of T * (QH + 2 KVH) owns one head of one token.
// kiln: block=128 grid=ceil_div(T*(QH+2*KVH), 128) smem=0
#include <cuda_bf16.h>
#include <cuda_fp16.h>

typedef KILN_DTYPE scalar_t;

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename S> __device__ __forceinline__ S from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
__device__ __forceinline__ float round_dt(float v) { return to_f(from_f<scalar_t>(v)); }

#define D KILN_D
#define NH (KILN_QH + 2 * KILN_KVH)

extern "C" __global__ void qk_norm_rope_cache(const scalar_t* qkv, const scalar_t* q_w,
                                              const scalar_t* k_w, const scalar_t* cos_table,
                                              const scalar_t* sin_table, const int* positions,
                                              scalar_t* q_out, scalar_t* k_cache,
                                              scalar_t* v_cache, int T, int s_max) {
    const long long id = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (id >= (long long)T * NH) return;
    const int t = (int)(id / NH);
    const int h = (int)(id % NH);
    const int p = positions[t];
    const bool in_cache = p >= 0 && p < s_max;
    const int pc = in_cache ? p : 0;  // the table row q takes when p is outside the cache
    const scalar_t* x = qkv + id * D;
    if (h >= KILN_QH + KILN_KVH) {
        if (!in_cache) return;
        scalar_t* dst = v_cache + ((long long)(h - KILN_QH - KILN_KVH) * s_max + p) * D;
        for (int d = 0; d < D; ++d) dst[d] = x[d];
        return;
    }
    const bool is_q = h < KILN_QH;
    if (!is_q && !in_cache) return;
    const scalar_t* w = is_q ? q_w : k_w;
    float ss = 0.f;
    for (int d = 0; d < D; ++d) ss += to_f(x[d]) * to_f(x[d]);
    const float r = 1.0f / sqrtf(ss / (float)D + KILN_EPS);
    scalar_t* dst = is_q ? q_out + ((long long)t * KILN_QH + h) * D
                         : k_cache + ((long long)(h - KILN_QH) * s_max + p) * D;
    for (int i = 0; i < D / 2; ++i) {
        const float a = round_dt(to_f(w[i]) * round_dt(to_f(x[i]) * r));
        const float b = round_dt(to_f(w[i + D / 2]) * round_dt(to_f(x[i + D / 2]) * r));
        const float c = to_f(cos_table[(long long)pc * (D / 2) + i]);
        const float s = to_f(sin_table[(long long)pc * (D / 2) + i]);
        dst[i] = from_f<scalar_t>(round_dt(a * c) - round_dt(b * s));
        dst[i + D / 2] = from_f<scalar_t>(round_dt(b * c) + round_dt(a * s));
    }
}
