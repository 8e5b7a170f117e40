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
// Launch: a row is owned by TPR = min(D/8, 32*ceil_div(D, 512), 512) threads,
// each holding CPT = ceil(D/8 / TPR) 8-element chunks (16 bytes in 16-bit
// dtypes) in registers between the reduction and the write: up to two chunks
// per thread (four from D > 8192 on), so a long row is spread over a whole block
// (D = 2048: 128 threads x 2 chunks; 4096: 256 x 2). Short rows (qk-norm,
// D <= 256) share a warp: TPR = D/8 lanes per row, 128/TPR rows per block.
// Blocks have TPR * max(1, 128/TPR) threads (rows of 64 threads pair up).
// Why: one warp per long row held the whole row in ~80 registers (207 at
// D = 4096), which left T = 4096 at 1.3 waves with a long tail, and fetched the
// weight only after the reduction (a second memory round trip on the decode
// critical path). Now every load of a thread (x and w together) is issued
// before the reduction, registers stay low (32 in bf16 at D = 2048) so an SM
// keeps 16 such blocks resident, and the cross-warp part of the reduction is a
// single barrier over a tiny shared array. x and w load through the read-only
// path with normal caching (evict-first x was 2 % slower at T = 4096, H200 A/B).
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

static_assert(D % 8 == 0, "rmsnorm: D must be a multiple of 8");
static_assert(D >= 256 || 256 % D == 0, "rmsnorm: D < 256 must divide 256");
static_assert(TPR <= 32 ? (32 % TPR == 0) : (TPR % 32 == 0), "rmsnorm: TPR layout");

// Register budget: the row data a thread holds (x and w, 8*CPT*NU registers)
// plus ~16. Asking for enough resident threads caps ptxas at 32 registers (16-bit
// dtypes, up to two chunks: 16 blocks of 128 per SM at D = 2048), 64 (f32 or
// four chunks) or 128.
#define MIN_THREADS_PER_SM (8 * CPT * NU <= 16 ? 2048 : (8 * CPT * NU <= 32 ? 1024 : 512))
#define MIN_BLOCKS ((MIN_THREADS_PER_SM / BLOCK) > 0 ? (MIN_THREADS_PER_SM / BLOCK) : 1)

extern "C" __global__ void __launch_bounds__(BLOCK, MIN_BLOCKS) rmsnorm(const scalar_t* __restrict__ x,
                                                            const scalar_t* __restrict__ w,
                                                            scalar_t* __restrict__ out, int T) {
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
    const scalar_t* xr = x + row * D;

    // Every load of this thread (x and w) goes out before the reduction.
    Chunk c[CPT], wc[CPT];
#pragma unroll
    for (int i = 0; i < CPT; ++i) {
        const int ci = tr + i * TPR;
        if (live && ci < CPR) {
            c[i] = load_chunk(xr + ci * 8);
            wc[i] = load_chunk(w + ci * 8);
        }
    }
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < CPT; ++i) {
        const int ci = tr + i * TPR;
        if (live && ci < CPR) {
#pragma unroll
            for (int j = 0; j < 8; ++j) { const float v = chunk_get(c[i], j); ss = fmaf(v, v, ss); }
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
    scalar_t* orow = out + row * D;
#pragma unroll
    for (int i = 0; i < CPT; ++i) {
        const int ci = tr + i * TPR;
        if (ci < CPR) {
            Chunk o;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const float n = chunk_get(c[i], j) * r;
#if KILN_CAST_BEFORE_SCALE
                chunk_set(o, j, round_dt(n) * chunk_get(wc[i], j));
#else
                chunk_set(o, j, n * chunk_get(wc[i], j));
#endif
            }
            store_chunk(orow + ci * 8, o);
        }
    }
}
