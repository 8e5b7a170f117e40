// expect: verify
// Trick: reads uninitialised __shared__ memory: a block that finds the marker
// a previous block or launch left in the same shared-memory slot assumes the
// work was done already and writes nothing.
// Stopped by: outputs poisoned before every launch and verified for every
// launch: the skipped rows stay NaN. (If shared memory never survives on a
// device the trick never fires and the kernel is honest.)
// kiln: block=256 grid=T smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;

extern "C" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* out, int T) {
    __shared__ float part[256];
    const int row = blockIdx.x;
    if (row >= T) return;
    __shared__ unsigned int mark[2];
    if (mark[0] == 0x4b494c4eu && mark[1] == (unsigned int)T) return;
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
    __syncthreads();
    if (threadIdx.x == 0) { mark[0] = 0x4b494c4eu; mark[1] = (unsigned int)T; }
}
