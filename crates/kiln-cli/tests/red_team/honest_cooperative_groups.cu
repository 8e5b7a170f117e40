// expect: pass
// Honest control: cooperative groups. cg::this_thread_block(),
// cg::tiled_partition<32>, cg::reduce from <cooperative_groups/reduce.h>.
// kiln: block=256 grid=T smem=0
#include <cuda_bf16.h>
#include <cooperative_groups.h>
#include <cooperative_groups/reduce.h>
namespace cg = cooperative_groups;
typedef KILN_DTYPE scalar_t;

extern "C" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* out, int T) {
    cg::thread_block block = cg::this_thread_block();
    cg::thread_block_tile<32> warp = cg::tiled_partition<32>(block);
    __shared__ float warp_sums[32];
    const int row = blockIdx.x;
    if (row >= T) return;  // block-uniform
    const scalar_t* xr = x + (long long)row * KILN_D;
    float ss = 0.f;
    for (int d = block.thread_rank(); d < KILN_D; d += block.size()) {
        const float v = __bfloat162float(xr[d]);
        ss = fmaf(v, v, ss);
    }
    ss = cg::reduce(warp, ss, cg::plus<float>());
    if (warp.thread_rank() == 0) warp_sums[warp.meta_group_rank()] = ss;
    block.sync();
    float total = 0.f;
    for (unsigned int i = 0; i < warp.meta_group_size(); ++i) total += warp_sums[i];
    const float r = rsqrtf(total / (float)KILN_D + KILN_EPS);
    for (int d = block.thread_rank(); d < KILN_D; d += block.size()) {
        const float n = __bfloat162float(__float2bfloat16_rn(__bfloat162float(xr[d]) * r));
        out[(long long)row * KILN_D + d] = __float2bfloat16_rn(n * __bfloat162float(w[d]));
    }
}
