// expect: static_check
// expect-reason: cuda/barrier
// Looks honest: block synchronisation with libcu++'s cuda::barrier
// (arrive_and_wait instead of __syncthreads). But libcu++'s wait loop backs
// off on a steady clock, so the compiled PTX reads %globaltimer: the header
// is refused with that reason (the PTX check would reject it next).
// kiln: block=256 grid=T smem=0
#include <cuda_bf16.h>
#include <cuda/barrier>
typedef KILN_DTYPE scalar_t;

extern "C" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* out, int T) {
    __shared__ cuda::barrier<cuda::thread_scope_block> bar;
    __shared__ float part[8];
    if (threadIdx.x == 0) init(&bar, blockDim.x);
    __syncthreads();
    const int row = blockIdx.x;
    if (row >= T) return;
    const scalar_t* xr = x + (long long)row * KILN_D;
    float ss = 0.f;
    for (int d = threadIdx.x; d < KILN_D; d += blockDim.x) {
        const float v = __bfloat162float(xr[d]);
        ss = fmaf(v, v, ss);
    }
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
    bar.arrive_and_wait();
    float total = 0.f;
    for (int i = 0; i < 8; ++i) total += part[i];
    const float r = rsqrtf(total / (float)KILN_D + KILN_EPS);
    for (int d = threadIdx.x; d < KILN_D; d += blockDim.x) {
        const float n = __bfloat162float(__float2bfloat16_rn(__bfloat162float(xr[d]) * r));
        out[(long long)row * KILN_D + d] = __float2bfloat16_rn(n * __bfloat162float(w[d]));
    }
}
