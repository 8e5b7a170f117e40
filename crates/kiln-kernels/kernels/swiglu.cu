// swiglu — SwiGLU activation over separate gate and up tensors.
//
// Math (f32 inside):   s = silu(g) = g / (1 + exp(-g))
//   KILN_SILU_IN_DTYPE=1 (HF eager: `act_fn(gate)` returns the model dtype):
//                      out[t,i] = dtype( dtype(s) * up[t,i] )
//   KILN_SILU_IN_DTYPE=0:  out[t,i] = dtype( s * up[t,i] )   (one rounding)
// For f32 the two rules agree.
// Layout: gate[T,I], up[T,I], out[T,I], row-major, contiguous, 16-byte aligned.
// Defines: KILN_DTYPE, KILN_I (I % 8 == 0), KILN_SILU_IN_DTYPE (0/1).
// Launch: one thread per 8-element chunk (two 16-byte loads, one 16-byte
// store), a grid over every chunk. Why: every load of the kernel is issued at
// once, with no loop-carried wait; an earlier grid capped at 8 blocks per SM
// with a grid-stride loop was 14 % slower at T <= 16 and 6-9 % slower at
// T = 4096 (H200, interleaved A/B, bench/ab/swiglu_flat_*). Inputs go through
// the read-only path with normal caching (2-3 % faster than evict-first there).
// The activation is branch-free (see act).
// Early launch: the models may start this kernel while the one before it runs; it waits
// (griddepcontrol.wait) before its first memory access.
// kiln: block=256 grid=ceil_div(T*I, 256*8) smem=0
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
// Read-only path, normal caching.
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
// Element j as f32; bf16 widens straight from its 32-bit word (bit-identical
// to __bfloat162float).
template <typename S> __device__ __forceinline__ float chunk_get_t(const Chunk& c, int j) {
    return to_f(reinterpret_cast<const S*>(c.u)[j]);
}
template <> __device__ __forceinline__ float chunk_get_t<__nv_bfloat16>(const Chunk& c, int j) {
    const unsigned wd = reinterpret_cast<const unsigned*>(c.u)[j >> 1];
    return __uint_as_float((j & 1) ? (wd & 0xffff0000u) : (wd << 16));
}
__device__ __forceinline__ float chunk_get(const Chunk& c, int j) { return chunk_get_t<scalar_t>(c, j); }
__device__ __forceinline__ void chunk_set(Chunk& c, int j, float v) {
    reinterpret_cast<scalar_t*>(c.u)[j] = from_f<scalar_t>(v);
}

static_assert(KILN_I % 8 == 0, "swiglu: I must be a multiple of 8");

__device__ __forceinline__ float act(float g, float u) {
    // silu(g) = g / (1 + 2^(-g*log2(e))) with the hardware ex2 and rcp (MUFU),
    // branch-free: no IEEE-division or __frcp_rn slow path, whose per-element
    // branch serialised the elements of a thread. exp(-g) = inf (g < -88) gives
    // rcp = 0 and s = -0, the right limit; exp(-g) flushing to 0 (g > 87) gives
    // s = g, as in f32. Error: a few f32 ulps, far inside every tolerance.
    float e, r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(g * -1.4426950408889634f));
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(1.0f + e));
    const float s = g * r;
#if KILN_SILU_IN_DTYPE
    return round_dt(s) * u;
#else
    return s * u;
#endif
}

extern "C" __global__ void __launch_bounds__(256) swiglu(const scalar_t* __restrict__ gate,
                                                         const scalar_t* __restrict__ up,
                                                         scalar_t* __restrict__ out, int T) {
#if __CUDA_ARCH__ >= 900
    // Early launch: wait for the kernel before this one, then let the next one be scheduled.
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    const long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= (long long)T * (KILN_I / 8)) return;
    const Chunk g = load_chunk(gate + c * 8), u = load_chunk(up + c * 8);
    Chunk o;
#pragma unroll
    for (int j = 0; j < 8; ++j) chunk_set(o, j, act(chunk_get(g, j), chunk_get(u, j)));
    store_chunk(out + c * 8, o);
}
