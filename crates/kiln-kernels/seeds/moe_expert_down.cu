// moe_expert_down — naive seed: one warp per output element, scalar loads.
//
// Math (f32 inside): for every token t and output row r < H, with e_k = indices[t,k]:
//   y_k  = dtype( sum_i w_down[e_k,r,i] * h[t,k,i] )
//   w'_k = KILN_WEIGHT_IN_DTYPE ? dtype(weights[t,k]) : weights[t,k]
//   out[t,r] = dtype( sum_{k=0..K-1} w'_k * y_k  (+ shared[t,r] if KILN_HAS_SHARED) )
// The k-sum runs in order k = 0..K-1 with fmaf, the shared value is added last, one rounding.
// An index e_k >= E names no expert: the slot contributes 0 and neither its weight row nor its
// routing weight is read.
// Layout: h[T,K,I]; w_down[E,H,I] row-major; indices[T,K] u32; weights[T,K] f32; shared[T,H]
// (read only when KILN_HAS_SHARED=1, may be null otherwise); out[T,H].
// Defines: KILN_DTYPE, KILN_H, KILN_I, KILN_E, KILN_K, KILN_HAS_SHARED (0/1), KILN_WEIGHT_IN_DTYPE (0/1).
// Launch: warp w of the grid computes the flat output element w of the T*H; lane l sums the
// products i = l, l+32, ... of each slot and warp shuffles reduce them.
// kiln: block=256 grid=ceil_div(T*H, 8) smem=0
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

extern "C" __global__ void moe_expert_down(const scalar_t* h, const scalar_t* w_down, const unsigned int* indices,
                                           const float* weights, const scalar_t* shared, scalar_t* out, int T) {
    // Blocks are whole warps, so a warp's 32 lanes share one output and leave together.
    const long long n = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;  // t*H + r
    const int lane = threadIdx.x & 31;
    if (n >= (long long)T * KILN_H) return;
    const long long t = n / KILN_H;
    const long long r = n - t * KILN_H;
    float acc = 0.f;
    for (int k = 0; k < KILN_K; ++k) {
        const unsigned int e = indices[t * KILN_K + k];
        if (e >= (unsigned int)KILN_E) continue;
        const scalar_t* wr = w_down + ((long long)e * KILN_H + r) * KILN_I;
        const scalar_t* hr = h + (t * KILN_K + k) * KILN_I;
        float y = 0.f;
        for (int i = lane; i < KILN_I; i += 32) y = fmaf(to_f(wr[i]), to_f(hr[i]), y);
        for (int o = 16; o > 0; o >>= 1) y += __shfl_xor_sync(0xffffffffu, y, o);
        float w = weights[t * KILN_K + k];
#if KILN_WEIGHT_IN_DTYPE
        w = round_dt(w);
#endif
        acc = fmaf(w, round_dt(y), acc);
    }
#if KILN_HAS_SHARED
    acc += to_f(shared[n]);
#endif
    if (lane == 0) out[n] = from_f<scalar_t>(acc);
}
