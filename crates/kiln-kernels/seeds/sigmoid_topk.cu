// sigmoid_topk — naive seed: one thread per row, grouped routing included.
//
// Math:  s[e]  = sigmoid(l[e]) = 1 / (1 + exp(-l[e]))                  (f32)
//          KILN_SIGMOID_IN_DTYPE=1: s[e] = dtype(s[e])
//        c[e]  = s[e] + bias[e]                                          (f32 selection score)
//        groups (KILN_N_GROUP > 1): G = E / N_GROUP consecutive experts per group;
//          group score = sum of the group's two largest c; the KILN_TOPK_GROUP groups
//          with the largest score are kept (equal scores: lower group index).
//        idx   = the K kept experts with the largest c, sorted by descending c;
//                equal c: the lower expert index comes first
//        weights[k] = s[idx[k]] / (sum_k s[idx[k]] + NORM_EPS) * SCALE
//          f32 mode:   q = s/(sum+eps), then q*SCALE.
//          dtype mode (KILN_SIGMOID_IN_DTYPE=1): sum = dtype(sum_k s), den = dtype(sum + eps),
//            q = dtype(s/den), w = dtype(q*SCALE)
// Layout: logits[T,E] (dtype), bias[E] f32, weights[T,K] f32, indices[T,K] u32; row-major.
// Defines: KILN_DTYPE, KILN_E, KILN_K, KILN_N_GROUP, KILN_TOPK_GROUP, KILN_NORM_EPS,
//          KILN_SCALE (float literals), KILN_SIGMOID_IN_DTYPE (0/1).
// Launch: thread t owns row t; scores in per-thread arrays, K upward scans.
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

extern "C" __global__ void sigmoid_topk(const scalar_t* logits, const float* bias, float* weights,
                                        unsigned int* indices, int T) {
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)T) return;
    const scalar_t* lr = logits + t * KILN_E;
    float s[KILN_E], c[KILN_E];
    bool out_of_play[KILN_E];
    for (int e = 0; e < KILN_E; ++e) {
        float v = 1.0f / (1.0f + expf(-to_f(lr[e])));
#if KILN_SIGMOID_IN_DTYPE
        v = round_dt(v);
#endif
        s[e] = v;
        c[e] = v + bias[e];
        out_of_play[e] = false;
    }
#if KILN_N_GROUP > 1
    {
        const int G = KILN_E / KILN_N_GROUP;
        float gs[KILN_N_GROUP];
        bool kept[KILN_N_GROUP];
        for (int g = 0; g < KILN_N_GROUP; ++g) {
            float m1 = -__int_as_float(0x7f800000), m2 = m1;
            for (int i = 0; i < G; ++i) {
                const float v = c[g * G + i];
                if (v > m1) { m2 = m1; m1 = v; } else if (v > m2) { m2 = v; }
            }
            gs[g] = m1 + m2;
            kept[g] = false;
        }
        for (int r = 0; r < KILN_TOPK_GROUP; ++r) {
            int best = -1;
            for (int g = 0; g < KILN_N_GROUP; ++g)
                if (!kept[g] && (best < 0 || gs[g] > gs[best])) best = g;
            kept[best] = true;
        }
        for (int e = 0; e < KILN_E; ++e) out_of_play[e] = !kept[e / G];
    }
#endif
    float ps[KILN_K];
    int pi[KILN_K];
    float tot = 0.f;
    for (int k = 0; k < KILN_K; ++k) {
        int best = -1;
        for (int e = 0; e < KILN_E; ++e)
            if (!out_of_play[e] && (best < 0 || c[e] > c[best])) best = e;
        out_of_play[best] = true;
        ps[k] = s[best];
        pi[k] = best;
        tot += s[best];
    }
#if KILN_SIGMOID_IN_DTYPE
    const float den = round_dt(round_dt(tot) + KILN_NORM_EPS);
#else
    const float den = tot + KILN_NORM_EPS;
#endif
    for (int k = 0; k < KILN_K; ++k) {
#if KILN_SIGMOID_IN_DTYPE
        weights[t * KILN_K + k] = round_dt(round_dt(ps[k] / den) * KILN_SCALE);
#else
        weights[t * KILN_K + k] = (ps[k] / den) * KILN_SCALE;
#endif
        indices[t * KILN_K + k] = (unsigned int)pi[k];
    }
}
