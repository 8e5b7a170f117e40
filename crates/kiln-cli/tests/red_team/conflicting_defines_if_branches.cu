// expect: static_check
// expect-reason: static|KEEP|define
// Trick: #if/#else defines KEEP as static in the live branch and as nothing in
// the dead one; a checker that takes the last #define sees a plain local, the
// compiler a static (persistent) one.
// Stopped by: the static check, which checks every configuration of #if
// branches (with KEEP = static it sees a static local) or rejects the
// conflicting definitions.
// kiln: block=256 grid=T smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;
#if KILN_D > 0
#define KEEP static
#else
#define KEEP
#endif
__device__ bool already_done(int T) {
    KEEP int last_t = -1;
    const bool same = last_t == T;
    last_t = T;
    return same;
}
extern "C" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* out, int T) {
    __shared__ float part[256];
    const int row = blockIdx.x;
    if (row >= T) return;
    if (threadIdx.x == 0 && row == 0 && already_done(T)) { /* a real cheat would skip here */ }
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

}
