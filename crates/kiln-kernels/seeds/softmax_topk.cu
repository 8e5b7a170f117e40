// softmax_topk — naive seed: one thread per row.
//
// Math (f32 inside):   p[e] = exp(l[e] - max_e l) / sum_e exp(l[e] - max_e l)      (all E experts)
//                      idx  = the K experts with the largest p, sorted by descending p;
//                             equal p: the lower expert index comes first
//                      KILN_RENORM=1: weights[k] = p[idx[k]] / sum_k p[idx[k]]
//                      KILN_RENORM=0: weights[k] = p[idx[k]]
// Layout: logits[T,E] (dtype), weights[T,K] f32, indices[T,K] u32; row-major.
// Defines: KILN_DTYPE, KILN_E (1..=256), KILN_K (1..=min(E,32)), KILN_RENORM (0/1).
// Launch: thread t owns row t: softmax into a per-thread array, then K scans
// that each take the best unpicked expert (scanning upwards, so ties keep the lower index).
// kiln: block=128 grid=ceil_div(T, 128) smem=0
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
// Rounds an f32 value through the storage dtype.
__device__ __forceinline__ float round_dt(float v) { return to_f(from_f<scalar_t>(v)); }

extern "C" __global__ void softmax_topk(const scalar_t* logits, float* weights, unsigned int* indices, int T) {
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)T) return;
    const scalar_t* lr = logits + t * KILN_E;
    float p[KILN_E];
    bool picked[KILN_E];
    float m = to_f(lr[0]);
    for (int e = 1; e < KILN_E; ++e) m = fmaxf(m, to_f(lr[e]));
    float s = 0.f;
    for (int e = 0; e < KILN_E; ++e) {
        p[e] = expf(to_f(lr[e]) - m);
        s += p[e];
        picked[e] = false;
    }
    for (int e = 0; e < KILN_E; ++e) p[e] = p[e] / s;
    float pw[KILN_K];
    int pi[KILN_K];
    float tot = 0.f;
    for (int k = 0; k < KILN_K; ++k) {
        int best = -1;
        for (int e = 0; e < KILN_E; ++e)
            if (!picked[e] && (best < 0 || p[e] > p[best])) best = e;
        picked[best] = true;
        pw[k] = p[best];
        pi[k] = best;
        tot += p[best];
    }
    for (int k = 0; k < KILN_K; ++k) {
#if KILN_RENORM
        weights[t * KILN_K + k] = pw[k] / tot;
#else
        weights[t * KILN_K + k] = pw[k];
#endif
        indices[t * KILN_K + k] = (unsigned int)pi[k];
    }
}
