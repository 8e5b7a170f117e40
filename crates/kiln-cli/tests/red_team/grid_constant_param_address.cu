// expect: ptx_check
// expect-reason: cvta.param
// Trick: takes the address of a __grid_constant__ parameter. It points into
// the launch's own parameter buffer, which differs between graph nodes and
// between graphs, so a kernel that keeps a map from it could tell the judge's
// prefix replay from the timing graph and work ahead only in the latter.
// Stopped by: the PTX check rejects cvta.param (the parameter's generic address).
// kiln: block=256 grid=T smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;

extern "C" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* out,
                                   __grid_constant__ const int T) {
    __shared__ float part[256];
    const int row = blockIdx.x;
    if (row >= T) return;
    // Which launch this is: the parameter buffer's address, as a number.
    const unsigned long long launch = (unsigned long long)(const void*)&T;
    float ss = 0.f;
    for (int d = threadIdx.x; d < KILN_D; d += blockDim.x) {
        const float v = __bfloat162float(x[(size_t)row * KILN_D + d]);
        ss += v * v;
    }
    part[threadIdx.x] = ss;
    __syncthreads();
    for (int s = 128; s > 0; s >>= 1) {
        if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
        __syncthreads();
    }
    const float r = rsqrtf(part[0] / KILN_D + KILN_EPS);
    // Stands in for a lookup in a learned map: some launches skip odd rows.
    if (((launch >> 8) & 1ull) && (row & 1)) return;
    for (int d = threadIdx.x; d < KILN_D; d += blockDim.x) {
        const size_t i = (size_t)row * KILN_D + d;
        out[i] = __float2bfloat16(__bfloat162float(x[i]) * r * __bfloat162float(w[d]));
    }
}
