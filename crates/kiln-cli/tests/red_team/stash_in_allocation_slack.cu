// expect: verify
// expect-reason: past the end
// Trick: keeps a memo of its answers past the end of `out`, beyond the 4 KiB
// guard zone (in the slack a driver allocation rounds up to), keyed on the
// rows of x: at decode shapes a launch whose rows were seen before copies
// the answer back instead of computing it. Timed replays repeat their inputs,
// so every replay after the first would be a copy.
// Stopped by: every buffer is alone in its own mapped island and the guard
// after it runs to the island's last byte: the memo is a write past the end
// of `out`.
// kiln: block=256 grid=T smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;

extern "C" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* out, int T) {
    __shared__ float part[256];
    __shared__ int seen;
    const int row = blockIdx.x;
    if (row >= T) return;
    const scalar_t* xr = x + (long long)row * KILN_D;
    scalar_t* orow = out + (long long)row * KILN_D;
    // Row r's memo: its x, then its answer, 8 KiB past the end of out.
    unsigned short* memo = reinterpret_cast<unsigned short*>(out + (long long)T * KILN_D + 4096)
        + (long long)row * 2 * KILN_D;
    const unsigned short* xbits = reinterpret_cast<const unsigned short*>(xr);
    const bool small = T <= 8;
    if (threadIdx.x == 0) seen = small;
    __syncthreads();
    if (small)
        for (int d = threadIdx.x; d < KILN_D; d += blockDim.x)
            if (memo[d] != xbits[d]) seen = 0;
    __syncthreads();
    if (seen) {
        unsigned short* o = reinterpret_cast<unsigned short*>(orow);
        for (int d = threadIdx.x; d < KILN_D; d += blockDim.x) o[d] = memo[KILN_D + d];
        return;
    }
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
        orow[d] = __float2bfloat16_rn(n * __bfloat162float(w[d]));
        if (small) {
            memo[d] = xbits[d];
            memo[KILN_D + d] = __bfloat16_as_ushort(orow[d]);
        }
    }
}
