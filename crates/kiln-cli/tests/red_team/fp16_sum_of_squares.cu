// expect: verify
// Trick: accumulates the sum of squares in fp16 (per thread): fine for unit-
// scale rows, overflows to inf once |x| > 256 (wide magnitudes 1e-3..1e3),
// which zeroes the row.
// Stopped by: the largest shape is verified with the wide-magnitude
// distribution.
// kiln: block=256 grid=T smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;
#include <cuda_fp16.h>
extern "C" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* out, int T) {
    __shared__ float part[256];
    const int row = blockIdx.x;
    if (row >= T) return;

    const scalar_t* xr = x + (long long)row * KILN_D;
    __half acc = __float2half(0.f);
    for (int d = threadIdx.x; d < KILN_D; d += blockDim.x) { const __half v = __float2half(__bfloat162float(xr[d])); acc = __hfma(v, v, acc); }
    part[threadIdx.x] = __half2float(acc);
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
