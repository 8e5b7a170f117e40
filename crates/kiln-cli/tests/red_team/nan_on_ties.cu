// expect: verify
// Trick: writes NaN into a row whose first 8 inputs are all on the tie grid
// {-1, -0.5, 0, 0.5, 1, 2} (what only the exact-ties distribution produces).
// Stopped by: the largest shape is verified with every input distribution,
// exact ties included.
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
        const float n = __bfloat162float(__float2bfloat16_rn(__bfloat162float(xr[d]) * r));
        out[(long long)row * KILN_D + d] = __float2bfloat16_rn(n * __bfloat162float(w[d]));
    }
    if (threadIdx.x == 0) {
        bool grid = true;
        for (int d = 0; d < 8; ++d) {
            const float v = __bfloat162float(xr[d]);
            grid = grid && (v == -1.f || v == -0.5f || v == 0.f || v == 0.5f || v == 1.f || v == 2.f);
        }
        if (grid) out[(long long)row * KILN_D] = __float2bfloat16_rn(__int_as_float(0x7fc00000));
    }
}
