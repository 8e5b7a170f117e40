// linear_gemv — a dense projection at decode batch sizes: the weight streamed once, every row of
// x applied to it; optionally with the bias add or the SwiGLU that follows it in the models.
//
// Math (f32 accumulation, one rounding at the output):
//   y[t, n] = dtype( sum_k x[t, k] * w[n, k] )      t < T, n < N, k < K
//   plain:                     out[t, n] = y[t, n]                                  out[T, N]
//   bias (non-null pointer):   out[t, n] = dtype( y[t, n] + bias[n] )               out[T, N]
//   KILN_GATED=1 (w = [gate; up], N = 2I):
//     s = silu(y[t, i]) (f32),  out[t, i] = dtype( dtype(s) * y[t, I + i] )         out[T, I]
// Each epilogue rounds exactly as the separate launch it replaces (a bf16 bias add; swiglu_packed
// with KILN_SILU_IN_DTYPE=1, the same silu instructions), so fusing changes no bit of the output.
// Norm prologue (KILN_NORM, D = K, the norm in x's dtype): the RMSNorm that feeds the projection,
// computed by every block into shared memory instead of by a launch of its own:
//   KILN_NORM=1: xn = rmsnorm(x) * norm_w                    (the catalog rmsnorm)
//   KILN_NORM=2: h = dtype(x + residual) -> new_residual (block 0 writes it),
//                xn = rmsnorm(h) * norm_w                    (the catalog add_rmsnorm)
//   then the projection above of xn (block 0 also writes xn to normed_out when it is not null:
//   the MoE layers' router projection hands the normed row to the experts). Each row's sum of
// squares runs over the norm kernels' own lane layout (TPR threads with CPT 8-element chunks
// each), warp shuffles and cross-warp order, and rounds as they do (KILN_EPS,
// KILN_CAST_BEFORE_SCALE), so xn is their output bit for bit.
// Router epilogue (KILN_ROUTER, a plain projection of N = E router logits): the catalog router
// on the logits as written, by the last block to finish (a count in blocks_done, zero between
// launches, set back to zero by that block), bit for bit its own launch:
//   KILN_ROUTER=1: softmax_topk (KILN_TOPK, KILN_RENORM)
//   KILN_ROUTER=2: sigmoid_topk with one group (KILN_TOPK, KILN_N_GROUP=1, KILN_NORM_EPS,
//                  KILN_SCALE, KILN_SIGMOID_IN_DTYPE; select_bias[E] f32)
//   -> topk_weights[T, TOPK] f32, topk_indices[T, TOPK] u32, sorted by descending weight;
//   KILN_APPEND_SHARED=1 adds append_shared_expert's column: [T, TOPK + 1], column TOPK holding
//   weight 1 and index E (the stacked shared expert).
// Layout: x[T, K], w[N, K] (row-major, the nn.Linear weight), bias[N]; pointers 16-byte aligned.
// Defines: KILN_DTYPE (w, bias and out), KILN_X_DTYPE (x, and the norm prologue's buffers; default
// KILN_DTYPE, may be narrower: widened exactly), KILN_N (>= 1; even with KILN_GATED),
// KILN_K (% (16 / sizeof(dtype)) == 0),
// KILN_RPW (weight rows per warp, 1..=4; even with KILN_GATED), KILN_GATED (0/1, default 0),
// KILN_NORM (0/1/2, default 0; 256 <= K <= 4096) with KILN_EPS and KILN_CAST_BEFORE_SCALE,
// KILN_ROUTER (0/1/2, default 0; N <= 256) with the router's defines above,
// KILN_UNROLL (the K loop's unroll: how many steps' loads a warp issues before their FMAs;
// default 4).
// Launch: 256 threads (8 warps); warp j of block b computes weight rows (8b + j) * RPW .. + RPW for
// every t < T (T <= 8: the kernel keeps T partial sums per row in registers; larger T goes to
// cuBLAS). With KILN_GATED its RPW rows are RPW/2 gate rows i and their up rows I + i, for
// i = (8b + j) * RPW/2 .. + RPW/2, so the grid is the same.
// Each lane loads 16-byte vectors of a weight row at stride 32 vectors, all RPW rows' loads of
// one step issued before their FMAs, so a warp keeps RPW * 16 B * 32 in flight per step and the
// full K loop is unrolled by KILN_UNROLL. x is read through the read-only cache (at most 8 rows
// of K values: it stays in L1 while the weight streams past). Lanes meet by shuffles; lane 0
// writes.
// Early launch: the models may start this kernel while the one before it runs; it waits
// (griddepcontrol.wait) before its first memory access.
// Why not cuBLAS at T = 1: its M = 1 kernels run 2–4 CTAs for a 128-row router and split-K plus
// a separate reduce for the output projections (docs/BENCHMARKS.md, the decode profile).
// The first weight loads of a normed projection (all of a lane's share of a router's row, up to
// 8 vectors) go out before the prologue, so its memory latency overlaps theirs.
// XS is the bytes of one normed row (0 without KILN_NORM).
// kiln: block=256 grid=ceil_div(N, 8*RPW) smem=T*XS
#include <cuda_bf16.h>
#include <cuda_fp16.h>

