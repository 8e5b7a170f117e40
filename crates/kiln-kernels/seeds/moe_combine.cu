// moe_combine — naive seed: one thread per output element, scalar loads.
//
// Math (f32 inside, one rounding):
//   out[t,d] = dtype( sum_k weights[t,k] * expert_out[t,k,d]  (+ shared[t,d] if KILN_HAS_SHARED) )
// The k-sum runs in order k = 0..K-1 with fmaf.
// Layout: expert_out[T,K,D], weights[T,K] f32, shared[T,D] (read only when KILN_HAS_SHARED=1;
// may be null otherwise), out[T,D].
// Defines: KILN_DTYPE, KILN_D, KILN_K, KILN_HAS_SHARED (0/1).
// Launch: thread n handles the flat output element n of the T*D elements.
// kiln: block=256 grid=ceil_div(T*D, 256) smem=0
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

extern "C" __global__ void moe_combine(const scalar_t* expert_out, const float* weights, const scalar_t* shared,
                                       scalar_t* out, int T) {
    const long long n = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= (long long)T * KILN_D) return;
    const long long t = n / KILN_D;
    const long long d = n - t * KILN_D;
    float acc = 0.f;
    for (int k = 0; k < KILN_K; ++k)
        acc = fmaf(weights[t * KILN_K + k], to_f(expert_out[(t * KILN_K + k) * KILN_D + d]), acc);
#if KILN_HAS_SHARED
    acc += to_f(shared[n]);
#endif
    out[n] = from_f<scalar_t>(acc);
}
