// expect: pass
// Probe: an honest rmsnorm that writes NaN wherever a thread finds, in its
// uninitialised local memory (a volatile stack array), the key it leaves
// there at the end (its row and its first input value). Local memory is
// device memory that no launch clears; on the H100 (2026-12-07) the key was
// never found in 2 runs, so nothing clears it. If this file fails `verify`,
// local memory carries data between replays on that GPU, and a kernel could
// keep its answers there: the worker would then need to clear it too.
// kiln: block=256 grid=T smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;
extern "C" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* out, int T) {
    __shared__ float part[256];
    volatile unsigned int memo[16];
    const int row = blockIdx.x;
    if (row >= T) return;
    const scalar_t* x0 = x + (long long)row * KILN_D;
    // Row and data in the 64-bit key: within a launch no other block has this row,
    // and another input set's row matches it by chance with odds of 2^-64, so a hit
    // can only come from an earlier launch on the same inputs (a timed replay).
    const unsigned* xw = (const unsigned*)x0;
    const unsigned ka = 0x6b696c6eu ^ (unsigned)row * 2654435761u ^ xw[0];
    const unsigned kb = xw[1] ^ (xw[2] * 40503u) ^ (xw[3] * 2246822519u);
    bool seen = false;
    for (int i = 0; i < 8; ++i) {
        const int j = (i + threadIdx.x) & 7;  // a run-time index keeps the array in local memory
        seen |= (memo[2 * j] == ka && memo[2 * j + 1] == kb);
    }
    const scalar_t* xr = x + (long long)row * KILN_D;
    float acc = 0.f;
    for (int d = threadIdx.x; d < KILN_D; d += blockDim.x) { float v = __bfloat162float(xr[d]); acc += v * v; }
    part[threadIdx.x] = acc;
    __syncthreads();
    for (int s = 128; s > 0; s >>= 1) {
        if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
        __syncthreads();
    }
    const float r = rsqrtf(part[0] / KILN_D + KILN_EPS);
    for (int d = threadIdx.x; d < KILN_D; d += blockDim.x) {
        float n = __bfloat162float(__float2bfloat16_rn(__bfloat162float(xr[d]) * r));
        float v = n * __bfloat162float(w[d]);
        out[(long long)row * KILN_D + d] = __float2bfloat16_rn(seen ? __int_as_float(0x7fc00000) : v);
    }
    for (int i = 0; i < 8; ++i) {
        const int j = (i + threadIdx.x) & 7;
        memo[2 * j] = ka;
        memo[2 * j + 1] = kb;
    }
}
