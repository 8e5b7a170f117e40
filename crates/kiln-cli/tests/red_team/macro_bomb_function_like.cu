// expect: compile
// Trick: function-like macros nested to 2^32 copies of a token: a preprocessor
// bomb the source scan does not expand.
// Stopped by: the bounded compile: NVRTC runs in a child process with time and
// memory limits, and running out of either is a compile failure.
// kiln: block=256 grid=T smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;
#define X2(a) a a
#define X4(a) X2(X2(a))
#define X16(a) X4(X4(a))
#define X256(a) X16(X16(a))
#define X64K(a) X256(X256(a))
#define X4G(a) X64K(X64K(a))
extern "C" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* out, int T) {
    __shared__ float part[256];
    const int row = blockIdx.x;
    if (row >= T) return;
    const int bomb = 0 X4G(+1);
    if (bomb == 3) return;
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
