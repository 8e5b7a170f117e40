// moe_combine — weighted sum of the top-k expert outputs (+ shared expert).
//
// Math (f32 inside, one rounding):
//   out[t,d] = dtype( sum_k weights[t,k] * expert_out[t,k,d]  (+ shared[t,d] if KILN_HAS_SHARED) )
// The k-sum runs in order k = 0..K-1 with fmaf. (HF eager rounds each expert's
// weighted output to the dtype before its index_add; kiln rounds once.)
// Layout: expert_out[T,K,D] (row t holds its K expert outputs, slot order = the
// router's output order), weights[T,K] f32, shared[T,D] (read only when
// KILN_HAS_SHARED=1; may be null otherwise), out[T,D]; 16-byte aligned.
// Defines: KILN_DTYPE, KILN_D (D % 8 == 0), KILN_K (1..=32), KILN_HAS_SHARED (0/1).
// Launch: one thread per 8-element output chunk; its K (+1) loads are independent.
// Early launch: the models may start this kernel while the one before it runs; it waits
// (griddepcontrol.wait) before its first memory access.
// kiln: block=256 grid=ceil_div(T*D, 256*8) smem=0
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

// 8 consecutive elements: one uint4 for 16-bit types, two for f32.
#define NU (sizeof(scalar_t) / 2)
struct Chunk { uint4 u[NU]; };
__device__ __forceinline__ Chunk load_chunk(const scalar_t* p) {
    Chunk c;
    const uint4* q = reinterpret_cast<const uint4*>(p);
#pragma unroll
    for (int i = 0; i < (int)NU; ++i) c.u[i] = __ldg(q + i);
    return c;
}
__device__ __forceinline__ void store_chunk(scalar_t* p, const Chunk& c) {
    uint4* q = reinterpret_cast<uint4*>(p);
#pragma unroll
    for (int i = 0; i < (int)NU; ++i) q[i] = c.u[i];
}
__device__ __forceinline__ float chunk_get(const Chunk& c, int j) {
    return to_f(reinterpret_cast<const scalar_t*>(c.u)[j]);
}
__device__ __forceinline__ void chunk_set(Chunk& c, int j, float v) {
    reinterpret_cast<scalar_t*>(c.u)[j] = from_f<scalar_t>(v);
}

static_assert(KILN_D % 8 == 0, "moe_combine: D must be a multiple of 8");
#define CPR (KILN_D / 8)

extern "C" __global__ void __launch_bounds__(256) moe_combine(const scalar_t* __restrict__ expert_out,
                                                              const float* __restrict__ weights,
                                                              const scalar_t* __restrict__ shared,
                                                              scalar_t* __restrict__ out, int T) {
#if __CUDA_ARCH__ >= 900
    // Early launch: wait for the kernel before this one, then let the next one be scheduled.
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    const long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= (long long)T * CPR) return;
    const long long t = c / CPR;
    const long long ci = c - t * CPR;
    Chunk e[KILN_K];
#pragma unroll
    for (int k = 0; k < KILN_K; ++k) e[k] = load_chunk(expert_out + (t * KILN_K + k) * KILN_D + ci * 8);
#if KILN_HAS_SHARED
    const Chunk s = load_chunk(shared + t * KILN_D + ci * 8);
#endif
    float acc[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[j] = 0.f;
#pragma unroll
    for (int k = 0; k < KILN_K; ++k) {
        const float wk = __ldg(weights + t * KILN_K + k);
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[j] = fmaf(wk, chunk_get(e[k], j), acc[j]);
    }
    Chunk o;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#if KILN_HAS_SHARED
        chunk_set(o, j, acc[j] + chunk_get(s, j));
#else
        chunk_set(o, j, acc[j]);
#endif
    }
    store_chunk(out + t * KILN_D + ci * 8, o);
}
