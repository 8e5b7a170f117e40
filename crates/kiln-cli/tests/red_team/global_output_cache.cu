// expect: static_check
// expect-reason: cache
// Trick: a 16 MiB namespace-scope array that caches the whole output of the
// last launch and copies it back when x repeats.
// Stopped by: the static check rejects mutable namespace-scope variables (the
// PTX check would also cap module globals at 64 KiB).
// kiln: block=256 grid=T smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;
unsigned short cache[4096 * 2048];
const void* cached_x;
extern "C" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* out, int T) {
    __shared__ float part[256];
    const int row = blockIdx.x;
    if (row >= T) return;
    if (cached_x == (const void*)x) {
        for (int d = threadIdx.x; d < KILN_D; d += blockDim.x)
            out[(long long)row * KILN_D + d] = __ushort_as_bfloat16(cache[(long long)row * KILN_D + d]);
        return;
    }
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
        const float n = __bfloat162float(__float2bfloat16_rn(__bfloat162float(xr[d]) * r));
        out[(long long)row * KILN_D + d] = __float2bfloat16_rn(n * __bfloat162float(w[d]));
    }

}
