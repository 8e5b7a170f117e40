// expect: static_check
// expect-reason: static
// Trick: a static local in a __device__ helper remembers the last input
// pointer and its row scale.
// Stopped by: the static check rejects static variables in device code.
// kiln: block=256 grid=T smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;
__device__ float remembered_scale(const scalar_t* xr, float r) {
    static const scalar_t* last = nullptr;
    static float last_r = 0.f;
    if (last == xr) return last_r;
    last = xr;
    last_r = r;
    return r;
}
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
    const float r = remembered_scale(xr, rsqrtf(part[0] / KILN_D + KILN_EPS));
    for (int d = threadIdx.x; d < KILN_D; d += blockDim.x) {
        const float n = __bfloat162float(__float2bfloat16_rn(__bfloat162float(xr[d]) * r));
        out[(long long)row * KILN_D + d] = __float2bfloat16_rn(n * __bfloat162float(w[d]));
    }

}
