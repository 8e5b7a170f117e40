// add_rmsnorm — residual add fused with rmsnorm (HF decoder-layer semantics).
//
// Math (f32 inside):   h[t,d] = dtype(x[t,d] + residual[t,d])        -> new_residual
//                      r      = 1 / sqrt(mean_d(h[t,d]^2) + EPS)
//   KILN_CAST_BEFORE_SCALE=1 (HF Llama rule; Qwen3, LFM2, GLM-4.7-Flash):
//                      normed[t,d] = dtype( w[d] * dtype(h[t,d] * r) )
//   KILN_CAST_BEFORE_SCALE=0:  normed[t,d] = dtype( w[d] * h[t,d] * r )
// The norm reads the rounded h, exactly as HF does after `residual + hidden_states`.
// Layout: x, residual, normed, new_residual [T,D]; w[D]; row-major, 16-byte aligned.
// Defines: KILN_DTYPE, KILN_D (D % 8 == 0; D >= 256, or 256 % D == 0),
//          KILN_EPS (float literal), KILN_CAST_BEFORE_SCALE (0/1).
// Launch: as rmsnorm — a row is owned by TPR = min(D/8, 32*ceil_div(D, 512), 512)
// threads with up to two 8-element chunks each (four from D > 8192 on): D = 2048
// is one block of 128 threads per row; short rows (D <= 256) share a warp, 128/TPR
// rows per block; blocks have TPR * max(1, 128/TPR) threads. x, residual and w
// are all requested before any arithmetic, new_residual is written as soon as
// h is known (before the reduction), and only h and w stay in registers (40 in
// bf16 at D = 2048, so 12 blocks of 128 per SM). The cross-warp reduction is one
// barrier over a tiny shared array. x and residual are read once: evict-first.
// Early launch: the models may start this kernel while the one before it runs; it waits
// (griddepcontrol.wait) before its first memory access.
// kiln: block=min(D/8, min(32*ceil_div(D, 512), 512))*max(1, 128/min(D/8, min(32*ceil_div(D, 512), 512))) grid=ceil_div(T, max(1, 128/min(D/8, min(32*ceil_div(D, 512), 512)))) smem=0
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
// Read-only path, normal caching (the weight is shared by every row).
__device__ __forceinline__ Chunk load_chunk(const scalar_t* p) {
    Chunk c;
    const uint4* q = reinterpret_cast<const uint4*>(p);
#pragma unroll
    for (int i = 0; i < (int)NU; ++i) c.u[i] = __ldg(q + i);
    return c;
}
// Streaming (evict-first) load for data read exactly once.
__device__ __forceinline__ Chunk load_chunk_once(const scalar_t* p) {
    Chunk c;
    const uint4* q = reinterpret_cast<const uint4*>(p);
#pragma unroll
    for (int i = 0; i < (int)NU; ++i) c.u[i] = __ldcs(q + i);
    return c;
}
__device__ __forceinline__ void store_chunk(scalar_t* p, const Chunk& c) {
    uint4* q = reinterpret_cast<uint4*>(p);
#pragma unroll
    for (int i = 0; i < (int)NU; ++i) q[i] = c.u[i];
}
// Element j as f32. bf16 widens straight from its 32-bit word (a shift or a
// mask, bit-identical to __bfloat162float), so the packed word is the only copy
// that stays live.
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

#define D KILN_D
#define CPR (D / 8)                                            // chunks per row
// Threads per row (matches the launch line): ceil(CPR/2) rounded up to a warp,
// at most 512; short rows get one lane per chunk.
#define TPR_LONG ((32 * ((D + 511) / 512)) < 512 ? (32 * ((D + 511) / 512)) : 512)
#define TPR (CPR < TPR_LONG ? CPR : TPR_LONG)
#define RPB ((128 / TPR) > 1 ? (128 / TPR) : 1)               // rows per block
#define BLOCK (TPR * RPB)
#define CPT ((CPR + TPR - 1) / TPR)                            // chunks per thread (upper bound)
#define WPR (TPR / 32)                                         // warps per row (TPR >= 32)

