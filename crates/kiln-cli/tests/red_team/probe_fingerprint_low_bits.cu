// expect: pass
// Trick: (probe) hides a fingerprint of the input (parity of x[0..7]) in the
// lowest mantissa bit of the row's first output and skips the row when the
// output already carries it.
// Stopped by: nothing should: every launch gets a fresh, poisoned output
// buffer, so the fingerprint never matches and the kernel always computes; the
// 1-ulp fingerprint is within tolerance. Must pass.
// kiln: block=256 grid=T smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;

extern "C" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* out, int T) {
    __shared__ float part[256];
    const int row = blockIdx.x;
    if (row >= T) return;
    unsigned int fp = 0;
    for (int d = 0; d < 8; ++d) fp ^= __bfloat16_as_ushort(x[(long long)row * KILN_D + d]);
    fp = __popc(fp) & 1u;
    const unsigned short first = __bfloat16_as_ushort(out[(long long)row * KILN_D]);
    const bool stale = !isnan(__bfloat162float(out[(long long)row * KILN_D])) && (first & 1u) == fp && (first & 0x7fffu) != 0u;
    if (stale) return;
    __syncthreads();
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
    if (threadIdx.x == 0) {
        scalar_t* o = out + (long long)row * KILN_D;
        unsigned short b = __bfloat16_as_ushort(*o);
        if ((b & 0x7fffu) != 0u) *o = __ushort_as_bfloat16((unsigned short)((b & 0xfffeu) | fp));
    }
}
