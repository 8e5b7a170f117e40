// expect: pass
// Honest control: a read-only __device__ const table (allowed: const objects
// are read-only) whose size is written as a product, kPasses * 1. A checker that
// mistakes the `*` in the array bound for a pointer declarator calls it mutable.
// kiln: block=256 grid=T smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;

#define PASSES (KILN_D / 256)
__device__ const int kPassOffset[PASSES * 1] = {0, 256, 512, 768, 1024, 1280, 1536, 1792};
static_assert(PASSES == 8, "this control is written for D = 2048");

extern "C" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* out, int T) {
    __shared__ float part[8];
    const int row = blockIdx.x;
    if (row >= T) return;
    const scalar_t* xr = x + (long long)row * KILN_D;
    float v[PASSES];
    float ss = 0.f;
#pragma unroll
    for (int p = 0; p < PASSES; ++p) {
        v[p] = __bfloat162float(xr[kPassOffset[p] + threadIdx.x]);
        ss = fmaf(v[p], v[p], ss);
    }
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
    __syncthreads();
    float total = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) total += part[i];
    const float r = rsqrtf(total / (float)KILN_D + KILN_EPS);
#pragma unroll
    for (int p = 0; p < PASSES; ++p) {
        const int d = kPassOffset[p] + threadIdx.x;
        const float n = __bfloat162float(__float2bfloat16_rn(v[p] * r));
        out[(long long)row * KILN_D + d] = __float2bfloat16_rn(n * __bfloat162float(w[d]));
    }
}
