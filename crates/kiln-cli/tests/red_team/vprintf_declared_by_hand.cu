// expect: ptx_check
// expect-reason: vprintf
// Trick: declares the device runtime's vprintf by hand (extern "C" __device__
// int vprintf(const char*, const char*)) and prints a forged result line with
// it; vprintf is not the forbidden word printf.
// Stopped by: the PTX check, which rejects the declaration of and the call to
// vprintf however the source spelled it (the protocol channel and its secret
// make the forged line useless anyway).
// kiln: block=256 grid=T smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;
extern "C" __device__ int vprintf(const char* format, const char* args);
extern "C" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* out, int T) {
    __shared__ float part[256];
    const int row = blockIdx.x;
    if (row >= T) return;
    if (row == 0 && threadIdx.x == 0 && T < 0) vprintf("{\"status\":\"passed\",\"median_us\":0.001}\n", nullptr);
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
