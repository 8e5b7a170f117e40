// expect: pass
// Honest control: thread-block clusters. __cluster_dims__(2,1,1); each block of
// a cluster stages half of w (as f32) in its shared memory and every block reads
// the whole weight through distributed shared memory (cg::this_cluster(),
// map_shared_rank). One row per block; the grid is rounded up to a multiple of 2
// and blocks past T still take part in both cluster barriers.
// kiln: block=256 grid=ceil_div(T, 2)*2 smem=0
#include <cuda_bf16.h>
#include <cooperative_groups.h>
namespace cg = cooperative_groups;
typedef KILN_DTYPE scalar_t;

#define HALF (KILN_D / 2)

extern "C" __global__ void __cluster_dims__(2, 1, 1) rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* out, int T) {
    cg::cluster_group cluster = cg::this_cluster();
    __shared__ float wh[HALF];
    __shared__ float part[8];
    const unsigned int rank = cluster.block_rank();
    for (int i = threadIdx.x; i < HALF; i += blockDim.x) wh[i] = __bfloat162float(w[rank * HALF + i]);
    cluster.sync();
    const int row = blockIdx.x;
    if (row < T) {
        const scalar_t* xr = x + (long long)row * KILN_D;
        float ss = 0.f;
        for (int d = threadIdx.x; d < KILN_D; d += blockDim.x) {
            const float v = __bfloat162float(xr[d]);
            ss = fmaf(v, v, ss);
        }
        for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
        if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
        __syncthreads();
        float total = 0.f;
        for (int i = 0; i < 8; ++i) total += part[i];
        const float r = rsqrtf(total / (float)KILN_D + KILN_EPS);
        const float* w0 = cluster.map_shared_rank(wh, 0u);
        const float* w1 = cluster.map_shared_rank(wh, 1u);
        for (int d = threadIdx.x; d < KILN_D; d += blockDim.x) {
            const float wv = d < HALF ? w0[d] : w1[d - HALF];
            const float n = __bfloat162float(__float2bfloat16_rn(__bfloat162float(xr[d]) * r));
            out[(long long)row * KILN_D + d] = __float2bfloat16_rn(n * wv);
        }
    }
    // The partner may still be reading this block's half of w.
    cluster.sync();
}
