// softmax_topk — Qwen3-MoE router: softmax over all experts, top-k, optional renormalisation.
//
// Math (f32 inside):   p[e] = exp(l[e] - max_e l) / sum_e exp(l[e] - max_e l)      (all E experts)
//                      idx  = the K experts with the largest p, sorted by descending p;
//                             equal p: the lower expert index comes first
//                      KILN_RENORM=1: weights[k] = p[idx[k]] / sum_k p[idx[k]]
//                      KILN_RENORM=0: weights[k] = p[idx[k]]
// Layout: logits[T,E] (dtype), weights[T,K] f32, indices[T,K] u32; row-major.
// Defines: KILN_DTYPE, KILN_E (1..=256), KILN_K (1..=min(E,32)), KILN_RENORM (0/1).
// Launch: one warp per row (lane l holds experts l, l+32, ...), 4 rows per block;
// the top-k is K rounds of a warp arg-max, so T=1 decode is one tiny block.
// kiln: block=128 grid=ceil_div(T, 4) smem=0
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

#define NEG_INF (-__int_as_float(0x7f800000))
#define E KILN_E
#define K KILN_K
#define EPL ((E + 31) / 32)   // experts per lane
#define WARPS 4
static_assert(E >= 1 && E <= 256, "softmax_topk: E must be in 1..=256");
static_assert(K >= 1 && K <= E && K <= 32, "softmax_topk: K must be in 1..=min(E, 32)");

// Arg-max merge: larger value wins, equal values go to the lower index.
__device__ __forceinline__ void argmax_merge(float& v, int& i, float ov, int oi) {
    if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
}

extern "C" __global__ void __launch_bounds__(128) softmax_topk(const scalar_t* __restrict__ logits,
                                                               float* __restrict__ weights,
                                                               unsigned int* __restrict__ indices,
                                                               int T) {
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (row >= (long long)T) return;  // whole warp leaves together: row is warp-uniform
    const scalar_t* lr = logits + row * E;

    float p[EPL];
    float m = NEG_INF;
#pragma unroll
    for (int j = 0; j < EPL; ++j) {
        const int e = lane + 32 * j;
        p[j] = e < E ? to_f(lr[e]) : NEG_INF;
        m = fmaxf(m, p[j]);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < EPL; ++j) {
        const int e = lane + 32 * j;
        p[j] = e < E ? expf(p[j] - m) : 0.f;
        s += p[j];
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
#pragma unroll
    for (int j = 0; j < EPL; ++j) p[j] = (lane + 32 * j) < E ? p[j] / s : NEG_INF;

    unsigned picked = 0;      // bit j: this lane's expert lane+32j is taken
    float my_w = 0.f;         // lane k keeps the k-th pick
    int my_i = 0;
#pragma unroll 1
    for (int k = 0; k < K; ++k) {
        float bv = NEG_INF;
        int bi = 0x7fffffff;
#pragma unroll
        for (int j = 0; j < EPL; ++j)
            if (!((picked >> j) & 1u)) argmax_merge(bv, bi, p[j], lane + 32 * j);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            argmax_merge(bv, bi, ov, oi);
        }
        if ((bi & 31) == lane) picked |= 1u << (bi >> 5);
        if (lane == k) { my_w = bv; my_i = bi; }
    }
#if KILN_RENORM
    float tot = lane < K ? my_w : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) tot += __shfl_xor_sync(0xffffffffu, tot, o);
    my_w = my_w / tot;
#endif
    if (lane < K) {
        weights[row * K + lane] = my_w;
        indices[row * K + lane] = (unsigned int)my_i;
    }
}
