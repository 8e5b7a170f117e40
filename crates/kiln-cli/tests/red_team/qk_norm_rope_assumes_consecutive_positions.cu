// expect: verify
// expect-reason: q_out|k_cache
// target: qwen3_qk_norm_rope_cache
// Trick: reads only the first token's position and assumes the others follow
// it (true at decode, where a step writes positions past, past+1, ...),
// saving a load per token.
// Stopped by: verification scatters the tokens' positions over the cache, and
// the in-out caches are checked row by row after every launch.
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
    const int p = positions[0] + t;  // decode writes consecutive positions: read one
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