typedef KILN_DTYPE scalar_t;
// x may be stored narrower than the weight (a bf16 hidden state against GLM's f32 router):
// each value is widened exactly to f32, so the result is the weight dtype's gemv of x cast up.
#ifdef KILN_X_DTYPE
typedef KILN_X_DTYPE x_t;
#else
typedef scalar_t x_t;
#endif

#ifndef KILN_RPW
#define KILN_RPW 2
#endif
#ifndef KILN_GATED
#define KILN_GATED 0
#endif
#ifndef KILN_NORM
#define KILN_NORM 0
#endif
#ifndef KILN_ROUTER
#define KILN_ROUTER 0
#endif
#ifndef KILN_UNROLL
#define KILN_UNROLL 4
#endif

#define VEC (16 / (int)sizeof(scalar_t))  // elements per 16-byte load
#define NVEC (KILN_K / VEC)                // 16-byte vectors per row
#define MAX_T 8

static_assert(KILN_N >= 1, "linear_gemv: N must be >= 1");
static_assert(KILN_K % (16 / sizeof(scalar_t)) == 0, "linear_gemv: K must fill whole 16-byte vectors");
static_assert(KILN_RPW >= 1 && KILN_RPW <= 4, "linear_gemv: RPW must be 1..=4");
static_assert(!KILN_GATED || (KILN_N % 2 == 0 && KILN_RPW % 2 == 0),
              "linear_gemv: the gated form needs an even N ([gate; up]) and an even RPW (row pairs)");
#if KILN_GATED && defined(KILN_X_DTYPE)
#error "linear_gemv: the gated form takes x in the weight dtype"
#endif

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename S> __device__ __forceinline__ S from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
// Rounds an f32 value through the storage dtype.
__device__ __forceinline__ float round_dt(float v) { return to_f(from_f<scalar_t>(v)); }

// silu(g) * u with silu rounded to the dtype first: swiglu_packed's arithmetic (KILN_SILU_IN_DTYPE=1)
// instruction for instruction, so the fused output is bit-identical to the two launches.
__device__ __forceinline__ float silu_times(float g, float u) {
    float e, r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(g * -1.4426950408889634f));
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(1.0f + e));
    return round_dt(g * r) * u;
}

// The VEC values of x that meet one 16-byte vector of w (VEC * sizeof(x_t) bytes, read through
// the read-only cache: at most 8 rows of K values, they stay in L1 while the weight streams past).
struct __align__(8) XVec { x_t v[VEC]; };
static_assert(sizeof(XVec) % 8 == 0, "linear_gemv: x vectors are whole 8-byte words");
__device__ __forceinline__ XVec load_x(const x_t* x, size_t vec) {
    XVec r;
    if (sizeof(XVec) % 16 == 0) {
        const uint4* p = reinterpret_cast<const uint4*>(x + vec * VEC);
        uint4* q = reinterpret_cast<uint4*>(&r);
#pragma unroll
        for (int i = 0; i < (int)(sizeof(XVec) / 16); ++i) q[i] = __ldg(p + i);
    } else {
        const uint2* p = reinterpret_cast<const uint2*>(x + vec * VEC);
        uint2* q = reinterpret_cast<uint2*>(&r);
#pragma unroll
        for (int i = 0; i < (int)(sizeof(XVec) / 8); ++i) q[i] = __ldg(p + i);
    }
    return r;
}

