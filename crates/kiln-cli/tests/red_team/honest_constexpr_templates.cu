// expect: pass
// Honest control: constexpr namespace constants, a templated block reduction
// and a templated element converter (no macros beyond the target's defines).
// kiln: block=128 grid=T smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;

constexpr int kD = KILN_D;
constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr float kEps = KILN_EPS;

template <typename S> struct Conv;
template <> struct Conv<__nv_bfloat16> {
    static __device__ __forceinline__ float in(__nv_bfloat16 v) { return __bfloat162float(v); }
    static __device__ __forceinline__ __nv_bfloat16 out(float v) { return __float2bfloat16_rn(v); }
};

template <int WARPS>
__device__ __forceinline__ float block_sum(float v, float* scratch) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
    __syncthreads();
    float total = 0.f;
#pragma unroll
    for (int i = 0; i < WARPS; ++i) total += scratch[i];
    return total;
}

template <int D, int THREADS>
__device__ __forceinline__ void norm_row(const scalar_t* xr, const scalar_t* w, scalar_t* orow) {
    __shared__ float scratch[THREADS / 32];
    constexpr int PER = D / THREADS;
    static_assert(D % THREADS == 0, "whole elements per thread");
    float v[PER];
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < PER; ++i) {
        v[i] = Conv<scalar_t>::in(xr[threadIdx.x + i * THREADS]);
        ss = fmaf(v[i], v[i], ss);
    }
    const float r = rsqrtf(block_sum<THREADS / 32>(ss, scratch) / (float)D + kEps);
#pragma unroll
    for (int i = 0; i < PER; ++i) {
        const int d = threadIdx.x + i * THREADS;
        const float n = Conv<scalar_t>::in(Conv<scalar_t>::out(v[i] * r));
        orow[d] = Conv<scalar_t>::out(n * Conv<scalar_t>::in(w[d]));
    }
}

extern "C" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* out, int T) {
    static_assert(kWarps * 32 == kThreads, "whole warps");
    const int row = blockIdx.x;
    if (row >= T) return;
    norm_row<kD, kThreads>(x + (long long)row * kD, w, out + (long long)row * kD);
}
