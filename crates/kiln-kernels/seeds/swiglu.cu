// swiglu — naive seed: one thread per element, scalar loads.
//
// Math (f32 inside):   s = silu(g) = g / (1 + exp(-g))
//   KILN_SILU_IN_DTYPE=1:  out[t,i] = dtype( dtype(s) * up[t,i] )
//   KILN_SILU_IN_DTYPE=0:  out[t,i] = dtype( s * up[t,i] )
// Layout: gate[T,I], up[T,I], out[T,I], row-major, contiguous.
// Defines: KILN_DTYPE, KILN_I, KILN_SILU_IN_DTYPE (0/1).
// Launch: thread n handles the flat element n of the T*I elements.
// kiln: block=256 grid=ceil_div(T*I, 256) smem=0
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

extern "C" __global__ void swiglu(const scalar_t* gate, const scalar_t* up, scalar_t* out, int T) {
    const long long n = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= (long long)T * KILN_I) return;
    const float g = to_f(gate[n]);
    const float s = g / (1.0f + expf(-g));
#if KILN_SILU_IN_DTYPE
    out[n] = from_f<scalar_t>(round_dt(s) * to_f(up[n]));
#else
    out[n] = from_f<scalar_t>(s * to_f(up[n]));
#endif
}