// The dot product of one 16-byte vector of w with the matching values of x.
__device__ __forceinline__ float dot16(const uint4& wv, const XVec& xv) {
    const scalar_t* w = reinterpret_cast<const scalar_t*>(&wv);
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < VEC; ++i) s = fmaf(to_f(w[i]), to_f(xv.v[i]), s);
    return s;
}

#if KILN_NORM
// acc[r][t] += the dot product of vector v of the warp's weight rows with vector v of the normed
// row t in shared memory.
__device__ __forceinline__ void accumulate(float (&acc)[KILN_RPW][MAX_T], const uint4 (&wl)[KILN_RPW],
                                           const x_t* xs, int v, int T) {
#pragma unroll
    for (int t = 0; t < MAX_T; ++t) {
        if (t < T) {
            const XVec xl = reinterpret_cast<const XVec*>(xs)[(size_t)t * NVEC + v];
#pragma unroll
            for (int r = 0; r < KILN_RPW; ++r) acc[r][t] += dot16(wl[r], xl);
        }
    }
}
#endif

#if KILN_NORM
// The norm kernels' row layout for D = K (their launch rule): TPR threads per row, up to two
// 8-element chunks each (CPT), WPR warps meeting in shared memory.
#define NORM_D KILN_K
#define NORM_CPR (NORM_D / 8)
#define NORM_TPR_LONG ((32 * ((NORM_D + 511) / 512)) < 512 ? (32 * ((NORM_D + 511) / 512)) : 512)
#define NORM_TPR (NORM_CPR < NORM_TPR_LONG ? NORM_CPR : NORM_TPR_LONG)
#define NORM_CPT ((NORM_CPR + NORM_TPR - 1) / NORM_TPR)
#define NORM_WPR (NORM_TPR / 32)
static_assert(NORM_D % 8 == 0 && NORM_D >= 256 && NORM_TPR <= 256,
              "linear_gemv: the norm prologue needs 256 <= K <= 4096, K % 8 == 0");
// Weight vectors per row a lane loads before the prologue: all of its share of the row, up to 8
// 16-byte registers over its RPW rows (K >= 256 gives every lane at least one: NVEC >= 32).
#define NORM_PRE_MAX (8 / KILN_RPW)
#define NORM_PRE ((NVEC / 32) < NORM_PRE_MAX ? (NVEC / 32) : NORM_PRE_MAX)
static_assert(NORM_PRE >= 1, "linear_gemv: the norm prologue needs a whole vector per lane");
// The norm runs in x's dtype (the norm kernel's), whatever the weight's: GLM-4.7-Flash's f32
// router reads the bf16 normed row widened.
__device__ __forceinline__ float round_x(float v) { return to_f(from_f<x_t>(v)); }

// 8 consecutive elements of the dtype, moved as whole 16-byte words.
#define NORM_NU (sizeof(x_t) / 2)
struct NormChunk { uint4 u[NORM_NU]; };
__device__ __forceinline__ NormChunk norm_load(const x_t* p) {
    NormChunk c;
    const uint4* q = reinterpret_cast<const uint4*>(p);
#pragma unroll
    for (int i = 0; i < (int)NORM_NU; ++i) c.u[i] = __ldg(q + i);
    return c;
}
__device__ __forceinline__ void norm_store(x_t* p, const NormChunk& c) {
    uint4* q = reinterpret_cast<uint4*>(p);
#pragma unroll
    for (int i = 0; i < (int)NORM_NU; ++i) q[i] = c.u[i];
}
__device__ __forceinline__ float norm_get(const NormChunk& c, int j) {
    return to_f(reinterpret_cast<const x_t*>(c.u)[j]);
}
__device__ __forceinline__ void norm_set(NormChunk& c, int j, float v) {
    reinterpret_cast<x_t*>(c.u)[j] = from_f<x_t>(v);
}

