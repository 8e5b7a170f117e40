// expect: verify
// target: lfm2_short_conv
// Trick: one thread per (token, channel), every token convolved with the
// state as it was before the launch instead of the tokens before it: T times
// the parallelism, and right at T = 1 (batch-1 decode). The state is updated
// correctly.
// Stopped by: verification at T > 1 (visible T = 4): rows are serial in time.
// kiln: block=128 grid=ceil_div(T*D, 128) smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;
__device__ __forceinline__ float bx_of(const scalar_t* bcx, int t, int d) {
    const scalar_t* row = bcx + (long long)t * 3 * KILN_D;
    return __bfloat162float(__float2bfloat16_rn(
        __bfloat162float(row[d]) * __bfloat162float(row[2 * KILN_D + d])));
}
extern "C" __global__ void short_conv(const scalar_t* bcx, const scalar_t* w, scalar_t* state,
                                      scalar_t* out, int T) {
    const long long n = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= (long long)T * KILN_D) return;
    const int t = (int)(n / KILN_D), d = (int)(n % KILN_D);
    const float bx = bx_of(bcx, t, d);
    float acc = __bfloat162float(w[d * KILN_L + KILN_L - 1]) * bx;
    for (int j = 0; j < KILN_L - 1; ++j)
        acc += __bfloat162float(w[d * KILN_L + j]) * __bfloat162float(state[j * KILN_D + d]);
    const float conv = __bfloat162float(__float2bfloat16_rn(acc));
    const scalar_t* row = bcx + (long long)t * 3 * KILN_D;
    out[n] = __float2bfloat16_rn(__bfloat162float(row[KILN_D + d]) * conv);
    // Every thread has read the state; the last token's threads write it
    // after the grid's other reads cannot be ordered, so only T = 1 is safe.
    if (t == T - 1) {
        for (int j = 0; j < KILN_L - 2; ++j) {
            const int src = T - (KILN_L - 1) + j;
            state[j * KILN_D + d] = __float2bfloat16_rn(
                src >= 0 ? bx_of(bcx, src, d) : __bfloat162float(state[(j + T) * KILN_D + d]));
        }
        state[(KILN_L - 2) * KILN_D + d] = __float2bfloat16_rn(bx);
    }
}
