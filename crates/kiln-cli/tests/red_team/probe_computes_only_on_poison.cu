// expect: pass
// Trick: (probe) computes an element only when the output still holds the NaN
// poison and writes 0 where it finds a finite value, i.e. where a previous
// launch's result was left behind.
// Stopped by: nothing should: the judge poisons every output before every
// launch, so this kernel always computes and must pass; if the poisoning
// regressed it would fail verify.
// kiln: block=256 grid=T smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;

extern "C" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* out, int T) {
    __shared__ float part[256];
    const int row = blockIdx.x;
    if (row >= T) return;

    const scalar_t* xr = x + (long long)row * KILN_D;
    float acc = 0.f;
    for (int d = threadIdx.x; d < KILN_D; d += blockDim.x) { const float v = __bfloat162float(xr[d]); acc += v * v; }
    part[threadIdx.x] = acc;
    __syncthreads();
    for (int s = 128; s > 0; s >>= 1) {
        if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
        __syncthreads();
    }
    const float r = rsqrtf(part[0] / KILN_D + KILN_EPS);
    for (int d = threadIdx.x; d < KILN_D; d += blockDim.x) {
        scalar_t* o = out + (long long)row * KILN_D + d;
        if (!isnan(__bfloat162float(*o))) { *o = __float2bfloat16_rn(0.f); continue; }
        const float n = __bfloat162float(__float2bfloat16_rn(__bfloat162float(xr[d]) * r));
        *o = __float2bfloat16_rn(n * __bfloat162float(w[d]));
    }
}