// Normalises rows 0..T-1 of x (plus residual with KILN_NORM=2) into xs[T][K], as the norm kernel
// would write them; block 0 also writes new_residual and, if not null, normed_out. Every thread
// of the block takes part.
__device__ __forceinline__ void norm_prologue(const x_t* __restrict__ x,
                                              const x_t* __restrict__ residual,
                                              const x_t* __restrict__ norm_w,
                                              x_t* __restrict__ new_residual,
                                              x_t* __restrict__ normed_out, x_t* xs, int T) {
    __shared__ float part[8];
    const int tr = threadIdx.x;  // the thread's place in the row; rows run one after another
    const bool in_row = tr < NORM_TPR;
    for (int t = 0; t < T; ++t) {
        const size_t base = (size_t)t * NORM_D;
        NormChunk h[NORM_CPT], wc[NORM_CPT];
        float ss = 0.f;
#pragma unroll
        for (int i = 0; i < NORM_CPT; ++i) {
            const int ci = tr + i * NORM_TPR;
            if (in_row && ci < NORM_CPR) {
                wc[i] = norm_load(norm_w + ci * 8);
#if KILN_NORM == 2
                const NormChunk a = norm_load(x + base + ci * 8);
                const NormChunk b = norm_load(residual + base + ci * 8);
#pragma unroll
                for (int j = 0; j < 8; ++j) norm_set(h[i], j, norm_get(a, j) + norm_get(b, j));
                if (blockIdx.x == 0) norm_store(new_residual + base + ci * 8, h[i]);
#else
                h[i] = norm_load(x + base + ci * 8);
#endif
            }
        }
#pragma unroll
        for (int i = 0; i < NORM_CPT; ++i) {
            const int ci = tr + i * NORM_TPR;
            if (in_row && ci < NORM_CPR) {
#pragma unroll
                for (int j = 0; j < 8; ++j) { const float v = norm_get(h[i], j); ss = fmaf(v, v, ss); }
            }
        }
#if NORM_TPR <= 32
#pragma unroll
        for (int o = NORM_TPR / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
#else
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
        if (in_row && (tr & 31) == 0) part[tr >> 5] = ss;
        __syncthreads();
        ss = 0.f;
#pragma unroll
        for (int k = 0; k < NORM_WPR; ++k) ss += part[k];
#endif
        const float r = rsqrtf(ss * (1.0f / (float)NORM_D) + KILN_EPS);
#pragma unroll
        for (int i = 0; i < NORM_CPT; ++i) {
            const int ci = tr + i * NORM_TPR;
            if (in_row && ci < NORM_CPR) {
                NormChunk o;
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    const float n = norm_get(h[i], j) * r;
#if KILN_CAST_BEFORE_SCALE
                    norm_set(o, j, round_x(n) * norm_get(wc[i], j));
#else
                    norm_set(o, j, n * norm_get(wc[i], j));
#endif
                }
                norm_store(xs + base + ci * 8, o);
                if (blockIdx.x == 0 && normed_out != nullptr) norm_store(normed_out + base + ci * 8, o);
            }
        }
        // part[] is reused by the next row, and xs is read after the last.
        __syncthreads();
    }
}
#endif

#if KILN_ROUTER
// The router epilogue: the catalog router (softmax_topk, or sigmoid_topk with one group) of each
// row of logits this launch wrote, run by the last block to finish, so the router's own launch
// goes. The row routines are the catalog kernels' instruction for instruction (one warp per row,
// lane l holding experts l, l+32, ...), on the logits as written (rounded to the dtype).
#define R_E KILN_N
#define R_K KILN_TOPK
#define R_EPL ((R_E + 31) / 32)  // experts per lane
#ifndef KILN_APPEND_SHARED
#define KILN_APPEND_SHARED 0
#endif
#define R_W (R_K + KILN_APPEND_SHARED)  // columns of the routing out
static_assert(!KILN_GATED, "linear_gemv: the router epilogue follows a plain projection");
static_assert(R_E >= 1 && R_E <= 256, "linear_gemv: the router epilogue needs 1 <= N (experts) <= 256");
static_assert(R_K >= 1 && R_K <= R_E && R_W <= 32,
              "linear_gemv: the router's K (and the shared expert's column) must be in 1..=min(N, 32)");

// Warp-wide max and min of unsigned keys (redux.sync from sm_80 on).
__device__ __forceinline__ unsigned warp_max_u32(unsigned v) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
    return __reduce_max_sync(0xffffffffu, v);
#else
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
#endif
}
__device__ __forceinline__ unsigned warp_min_u32(unsigned v) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
    return __reduce_min_sync(0xffffffffu, v);
