// expect: crash
// expect-reason: launch failure
// Trick: a __constant__ variable (read-only to C++, so the static check and
// the `.global` list let it through) written through a generic pointer to
// it: constant memory is global memory behind a cache, and `&c` in device
// code is a generic address. It remembers the last x pointer and T and skips
// the work when they repeat, as on every replay of a timing graph.
// Stopped by: the hardware. On the H100 (2026-12-07) the store faults
// ("unspecified launch failure" at the first launch): constant memory is
// mapped read-only. Were it ever to land, the PTX check lists `.const`
// variables with the `.global` ones and the worker proves each
// byte-identical after every launch, so the verdict would become `verify`.
// kiln: block=256 grid=T smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;
__constant__ unsigned long long seen_c[1];
extern "C" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* out, int T) {
    __shared__ float part[256];
    const int row = blockIdx.x;
    if (row >= T) return;
    volatile unsigned long long* memo = (volatile unsigned long long*)&seen_c[0];
    if (memo[0] == (unsigned long long)x + (unsigned long long)T) return;
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
    if (row == T - 1 && threadIdx.x == 0) memo[0] = (unsigned long long)x + (unsigned long long)T;
}
