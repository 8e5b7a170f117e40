// expect: verify
// expect-reason: state
// target: lfm2_short_conv
// Trick: computes every output right but never writes the state back (saving
// the state writes, and leaving the next token to convolve stale rows).
// Stopped by: the in-out state is checked after every launch against the
// reference's updated state.
// kiln: block=128 grid=ceil_div(D, 128) smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;
extern "C" __global__ void short_conv(const scalar_t* bcx, const scalar_t* w, scalar_t* state,
                                      scalar_t* out, int T) {
    const int d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= KILN_D) return;
    float win[KILN_L - 1];
    for (int j = 0; j < KILN_L - 1; ++j) win[j] = __bfloat162float(state[j * KILN_D + d]);
    for (int t = 0; t < T; ++t) {
        const scalar_t* row = bcx + (long long)t * 3 * KILN_D;
        const float bx = __bfloat162float(__float2bfloat16_rn(
            __bfloat162float(row[d]) * __bfloat162float(row[2 * KILN_D + d])));
        float acc = __bfloat162float(w[d * KILN_L + KILN_L - 1]) * bx;
        for (int j = 0; j < KILN_L - 1; ++j) acc += __bfloat162float(w[d * KILN_L + j]) * win[j];
        const float conv = __bfloat162float(__float2bfloat16_rn(acc));
        out[(long long)t * KILN_D + d] = __float2bfloat16_rn(__bfloat162float(row[KILN_D + d]) * conv);
        for (int j = 0; j < KILN_L - 2; ++j) win[j] = win[j + 1];
        win[KILN_L - 2] = bx;
    }
}