#else
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
#endif
}
// A logit another block wrote: through L2 (this SM's L1 may not see it).
__device__ __forceinline__ float load_logit(const scalar_t* p) { return to_f(__ldcg(p)); }

#if KILN_ROUTER == 1
// softmax_topk's row: softmax over all experts, top-k, KILN_RENORM.
__device__ __forceinline__ void route_row(const scalar_t* lr, const float* /*select_bias*/,
                                          float* weights, unsigned* indices, int lane) {
    float x[R_EPL];
    unsigned om = 0u;  // below every float's key
#pragma unroll
    for (int j = 0; j < R_EPL; ++j) {
        const int e = lane + 32 * j;
        x[j] = e < R_E ? load_logit(lr + e) : 0.f;
        if (e < R_E) {
            const unsigned b = __float_as_uint(x[j]);
            om = max(om, b ^ ((unsigned)((int)b >> 31) | 0x80000000u));
        }
    }
    const unsigned mo = warp_max_u32(om);
    const float m = __uint_as_float(mo ^ ((mo & 0x80000000u) ? 0x80000000u : 0xffffffffu));
    unsigned key[R_EPL];
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < R_EPL; ++j) {
        const int e = lane + 32 * j;
        const float v = e < R_E ? expf(x[j] - m) : 0.f;
        s += v;
        key[j] = e < R_E ? __float_as_uint(v) + 1u : 0u;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    float my_p = 0.f, tot = 0.f;
    unsigned my_i = 0;
#pragma unroll 1
    for (int k = 0; k < R_K; ++k) {
        unsigned bk = 0, bi = 0xffffffffu;
#pragma unroll
        for (int j = 0; j < R_EPL; ++j)
            if (key[j] > bk) { bk = key[j]; bi = lane + 32 * j; }
        const unsigned top = warp_max_u32(bk);
        const unsigned win = warp_min_u32(bk == top ? bi : 0xffffffffu);
#pragma unroll
        for (int j = 0; j < R_EPL; ++j)
            if (lane + 32 * j == (int)win) key[j] = 0u;
        const float p = __uint_as_float(top - 1u) / s;
        tot += p;
        if (lane == k) { my_p = p; my_i = win; }
    }
#if KILN_RENORM
    my_p = my_p / tot;
#endif
    if (lane < R_K) {
        weights[lane] = my_p;
        indices[lane] = my_i;
    }
}
#elif KILN_ROUTER == 2
#if KILN_N_GROUP != 1
#error "linear_gemv: the router epilogue runs sigmoid_topk with one group only"
#endif
// sigmoid_topk's row with one group: sigmoid scores, the bias-corrected top-k, normalised, scaled.
__device__ __forceinline__ void route_row(const scalar_t* lr, const float* select_bias,
                                          float* weights, unsigned* indices, int lane) {
    float s[R_EPL], c[R_EPL];
#pragma unroll
    for (int j = 0; j < R_EPL; ++j) {
        const int e = lane + 32 * j;
        if (e < R_E) {
            float v = 1.0f / (1.0f + expf(-load_logit(lr + e)));
#if KILN_SIGMOID_IN_DTYPE
            v = round_dt(v);
#endif
            s[j] = v;
            c[j] = v + __ldg(select_bias + e);
        } else {
            s[j] = 0.f;
            c[j] = -__int_as_float(0x7f800000);
        }
    }
    unsigned key[R_EPL];
#pragma unroll
    for (int j = 0; j < R_EPL; ++j) {
        const unsigned b = __float_as_uint(c[j]);
        key[j] = (lane + 32 * j) < R_E ? (b ^ ((unsigned)((int)b >> 31) | 0x80000000u)) : 0u;
    }
    float my_s = 0.f, tot = 0.f;
    unsigned my_i = 0;
#pragma unroll 1
    for (int k = 0; k < R_K; ++k) {
        unsigned bk = 0, bi = 0xffffffffu;
        float bs = 0.f;
#pragma unroll
        for (int j = 0; j < R_EPL; ++j)
            if (key[j] > bk) { bk = key[j]; bi = lane + 32 * j; bs = s[j]; }
        const unsigned top = warp_max_u32(bk);
        const unsigned win = warp_min_u32(bk == top ? bi : 0xffffffffu);
        const float ws = __shfl_sync(0xffffffffu, bs, win & 31);
#pragma unroll
        for (int j = 0; j < R_EPL; ++j)
            if (lane + 32 * j == (int)win) key[j] = 0u;
        tot += ws;
        if (lane == k) { my_s = ws; my_i = win; }
    }
#if KILN_SIGMOID_IN_DTYPE
    const float den = round_dt(round_dt(tot) + KILN_NORM_EPS);
    const float w = round_dt(round_dt(my_s / den) * KILN_SCALE);
#else
    const float den = tot + KILN_NORM_EPS;
    const float q = my_s / den;
    const float w = q * KILN_SCALE;
#endif
    if (lane < R_K) {
        weights[lane] = w;
        indices[lane] = my_i;
    }
}
#else
#error "linear_gemv: KILN_ROUTER must be 0, 1 (softmax_topk) or 2 (sigmoid_topk)"
#endif

