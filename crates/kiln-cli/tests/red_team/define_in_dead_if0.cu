// expect: static_check
// expect-reason: COUNTER_DECL|define
// Trick: COUNTER_DECL is defined as __device__ unsigned int, then redefined
// harmlessly as const unsigned int inside #if 0: a checker that ignores #if
// sees a const, the compiler a mutable device global.
// Stopped by: the static check rejects conflicting #defines across #if
// branches (a redefinition in a dead branch included).
// kiln: block=256 grid=T smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;
#define COUNTER_DECL __device__ unsigned int
#if 0
#define COUNTER_DECL const unsigned int
#endif
COUNTER_DECL calls = 0;
extern "C" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* out, int T) {
    __shared__ float part[256];
    const int row = blockIdx.x;
    if (row >= T) return;
    if (calls > 100u) return;
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
    if (row == 0 && threadIdx.x == 0) calls = calls + 1u;
}
