// expect: pass
// Honest control: __launch_bounds__(128, 8) and fully unrolled loops
// (#pragma unroll) over 16 elements per thread held in registers.
// kiln: block=128 grid=T smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;

#define THREADS 128
#define PER (KILN_D / THREADS)

extern "C" __global__ void __launch_bounds__(THREADS, 8) rmsnorm(const scalar_t* __restrict__ x,
                                                                 const scalar_t* __restrict__ w,
                                                                 scalar_t* __restrict__ out, int T) {
    __shared__ float part[THREADS / 32];
    const int row = blockIdx.x;
    if (row >= T) return;
    const scalar_t* xr = x + (long long)row * KILN_D;
    float v[PER];
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < PER; ++i) {
        v[i] = __bfloat162float(xr[threadIdx.x + i * THREADS]);
        ss = fmaf(v[i], v[i], ss);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
    __syncthreads();
    float total = 0.f;
#pragma unroll
    for (int i = 0; i < THREADS / 32; ++i) total += part[i];
    const float r = rsqrtf(total / (float)KILN_D + KILN_EPS);
#pragma unroll
    for (int i = 0; i < PER; ++i) {
        const int d = threadIdx.x + i * THREADS;
        const float n = __bfloat162float(__float2bfloat16_rn(v[i] * r));
        out[(long long)row * KILN_D + d] = __float2bfloat16_rn(n * __bfloat162float(w[d]));
    }
}