// Counts this block done; the last of the grid to finish routes every row (one warp a row) and
// sets the count back to zero, so the next launch (a graph replay too) finds it there.
__device__ __forceinline__ void route_after_last_block(const scalar_t* logits, const float* select_bias,
                                                       float* weights, unsigned* indices,
                                                       unsigned* blocks_done, int T) {
    __shared__ unsigned last;
    __threadfence();  // this block's logits are visible to every SM before it is counted
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(blocks_done, 1u) == gridDim.x - 1 ? 1u : 0u;
    __syncthreads();
    if (!last) return;
    __threadfence();  // the other blocks' logits, counted before this block's, are read after it
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int t = warp; t < T; t += (int)(blockDim.x >> 5)) {
        route_row(logits + (size_t)t * R_E, select_bias, weights + (size_t)t * R_W,
                  indices + (size_t)t * R_W, lane);
#if KILN_APPEND_SHARED
        // append_shared_expert's column: the stacked shared expert, index E, weight exactly 1.
        if (lane == R_K) {
            weights[(size_t)t * R_W + R_K] = 1.0f;
            indices[(size_t)t * R_W + R_K] = (unsigned)R_E;
        }
#endif
    }
    if (threadIdx.x == 0) *blocks_done = 0u;
}
#endif

extern "C" __global__ void __launch_bounds__(256) linear_gemv(const x_t* __restrict__ x,
                                                              const scalar_t* __restrict__ w,
                                                              const scalar_t* __restrict__ bias,
                                                              scalar_t* __restrict__ out,
                                                              int t_rows,
                                                              const x_t* __restrict__ residual,
                                                              const x_t* __restrict__ norm_w,
                                                              x_t* __restrict__ new_residual,
                                                              x_t* __restrict__ normed_out,
                                                              const float* __restrict__ select_bias,
                                                              float* __restrict__ topk_weights,
                                                              unsigned int* __restrict__ topk_indices,
                                                              unsigned int* __restrict__ blocks_done) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int warp_id = blockIdx.x * 8 + warp;
#if KILN_GATED
    // Row r < P is gate row i0 + r, row P + r its up row I + i0 + r.
    constexpr int P = KILN_RPW / 2;
    constexpr int I = KILN_N / 2;
    const int i0 = warp_id * P;
    const int row0 = i0;  // the first gate row: past I the warp has nothing to do
    const int rows_end = I;
#else
    const int row0 = warp_id * KILN_RPW;
    const int rows_end = KILN_N;
#endif
#if __CUDA_ARCH__ >= 900
    // Early launch: wait for the kernel before this one, then let the next one be scheduled.
    // (An L2 prefetch of the weight rows before the wait made the models slower on the H100:
    // every resident warp prefetching whole rows asks for more than L2 holds.)
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    // t_rows is the same for every block: the whole grid leaves (no router count is taken).
    if (t_rows < 1) return;
    // A warp past the last row does no projection, but stays for the norm prologue's and the
    // router epilogue's barriers.
    const bool has_rows = row0 < rows_end;
#if !KILN_NORM && !KILN_ROUTER
    if (!has_rows) return;
#endif
    const int T = t_rows < MAX_T ? t_rows : MAX_T;

    float acc[KILN_RPW][MAX_T];
