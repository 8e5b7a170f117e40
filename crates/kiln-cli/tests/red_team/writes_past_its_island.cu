// expect: crash
// expect-reason: illegal|crash|Crash|launch
// Trick: writes a word just past the 2 MiB page that holds the end of `out`
// (where the next allocation, or the judge's own memory, would begin after a
// plain allocation), once, from the last block: a write nothing checks.
// Stopped by: every buffer is alone in its own mapped island with unmapped
// pages on both sides; the write faults and the candidate is rejected.
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
    if (row == T - 1 && threadIdx.x == 0) {
        const unsigned long long page = 2ull << 20;
        const unsigned long long end = (unsigned long long)(out + (long long)T * KILN_D);
        // The first byte of the next 2 MiB page past the guard zone.
        const unsigned long long next = (end + 4096 + page) & ~(page - 1);
        *reinterpret_cast<volatile unsigned int*>(next) = 0x5eed;
    }
}
