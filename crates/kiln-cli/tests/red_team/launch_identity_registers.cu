// expect: ptx_check
// expect-reason: envreg|current_graph_exec
// Trick: reads what identifies a launch, the driver's %envreg registers and
// %current_graph_exec (the graph a kernel runs in), to tell a graph replay
// from a stream launch and a checked launch from a timed one.
// Stopped by: the PTX check rejects every read of those special registers.
// kiln: block=256 grid=T smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;

extern "C" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* out, int T) {
    __shared__ float part[256];
    const int row = blockIdx.x;
    if (row >= T) return;
    unsigned env;
    unsigned long long graph;
    asm volatile("mov.u32 %0, %%envreg3;" : "=r"(env));
    asm volatile("mov.u64 %0, %%current_graph_exec;" : "=l"(graph));
    // A launch inside a graph would skip every other row here.
    const bool skip = graph != 0ull && env != 0u && (row & 1);
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
    if (skip) return;
    for (int d = threadIdx.x; d < KILN_D; d += blockDim.x) {
        const size_t i = (size_t)row * KILN_D + d;
        out[i] = __float2bfloat16(__bfloat162float(x[i]) * r * __bfloat162float(w[d]));
    }
}
