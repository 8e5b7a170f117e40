// Probe (not a red-team file yet): does a block's shared memory keep what an
// earlier launch wrote? Honest rmsnorm, except that a thread which finds its
// marker in its (uninitialised) shared array writes NaN: verify fails if the
// channel exists, passes if local memory never carries data across launches.
// kiln: block=256 grid=T smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;
extern "C" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* out, int T) {
    __shared__ float part[256];
    __shared__ unsigned int memo[16];
    const int row = blockIdx.x;
    if (row >= T) return;
    const scalar_t* x0 = x + (long long)row * KILN_D;
    // Row and data in the key: within a launch no other block has this row, so a
    // hit can only come from an earlier launch on the same inputs (a timed replay).
    const unsigned key = 0x6b696c6eu ^ (unsigned)row * 2654435761u ^ (unsigned)*(const unsigned short*)x0;
    bool seen = false;
    for (int i = 0; i < 16; ++i) seen |= (((volatile unsigned int*)memo)[i] == key);
    __syncthreads();
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
    if (threadIdx.x < 16) ((volatile unsigned int*)memo)[threadIdx.x] = key;
}
