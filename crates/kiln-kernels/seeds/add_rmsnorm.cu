// add_rmsnorm — naive seed: one thread per row, two scalar passes over the row.
//
// Math (f32 inside):   h[t,d] = dtype(x[t,d] + residual[t,d])        -> new_residual
//                      r      = 1 / sqrt(mean_d(h[t,d]^2) + EPS)
//   KILN_CAST_BEFORE_SCALE=1:  normed[t,d] = dtype( w[d] * dtype(h[t,d] * r) )
//   KILN_CAST_BEFORE_SCALE=0:  normed[t,d] = dtype( w[d] * h[t,d] * r )
// Layout: x, residual, normed, new_residual [T,D]; w[D]; row-major, contiguous.
// Defines: KILN_DTYPE, KILN_D, KILN_EPS (float literal), KILN_CAST_BEFORE_SCALE (0/1).
// Launch: thread t owns row t; 128 rows per block.
// kiln: block=128 grid=ceil_div(T, 128) smem=0
#include <cuda_bf16.h>
#include <cuda_fp16.h>

typedef KILN_DTYPE scalar_t;

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename S> __device__ __forceinline__ S from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
// Rounds an f32 value through the storage dtype.
__device__ __forceinline__ float round_dt(float v) { return to_f(from_f<scalar_t>(v)); }
extern "C" __global__ void add_rmsnorm(const scalar_t* x, const scalar_t* residual, const scalar_t* w,
                                       scalar_t* normed, scalar_t* new_residual, int T) {
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)T) return;
    const long long base = t * KILN_D;
    float ss = 0.f;
    for (int d = 0; d < KILN_D; ++d) {
        const float h = round_dt(to_f(x[base + d]) + to_f(residual[base + d]));
        new_residual[base + d] = from_f<scalar_t>(h);
        ss = fmaf(h, h, ss);
    }
    const float r = 1.0f / sqrtf(ss / (float)KILN_D + KILN_EPS);
    for (int d = 0; d < KILN_D; ++d) {
        const float n = to_f(new_residual[base + d]) * r;  // this thread's own write
#if KILN_CAST_BEFORE_SCALE
        normed[base + d] = from_f<scalar_t>(round_dt(n) * to_f(w[d]));
#else
        normed[base + d] = from_f<scalar_t>(n * to_f(w[d]));
#endif
    }
}
