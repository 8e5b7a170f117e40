// softmax_topk — Qwen3-MoE router: softmax over all experts, top-k, optional renormalisation.
//
// Math (f32 inside):   p[e] = exp(l[e] - max_e l) / sum_e exp(l[e] - max_e l)      (all E experts)
//                      idx  = the K experts with the largest p, sorted by descending p;
//                             equal p: the lower expert index comes first
//                      KILN_RENORM=1: weights[k] = p[idx[k]] / sum_k p[idx[k]]
//                      KILN_RENORM=0: weights[k] = p[idx[k]]
// Layout: logits[T,E] (dtype), weights[T,K] f32, indices[T,K] u32; row-major.
// Defines: KILN_DTYPE, KILN_E (1..=256), KILN_K (1..=min(E,32)), KILN_RENORM (0/1).
// Launch: one warp per row (lane l holds experts l, l+32, ...), 4 rows per block.
// The top-k is K rounds of a warp arg-max done with two single-instruction warp
// reductions (redux.sync, sm_80+) on order-preserving integer keys: the largest
// key, then the lowest index holding it. Why: the shuffle arg-max took five
// dependent shuffle pairs per round; the row max is one reduction too.
// Selection runs on exp(l - max); only the K winners are divided by the sum
// (p is monotone in it: only near-ties, which the contract lets swap, can order
// differently), and every lane sums the winners as they come (no final shuffles).
// Early launch: the models may start this kernel while the one before it runs; it waits
// (griddepcontrol.wait) before its first memory access.
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

#define E KILN_E
#define K KILN_K
#define EPL ((E + 31) / 32)   // experts per lane
#define WARPS 4
#define FULL 0xffffffffu
static_assert(E >= 1 && E <= 256, "softmax_topk: E must be in 1..=256");
static_assert(K >= 1 && K <= E && K <= 32, "softmax_topk: K must be in 1..=min(E, 32)");

// Order-preserving map of a float to an unsigned int, and back (for the row max).
__device__ __forceinline__ unsigned ordered(float v) {
    const unsigned b = __float_as_uint(v);
    return b ^ ((unsigned)((int)b >> 31) | 0x80000000u);
}
__device__ __forceinline__ float unordered(unsigned o) {
    return __uint_as_float(o ^ ((o & 0x80000000u) ? 0x80000000u : 0xffffffffu));
}

// Warp-wide max and min of unsigned keys: one redux.sync instruction from sm_80
// on, a butterfly of shuffles before it.
__device__ __forceinline__ unsigned warp_max_u32(unsigned v) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
    return __reduce_max_sync(0xffffffffu, v);
#else
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
#endif
}
__device__ __forceinline__ unsigned warp_min_u32(unsigned v) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
    return __reduce_min_sync(0xffffffffu, v);
#else
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
#endif
}

extern "C" __global__ void __launch_bounds__(128) softmax_topk(const scalar_t* __restrict__ logits,
                                                               float* __restrict__ weights,
                                                               unsigned int* __restrict__ indices,
                                                               int T) {
#if __CUDA_ARCH__ >= 900
    // Early launch: wait for the kernel before this one, then let the next one be scheduled.
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (row >= (long long)T) return;  // whole warp leaves together: row is warp-uniform
    const scalar_t* lr = logits + row * E;

    float x[EPL];
    unsigned om = 0u;  // below every float's key
#pragma unroll
    for (int j = 0; j < EPL; ++j) {
        const int e = lane + 32 * j;
        x[j] = e < E ? to_f(lr[e]) : 0.f;
        if (e < E) om = max(om, ordered(x[j]));
    }
    const float m = unordered(warp_max_u32(om));
    // Keys: bits of exp(l - m) (>= 0, so unsigned order is value order) plus one;
    // 0 marks padding and experts already taken.
    unsigned key[EPL];
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < EPL; ++j) {
        const int e = lane + 32 * j;
        const float v = e < E ? expf(x[j] - m) : 0.f;
        s += v;
        key[j] = e < E ? __float_as_uint(v) + 1u : 0u;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(FULL, s, o);

    float my_p = 0.f, tot = 0.f;
    unsigned my_i = 0;
#pragma unroll 1
    for (int k = 0; k < K; ++k) {
        // This lane's best untaken expert; ascending j keeps the lower index on ties.
        unsigned bk = 0, bi = 0xffffffffu;
#pragma unroll
        for (int j = 0; j < EPL; ++j)
            if (key[j] > bk) { bk = key[j]; bi = lane + 32 * j; }
        const unsigned top = warp_max_u32(bk);
        const unsigned win = warp_min_u32(bk == top ? bi : 0xffffffffu);
#pragma unroll
        for (int j = 0; j < EPL; ++j)
            if (lane + 32 * j == (int)win) key[j] = 0u;
        const float p = __uint_as_float(top - 1u) / s;
        tot += p;
        if (lane == k) { my_p = p; my_i = win; }
    }
#if KILN_RENORM
    my_p = my_p / tot;
#endif
    if (lane < K) {
        weights[row * K + lane] = my_p;
        indices[row * K + lane] = my_i;
    }
}
