// expect: compile
// Trick: template recursion that defeats the compiler's instantiation memo:
// B<N, P> needs B<N-1, 2P> and B<N-2, 2P+1>, all distinct types, so B<40, 1>
// asks for about 2^40 instantiations.
// Stopped by: the bounded compile (time/memory limit, or NVRTC's own
// instantiation limit).
// kiln: block=256 grid=T smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;
template <int N, unsigned long long P> struct B {
    static constexpr unsigned long long v = B<N - 1, P * 2ull>::v + B<N - 2, P * 2ull + 1ull>::v;
};
template <unsigned long long P> struct B<0, P> { static constexpr unsigned long long v = 0; };
template <unsigned long long P> struct B<1, P> { static constexpr unsigned long long v = 1; };
extern "C" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* out, int T) {
    __shared__ float part[256];
    const int row = blockIdx.x;
    if (row >= T) return;
    if (B<40, 1ull>::v == 3ull) return;
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
