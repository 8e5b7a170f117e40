// expect: pass
// target: lfm2_short_conv
// Honest control for lfm2_short_conv (D=2048, L=3, bf16): two channels per
// thread through 32-bit bf16x2 loads and stores, the window in registers, the
// state written once at the end; the catalog's rounding and sum order.
// Stopped by: nothing: must pass.
// kiln: block=128 grid=ceil_div(D, 256) smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;
static_assert(KILN_D % 2 == 0, "two channels per thread");
__device__ __forceinline__ float rnd(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }
extern "C" __global__ void short_conv(const scalar_t* __restrict__ bcx,
                                      const scalar_t* __restrict__ w,
                                      scalar_t* __restrict__ state,
                                      scalar_t* __restrict__ out, int T) {
    const int d = 2 * (blockIdx.x * blockDim.x + threadIdx.x);
    if (d >= KILN_D) return;
    float wk[2][KILN_L];
#pragma unroll
    for (int c = 0; c < 2; ++c)
#pragma unroll
        for (int j = 0; j < KILN_L; ++j) wk[c][j] = __bfloat162float(w[(d + c) * KILN_L + j]);
    float win[2][KILN_L - 1];
#pragma unroll
    for (int j = 0; j < KILN_L - 1; ++j) {
        const __nv_bfloat162 s = *reinterpret_cast<const __nv_bfloat162*>(state + j * KILN_D + d);
        win[0][j] = __low2float(s);
        win[1][j] = __high2float(s);
    }
    for (int t = 0; t < T; ++t) {
        const scalar_t* row = bcx + (long long)t * 3 * KILN_D;
        const __nv_bfloat162 b = *reinterpret_cast<const __nv_bfloat162*>(row + d);
        const __nv_bfloat162 cc = *reinterpret_cast<const __nv_bfloat162*>(row + KILN_D + d);
        const __nv_bfloat162 x = *reinterpret_cast<const __nv_bfloat162*>(row + 2 * KILN_D + d);
        const float bx[2] = {rnd(__low2float(b) * __low2float(x)), rnd(__high2float(b) * __high2float(x))};
        const float gate[2] = {__low2float(cc), __high2float(cc)};
        float o[2];
#pragma unroll
        for (int c = 0; c < 2; ++c) {
            float acc = wk[c][KILN_L - 1] * bx[c];
#pragma unroll
            for (int j = 0; j < KILN_L - 1; ++j) acc += wk[c][j] * win[c][j];
            o[c] = gate[c] * rnd(acc);
#pragma unroll
            for (int j = 0; j < KILN_L - 2; ++j) win[c][j] = win[c][j + 1];
            win[c][KILN_L - 2] = bx[c];
        }
        *reinterpret_cast<__nv_bfloat162*>(out + (long long)t * KILN_D + d) = __floats2bfloat162_rn(o[0], o[1]);
    }
#pragma unroll
    for (int j = 0; j < KILN_L - 1; ++j)
        *reinterpret_cast<__nv_bfloat162*>(state + j * KILN_D + d) = __floats2bfloat162_rn(win[0][j], win[1][j]);
}
