// sigmoid_topk — DeepSeek-V3-style router: sigmoid scores, bias-corrected grouped top-k.
//
// Math:  s[e]  = sigmoid(l[e]) = 1 / (1 + exp(-l[e]))                  (f32)
//          KILN_SIGMOID_IN_DTYPE=1 (LFM2: the sigmoid runs in the model dtype): s[e] = dtype(s[e])
//        c[e]  = s[e] + bias[e]                                          (f32 selection score)
//        groups (KILN_N_GROUP > 1): G = E / N_GROUP consecutive experts per group;
//          group score = sum of the group's two largest c; the KILN_TOPK_GROUP groups
//          with the largest score are kept (equal scores: lower group index), the
//          other groups' experts are excluded. N_GROUP = 1 keeps everything.
//        idx   = the K kept experts with the largest c, sorted by descending c;
//                equal c: the lower expert index comes first
//        weights[k] = s[idx[k]] / (sum_k s[idx[k]] + NORM_EPS) * SCALE
//          f32 mode (GLM-4.7-Flash):   q = s/(sum+eps) rounded to f32, then q*SCALE.
//          dtype mode (LFM2, HF rounds every step in the model dtype):
//            sum = dtype(sum_k s), den = dtype(sum + eps), q = dtype(s/den), w = dtype(q*SCALE)
//        The bias only chooses; the weights use the unbiased s.
// Layout: logits[T,E] (dtype; GLM computes its router logits in f32, so use float there),
//         bias[E] f32, weights[T,K] f32, indices[T,K] u32; row-major.
// Defines: KILN_DTYPE, KILN_E (1..=256), KILN_K (1..=32), KILN_N_GROUP (E % N_GROUP == 0,
//          E/N_GROUP >= 2 when N_GROUP > 1, N_GROUP <= 32), KILN_TOPK_GROUP (1..=N_GROUP,
//          K <= TOPK_GROUP*E/N_GROUP), KILN_NORM_EPS, KILN_SCALE (float literals),
//          KILN_SIGMOID_IN_DTYPE (0/1).
// Launch: one warp per row (lane l holds experts l, l+32, ...), 4 rows per block;
// grouped routing stages the row's scores in E floats of static shared memory per warp.
// The expert top-k is K rounds of a warp arg-max done with two single-instruction
// warp reductions (redux.sync, sm_80+) on order-preserving integer keys of c: the
// largest key, then the lowest index holding it; the winner's s comes from its
// lane in one shuffle, and every lane sums the winners as they come. Why: the
// shuffle arg-max took five dependent triples of shuffles per round.
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

#define NEG_INF (-__int_as_float(0x7f800000))
#define E KILN_E
#define K KILN_K
#define NG KILN_N_GROUP
#define EPL ((E + 31) / 32)   // experts per lane
#define WARPS 4
static_assert(E >= 1 && E <= 256, "sigmoid_topk: E must be in 1..=256");
static_assert(K >= 1 && K <= 32, "sigmoid_topk: K must be in 1..=32");
static_assert(NG >= 1 && NG <= 32 && E % NG == 0, "sigmoid_topk: N_GROUP must divide E and be <= 32");
static_assert(KILN_TOPK_GROUP >= 1 && KILN_TOPK_GROUP <= NG, "sigmoid_topk: TOPK_GROUP must be in 1..=N_GROUP");
static_assert(K <= KILN_TOPK_GROUP * (E / NG), "sigmoid_topk: K exceeds the experts of the kept groups");
static_assert(NG == 1 || E / NG >= 2, "sigmoid_topk: groups need at least 2 experts");

