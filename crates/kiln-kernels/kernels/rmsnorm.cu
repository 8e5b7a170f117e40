// rmsnorm — root-mean-square normalisation of each row.
//
// Math (f32 inside):   r      = 1 / sqrt(mean_d(x[t,d]^2) + EPS)
//   KILN_CAST_BEFORE_SCALE=1 (HF Llama rule; Qwen3, LFM2, GLM-4.7-Flash):
//                      out[t,d] = dtype( w[d] * dtype(x[t,d] * r) )
//   KILN_CAST_BEFORE_SCALE=0:  out[t,d] = dtype( w[d] * x[t,d] * r )   (one rounding)
// Layout: x[T,D], w[D], out[T,D], row-major, contiguous; 16-byte aligned pointers.
// Also used for per-head qk-norm with T = tokens*heads and D = head_dim.
// Defines: KILN_DTYPE, KILN_D (D % 8 == 0; D >= 256, or 256 % D == 0),
//          KILN_EPS (float literal), KILN_CAST_BEFORE_SCALE (0/1).
// Launch: blocks of 4 warps; each row is owned by LPR = 32/RPW lanes, RPW =
// max(1, 256/D) rows per warp, so a small head_dim row does not idle a warp
// and T=1 decode is a single block. Each lane keeps its 8-element chunks of
// the row in registers between the reduction and the write.
// kiln: block=128 grid=ceil_div(T, 4*max(1, 256/D)) smem=0
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

#define D KILN_D
#define CPR (D / 8)                                  // chunks per row
#define RPW ((256 / D) > 1 ? (256 / D) : 1)          // rows per warp (matches the launch line)
#define LPR (32 / RPW)                               // lanes per row
#define CPL ((CPR + LPR - 1) / LPR)                  // chunks per lane (upper bound)
#define WARPS 4
// Long rows need more than ptxas's default register budget to stay spill-free;
// up to 2048 the default keeps occupancy higher. (A 64-register cap would make
// T = 4096 a single wave, but bf16 then spills.)
#if KILN_D > 2048
#define BOUNDS __launch_bounds__(128, 1)
#else
#define BOUNDS __launch_bounds__(128)
#endif

static_assert(D % 8 == 0, "rmsnorm: D must be a multiple of 8");
static_assert(D >= 256 || 256 % D == 0, "rmsnorm: D < 256 must divide 256");

extern "C" __global__ void BOUNDS rmsnorm(const scalar_t* __restrict__ x,
                                                          const scalar_t* __restrict__ w,
                                                          scalar_t* __restrict__ out, int T) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int sub = lane / LPR;    // which row of this warp
    const int sl = lane % LPR;     // lane inside the row
    const long long row = ((long long)blockIdx.x * WARPS + warp) * RPW + sub;
    // Rows past T still join the shuffles (all lanes of the warp must), but never touch memory.
    const bool live = row < (long long)T;
    const scalar_t* xr = x + row * D;

    Chunk c[CPL];
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < CPL; ++i) {
        const int ci = sl + i * LPR;
        if (live && ci < CPR) {
            c[i] = load_chunk(xr + ci * 8);
#pragma unroll
            for (int j = 0; j < 8; ++j) { float v = chunk_get(c[i], j); ss = fmaf(v, v, ss); }
        }
    }
#pragma unroll
    for (int o = LPR / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (!live) return;
    const float r = rsqrtf(ss / (float)D + KILN_EPS);
    scalar_t* orow = out + row * D;
#pragma unroll
    for (int i = 0; i < CPL; ++i) {
        const int ci = sl + i * LPR;
        if (ci < CPR) {
            const Chunk wc = load_chunk(w + ci * 8);
            Chunk o;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const float n = chunk_get(c[i], j) * r;
#if KILN_CAST_BEFORE_SCALE
                chunk_set(o, j, round_dt(n) * chunk_get(wc, j));
#else
                chunk_set(o, j, n * chunk_get(wc, j));
#endif
            }
            store_chunk(orow + ci * 8, o);
        }
    }
}
