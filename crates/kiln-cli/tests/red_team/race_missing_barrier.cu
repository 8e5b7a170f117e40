// expect: verify
// expect-reason: out of tolerance|NaN
// The reduction has no barrier: thread 0 reads partial sums other warps have
// not written yet (the other warps first spin on extra work).
// kiln: block=256 grid=T smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;
extern "C" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* out, int T) {
    __shared__ float part[256];
    const int row = blockIdx.x;
    if (row >= T) return;
    const scalar_t* xr = x + (long long)row * KILN_D;
    float acc = 0.f;
    for (int d = threadIdx.x; d < KILN_D; d += blockDim.x) { float v = __bfloat162float(xr[d]); acc += v * v; }
    if (threadIdx.x >= 32) { for (int i = 0; i < 2000; ++i) acc = acc * 1.0000001f; __nanosleep(2000); }
    part[threadIdx.x] = acc;
    float total = 0.f;
    if (threadIdx.x == 0) { for (int i = 0; i < 256; ++i) total += part[i]; part[0] = total; }
    __syncthreads();
    const float r = rsqrtf(part[0] / KILN_D + KILN_EPS);
    for (int d = threadIdx.x; d < KILN_D; d += blockDim.x) {
        float n = __bfloat162float(__float2bfloat16_rn(__bfloat162float(xr[d]) * r));
        out[(long long)row * KILN_D + d] = __float2bfloat16_rn(n * __bfloat162float(w[d]));
    }
}
