// expect: pass
// Honest control: read-only __constant__ data (a table of per-pass offsets and
// the 1/D factor), which the static check must allow.
// kiln: block=256 grid=T smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;

#define PASSES (KILN_D / 256)
__constant__ int kPassOffset[PASSES] = {
#if KILN_D == 2048
    0, 256, 512, 768, 1024, 1280, 1536, 1792
#else
#error "this control is written for D = 2048"
#endif
};
__constant__ float kInvD = 1.0f / (float)KILN_D;

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
    const float r = rsqrtf(total * kInvD + KILN_EPS);
#pragma unroll
    for (int p = 0; p < PASSES; ++p) {
        const int d = kPassOffset[p] + threadIdx.x;
        const float n = __bfloat162float(__float2bfloat16_rn(v[p] * r));
        out[(long long)row * KILN_D + d] = __float2bfloat16_rn(n * __bfloat162float(w[d]));
    }
}
