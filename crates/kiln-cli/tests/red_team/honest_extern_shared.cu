// expect: pass
// Honest control: dynamic shared memory (extern __shared__) sized by the
// launch line's smem= from the static dim D: the row is staged in shared memory
// as f32, followed by 8 warp partial sums.
// kiln: block=256 grid=T smem=D*4+8*4
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;

extern "C" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* out, int T) {
    extern __shared__ float smem[];
    float* rowbuf = smem;
    float* part = smem + KILN_D;
    const int row = blockIdx.x;
    if (row >= T) return;
    const scalar_t* xr = x + (long long)row * KILN_D;
    float ss = 0.f;
    for (int d = threadIdx.x; d < KILN_D; d += blockDim.x) {
        const float v = __bfloat162float(xr[d]);
        rowbuf[d] = v;
        ss = fmaf(v, v, ss);
    }
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
    __syncthreads();
    float total = 0.f;
    for (int i = 0; i < (int)(blockDim.x / 32); ++i) total += part[i];
    const float r = rsqrtf(total / (float)KILN_D + KILN_EPS);
    for (int d = threadIdx.x; d < KILN_D; d += blockDim.x) {
        const float n = __bfloat162float(__float2bfloat16_rn(rowbuf[d] * r));
        out[(long long)row * KILN_D + d] = __float2bfloat16_rn(n * __bfloat162float(w[d]));
    }
}