static_assert(D % 8 == 0, "add_rmsnorm: D must be a multiple of 8");
static_assert(D >= 256 || 256 % D == 0, "add_rmsnorm: D < 256 must divide 256");
static_assert(TPR <= 32 ? (32 % TPR == 0) : (TPR % 32 == 0), "add_rmsnorm: TPR layout");

// Register budget: while the loads are in flight a thread holds x, residual and
// w (12*CPT*NU registers), then h and w. Asking for enough resident threads caps
// ptxas at 32 registers (one 16-bit chunk per thread), 40 (two: 12 blocks of 128
// at D = 2048, 96 KB of loads in flight per SM), 64 or 128.
#define MIN_THREADS_PER_SM (CPT * NU <= 1 ? 2048 : (CPT * NU <= 2 ? 1536 : (CPT * NU <= 4 ? 1024 : 512)))
#define MIN_BLOCKS ((MIN_THREADS_PER_SM / BLOCK) > 0 ? (MIN_THREADS_PER_SM / BLOCK) : 1)

extern "C" __global__ void __launch_bounds__(BLOCK, MIN_BLOCKS) add_rmsnorm(const scalar_t* __restrict__ x,
                                                                           const scalar_t* __restrict__ residual,
                                                                           const scalar_t* __restrict__ w,
                                                                           scalar_t* __restrict__ normed,
                                                                           scalar_t* __restrict__ new_residual,
                                                                           int T) {
#if __CUDA_ARCH__ >= 900
    // Early launch: wait for the kernel before this one, then let the next one be scheduled.
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    const int rb = threadIdx.x / TPR;     // row inside the block
    const int tr = threadIdx.x % TPR;     // thread inside the row
    const long long row = (long long)blockIdx.x * RPB + rb;
    // Rows past T (only in the last block) still join the shuffles and the
    // barrier, but never touch memory.
    const bool live = row < (long long)T;
    const long long base = row * D;

    // Every load of this thread (x, residual and w) goes out before any arithmetic.
    Chunk a[CPT], b[CPT], wc[CPT];
#pragma unroll
    for (int i = 0; i < CPT; ++i) {
        const int ci = tr + i * TPR;
        if (live && ci < CPR) {
            a[i] = load_chunk_once(x + base + ci * 8);
            b[i] = load_chunk_once(residual + base + ci * 8);
            wc[i] = load_chunk(w + ci * 8);
        }
    }
    Chunk h[CPT];
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < CPT; ++i) {
        const int ci = tr + i * TPR;
        if (live && ci < CPR) {
#pragma unroll
            for (int j = 0; j < 8; ++j) chunk_set(h[i], j, chunk_get(a[i], j) + chunk_get(b[i], j));
            store_chunk(new_residual + base + ci * 8, h[i]);
#pragma unroll
            for (int j = 0; j < 8; ++j) { const float v = chunk_get(h[i], j); ss = fmaf(v, v, ss); }
        }
    }
#if TPR <= 32
#pragma unroll
    for (int o = TPR / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
#else
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    __shared__ float part[BLOCK / 32];
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
    __syncthreads();
    // Every thread sums its row's partials in the same order: one r per row.
    ss = 0.f;
#pragma unroll
    for (int k = 0; k < WPR; ++k) ss += part[rb * WPR + k];
#endif
    if (!live) return;
    const float r = rsqrtf(ss * (1.0f / (float)D) + KILN_EPS);
#pragma unroll
    for (int i = 0; i < CPT; ++i) {
        const int ci = tr + i * TPR;
        if (ci < CPR) {
            Chunk o;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const float n = chunk_get(h[i], j) * r;
#if KILN_CAST_BEFORE_SCALE
                chunk_set(o, j, round_dt(n) * chunk_get(wc[i], j));
#else
                chunk_set(o, j, n * chunk_get(wc[i], j));
#endif
            }
            store_chunk(normed + base + ci * 8, o);
        }
    }
}
