// expect: verify
// Trick: uses w as scratch: block 0 overwrites w (doubled) and restores it
// exactly before exiting, so the input is bit-identical afterwards; the other
// blocks race with it.
// (Written with a C-style cast: const_cast is a forbidden word.)
// Stopped by: verification of the outputs: the rows that read the scratched
// weight are out of tolerance.
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
    if (row == 0) {
        scalar_t* ww = (scalar_t*)w;
        scalar_t saved[KILN_D / 256];
        for (int k = 0; k < KILN_D / 256; ++k) {
            saved[k] = ww[threadIdx.x + k * 256];
            ww[threadIdx.x + k * 256] = __float2bfloat16_rn(2.f * __bfloat162float(saved[k]));
        }
        __threadfence();
        for (int i = 0; i < 100; ++i) __nanosleep(1000);
        for (int k = 0; k < KILN_D / 256; ++k) ww[threadIdx.x + k * 256] = saved[k];
    }
}