__device__ __forceinline__ bool better(float ov, int oi, float v, int i) {
    return ov > v || (ov == v && oi < i);
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

extern "C" __global__ void __launch_bounds__(128) sigmoid_topk(const scalar_t* __restrict__ logits,
                                                               const float* __restrict__ bias,
                                                               float* __restrict__ weights,
                                                               unsigned int* __restrict__ indices,
                                                               int T) {
#if __CUDA_ARCH__ >= 900
    // Early launch: wait for the kernel before this one, then let the next one be scheduled.
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const long long row = (long long)blockIdx.x * WARPS + warp;
    if (row >= (long long)T) return;  // warp-uniform exit
    const scalar_t* lr = logits + row * E;

    float s[EPL], c[EPL];
#pragma unroll
    for (int j = 0; j < EPL; ++j) {
        const int e = lane + 32 * j;
        if (e < E) {
            float v = 1.0f / (1.0f + expf(-to_f(lr[e])));
#if KILN_SIGMOID_IN_DTYPE
            v = round_dt(v);
#endif
            s[j] = v;
            c[j] = v + __ldg(bias + e);
        } else {
            s[j] = 0.f;
            c[j] = NEG_INF;
        }
    }

#if KILN_N_GROUP > 1
    {
        constexpr int G = E / NG;
        __shared__ float sc[WARPS][E];
#pragma unroll
        for (int j = 0; j < EPL; ++j) if (lane + 32 * j < E) sc[warp][lane + 32 * j] = c[j];
        __syncwarp();
        float gs = NEG_INF;  // lane g < NG: score of group g (sum of its top-2 c)
        if (lane < NG) {
            float m1 = NEG_INF, m2 = NEG_INF;
            for (int i = 0; i < G; ++i) {
                const float v = sc[warp][lane * G + i];
                if (v > m1) { m2 = m1; m1 = v; } else if (v > m2) { m2 = v; }
            }
            gs = m1 + m2;
        }
        unsigned kept = 0;  // bit g: group g is kept (same on every lane)
#pragma unroll 1
        for (int r = 0; r < KILN_TOPK_GROUP; ++r) {
            float bv = (lane < NG && !((kept >> lane) & 1u)) ? gs : NEG_INF;
            int bi = (lane < NG && !((kept >> lane) & 1u)) ? lane : 0x7fffffff;
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
                const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
                if (better(ov, oi, bv, bi)) { bv = ov; bi = oi; }
            }
            kept |= 1u << bi;
        }
#pragma unroll
        for (int j = 0; j < EPL; ++j) {
            const int e = lane + 32 * j;
            if (e < E && !((kept >> (e / G)) & 1u)) c[j] = NEG_INF;
        }
    }
#endif

    // Keys: c mapped to unsigned integers in the same order; 0 marks padding
    // and experts already taken (every finite or infinite c maps above 0).
    unsigned key[EPL];
#pragma unroll
    for (int j = 0; j < EPL; ++j) {
        const unsigned b = __float_as_uint(c[j]);
        key[j] = (lane + 32 * j) < E ? (b ^ ((unsigned)((int)b >> 31) | 0x80000000u)) : 0u;
    }
    float my_s = 0.f, tot = 0.f;
    unsigned my_i = 0;
#pragma unroll 1
    for (int k = 0; k < K; ++k) {
        // This lane's best untaken expert; ascending j keeps the lower index on ties.
        unsigned bk = 0, bi = 0xffffffffu;
        float bs = 0.f;
#pragma unroll
        for (int j = 0; j < EPL; ++j)
            if (key[j] > bk) { bk = key[j]; bi = lane + 32 * j; bs = s[j]; }
        const unsigned top = warp_max_u32(bk);
        const unsigned win = warp_min_u32(bk == top ? bi : 0xffffffffu);
        const float ws = __shfl_sync(0xffffffffu, bs, win & 31);
#pragma unroll
        for (int j = 0; j < EPL; ++j)
            if (lane + 32 * j == (int)win) key[j] = 0u;
        tot += ws;
        if (lane == k) { my_s = ws; my_i = win; }
    }
#if KILN_SIGMOID_IN_DTYPE
    const float den = round_dt(round_dt(tot) + KILN_NORM_EPS);
    const float w = round_dt(round_dt(my_s / den) * KILN_SCALE);
#else
    const float den = tot + KILN_NORM_EPS;
    const float q = my_s / den;
    const float w = q * KILN_SCALE;
#endif
    if (lane < K) {
        weights[row * K + lane] = w;
        indices[row * K + lane] = my_i;
    }
}