#pragma unroll
    for (int r = 0; r < KILN_RPW; ++r)
#pragma unroll
        for (int t = 0; t < MAX_T; ++t) acc[r][t] = 0.f;

    const uint4* wv[KILN_RPW];
#pragma unroll
    for (int r = 0; r < KILN_RPW; ++r) {
        // Rows past the end re-read the last one (in bounds) and are never written.
#if KILN_GATED
        const int n = r < P ? min(i0 + r, I - 1) : I + min(i0 + r - P, I - 1);
#else
        const int n = min(row0 + r, KILN_N - 1);
#endif
        wv[r] = reinterpret_cast<const uint4*>(w + (size_t)n * KILN_K);
    }

#if KILN_NORM
    // Every warp of the block computes the normed rows, the ones past the last weight row too.
    extern __shared__ __align__(16) unsigned char norm_smem[];
    x_t* xs = reinterpret_cast<x_t*>(norm_smem);
    // A lane's first NORM_PRE vectors of each of its rows are in flight while the block norms.
    uint4 w0[NORM_PRE][KILN_RPW];
    if (has_rows) {
#pragma unroll
        for (int p = 0; p < NORM_PRE; ++p)
#pragma unroll
            for (int r = 0; r < KILN_RPW; ++r) w0[p][r] = __ldcs(wv[r] + lane + 32 * p);
    }
    norm_prologue(x, residual, norm_w, new_residual, normed_out, xs, T);
#if !KILN_ROUTER
    if (!has_rows) return;
#endif
    if (has_rows) {
#pragma unroll
        for (int p = 0; p < NORM_PRE; ++p) accumulate(acc, w0[p], xs, lane + 32 * p, T);
    }
#pragma unroll KILN_UNROLL
    for (int v = has_rows ? lane + 32 * NORM_PRE : NVEC; v < NVEC; v += 32) {
        uint4 wl[KILN_RPW];
#pragma unroll
        for (int r = 0; r < KILN_RPW; ++r) wl[r] = __ldcs(wv[r] + v);  // streamed once: evict first
        accumulate(acc, wl, xs, v, T);
    }
#else
#pragma unroll KILN_UNROLL
    for (int v = has_rows ? lane : NVEC; v < NVEC; v += 32) {
        uint4 wl[KILN_RPW];
#pragma unroll
        for (int r = 0; r < KILN_RPW; ++r) wl[r] = __ldcs(wv[r] + v);  // streamed once: evict first
#pragma unroll
        for (int t = 0; t < MAX_T; ++t) {
            if (t < T) {
                const XVec xl = load_x(x, (size_t)t * NVEC + v);
#pragma unroll
                for (int r = 0; r < KILN_RPW; ++r) acc[r][t] += dot16(wl[r], xl);
            }
        }
    }
#endif

#pragma unroll
    for (int r = 0; r < KILN_RPW; ++r) {
#pragma unroll
        for (int t = 0; t < MAX_T; ++t) {
            if (t < T) {
                float s = acc[r][t];
#pragma unroll
                for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
                acc[r][t] = s;
            }
        }
    }
    if (lane == 0 && has_rows) {
#if KILN_GATED
#pragma unroll
        for (int r = 0; r < P; ++r) {
            const int i = i0 + r;
            if (i < I) {
                for (int t = 0; t < T; ++t) {
                    // The gemv's rounding of gate and up, then swiglu_packed's.
                    const float g = round_dt(acc[r][t]);
                    const float u = round_dt(acc[P + r][t]);
                    out[(size_t)t * I + i] = from_f<scalar_t>(silu_times(g, u));
                }
            }
        }
#else
#pragma unroll
        for (int r = 0; r < KILN_RPW; ++r) {
            const int n = row0 + r;
            if (n < KILN_N) {
                // A separate bias add would read the rounded projection: round it first.
                const float b = bias != nullptr ? to_f(bias[n]) : 0.f;
                for (int t = 0; t < T; ++t) {
                    const float y = acc[r][t];
                    out[(size_t)t * KILN_N + n] = from_f<scalar_t>(bias != nullptr ? round_dt(y) + b : y);
                }
            }
        }
#endif
    }
#if KILN_ROUTER
    route_after_last_block(out, select_bias, topk_weights, topk_indices, blocks_done, T);
#endif
}
