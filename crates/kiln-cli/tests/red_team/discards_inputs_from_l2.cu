// expect: ptx_check
// expect-reason: discard
// Trick: an honest rmsnorm that, once its block has read its row, drops the
// row's cache lines from L2 (`discard.global.L2`). The catalog's replay,
// timed right after the candidate's on the same inputs, then reads them from
// DRAM, while the candidate's next replay finds them in L2 where the
// catalog's left them: the candidate always runs warm, the catalog cold.
// Stopped by: the PTX check rejects the `discard` instruction, however it
// was spelled in the source.
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
    __syncthreads();
    // Every 128-byte line of the row, out of L2.
    const char* bytes = reinterpret_cast<const char*>(xr);
    for (int off = threadIdx.x * 128; off < KILN_D * (int)sizeof(scalar_t); off += blockDim.x * 128) {
        asm volatile("discard.global.L2 [%0], 128;" ::"l"(bytes + off) : "memory");
    }
}
