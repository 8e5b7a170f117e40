// moe_expert_down — gathered expert down projection fused with the weighted combine (the
// second half of a decode MoE layer: HF's down_proj per routed slot, weighted and summed).
//
// Math (f32 inside): for every token t and output row r < H, with e_k = indices[t,k]:
//   y_k  = dtype( sum_i w_down[e_k,r,i] * h[t,k,i] )   (HF rounds each expert's down_proj output)
//   w'_k = KILN_WEIGHT_IN_DTYPE ? dtype(weights[t,k]) : weights[t,k]   (Qwen3 casts its routing weights)
//   out[t,r] = dtype( sum_{k=0..K-1} w'_k * y_k  (+ shared[t,r] if KILN_HAS_SHARED) )
// The k-sum runs in f32 in order k = 0..K-1 (fmaf), the shared value is added last, one rounding.
// (HF eager rounds each weighted expert output and accumulates in the dtype, expert by expert;
// kiln rounds once, like moe_combine.) An index e_k >= E names no expert: the slot contributes 0
// and neither its weight row nor its routing weight is read.
// Layout: h[T,K,I] (moe_expert_swiglu's output); w_down[E,H,I] (the experts' HF `down_proj.weight`
// [H,I] stacked, row-major); indices[T,K] u32; weights[T,K] f32; shared[T,H] (read only when
// KILN_HAS_SHARED=1, may be null otherwise); out[T,H]; pointers 16-byte aligned.
// Defines: KILN_DTYPE, KILN_H (>= 1), KILN_I (I % 8 == 0), KILN_E (>= 1), KILN_K (>= 1),
// KILN_HAS_SHARED (0/1), KILN_WEIGHT_IN_DTYPE (0/1); K*I*sizeof(scalar_t) <= 48 KiB.
// Launch: a block per (token, 8 consecutive output rows), a warp per row. The block stages h[t]
// (K*I values) in static shared memory; each warp streams its K weight rows with 16-byte loads
// (lane l takes the 8-element chunks l, l+32, ...; up to 16 loads per lane in flight, the first
// 16 issued before h is staged) and reduces the K dot products with warp shuffles.
// Early launch: the models may start this kernel while the one before it runs; it waits
// (griddepcontrol.wait) before its first memory access.
// kiln: block=256 grid=T*ceil_div(H, 8) smem=0
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
// Weights are read once per (token, slot): keep them out of L1 (L2 still serves tokens sharing an expert).
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
        : "l"(p));
    return r;
}
__device__ __forceinline__ Chunk load_chunk_stream(const scalar_t* p) {
    Chunk c;
    const uint4* q = reinterpret_cast<const uint4*>(p);
#pragma unroll
    for (int i = 0; i < (int)NU; ++i) c.u[i] = ld_stream(q + i);
    return c;
}
__device__ __forceinline__ float chunk_get(const Chunk& c, int j) {
    return to_f(reinterpret_cast<const scalar_t*>(c.u)[j]);
}

static_assert(KILN_I % 8 == 0, "moe_expert_down: I must be a multiple of 8");
static_assert(KILN_H >= 1 && KILN_E >= 1 && KILN_K >= 1, "moe_expert_down: H, E and K must be >= 1");
static_assert(KILN_K * KILN_I * sizeof(scalar_t) <= 48 * 1024, "moe_expert_down: K*I*sizeof(dtype) must be <= 48 KiB");
#define WARPS 8
#define CPR (KILN_I / 8)                         // 8-element chunks per weight row
#define JPL ((CPR + 31) / 32)                    // chunks per lane per row
#define ROW_BLOCKS ((KILN_H + WARPS - 1) / WARPS)  // blocks per token
#define HS_U4 (KILN_K * KILN_I * (int)sizeof(scalar_t) / 16)

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

#define NCH (KILN_K * JPL)                       // (slot, chunk) pairs per lane
#define BATCH (16 / (int)NU)                     // pairs loaded at once: 16 uint4 loads

// Loads pairs q0 .. q0 + BATCH - 1 of the lane's (slot, chunk) stream (slot-major) of row r.
__device__ __forceinline__ void load_batch(Chunk (&wc)[BATCH], const scalar_t* w_down,
                                           const unsigned int (&e)[KILN_K], int q0, int r, int lane) {
#pragma unroll
    for (int b = 0; b < BATCH; ++b) {
        const int q = q0 + b, k = q / JPL, c = (q % JPL) * 32 + lane;
        if (q < NCH && c < CPR && e[k] < (unsigned int)KILN_E)
            wc[b] = load_chunk_stream(w_down + ((long long)e[k] * KILN_H + r) * KILN_I + c * 8);
    }
}

extern "C" __global__ void __launch_bounds__(256) moe_expert_down(const scalar_t* __restrict__ h,
                                                                  const scalar_t* __restrict__ w_down,
                                                                  const unsigned int* __restrict__ indices,
                                                                  const float* __restrict__ weights,
                                                                  const scalar_t* __restrict__ shared,
                                                                  scalar_t* __restrict__ out, int T) {
#if __CUDA_ARCH__ >= 900
    // Early launch: wait for the kernel before this one, then let the next one be scheduled.
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    __shared__ uint4 hs[HS_U4];
    const long long t = blockIdx.x / ROW_BLOCKS;
    const int r = (int)(blockIdx.x - t * ROW_BLOCKS) * WARPS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (t >= T) return;  // uniform over the block
    // A warp past the last row still stages h and meets the barrier.
    const bool has_row = r < KILN_H;

    unsigned int e[KILN_K];
#pragma unroll
    for (int k = 0; k < KILN_K; ++k) e[k] = __ldg(indices + t * KILN_K + k);
    // The weights do not depend on h: the first batch is in flight while h is staged, so the
    // block waits for one memory latency before it streams, not for three (h, indices, weights).
    Chunk wc[BATCH];
    if (has_row) load_batch(wc, w_down, e, 0, r, lane);
    const uint4* src = reinterpret_cast<const uint4*>(h + t * (KILN_K * KILN_I));
    for (int v = threadIdx.x; v < HS_U4; v += blockDim.x) hs[v] = __ldg(src + v);
    __syncthreads();
    if (!has_row) return;

    float part[KILN_K];
#pragma unroll
    for (int k = 0; k < KILN_K; ++k) part[k] = 0.f;
#pragma unroll
    for (int q0 = 0; q0 < NCH; q0 += BATCH) {
        if (q0 > 0) load_batch(wc, w_down, e, q0, r, lane);
#pragma unroll
        for (int b = 0; b < BATCH; ++b) {
            const int q = q0 + b, k = q / JPL, c = (q % JPL) * 32 + lane;
            if (q < NCH && c < CPR && e[k] < (unsigned int)KILN_E) {
                Chunk hc;
                const uint4* hp = hs + (k * KILN_I + c * 8) / (8 / (int)NU);
#pragma unroll
                for (int i = 0; i < (int)NU; ++i) hc.u[i] = hp[i];
#pragma unroll
                for (int j = 0; j < 8; ++j) part[k] = fmaf(chunk_get(wc[b], j), chunk_get(hc, j), part[k]);
            }
        }
    }
#pragma unroll
    for (int k = 0; k < KILN_K; ++k) part[k] = warp_sum(part[k]);
    if (lane == 0) {
        float acc = 0.f;
#pragma unroll
        for (int k = 0; k < KILN_K; ++k) {
            if (e[k] < (unsigned int)KILN_E) {
                float w = __ldg(weights + t * KILN_K + k);
#if KILN_WEIGHT_IN_DTYPE
                w = round_dt(w);
#endif
                acc = fmaf(w, round_dt(part[k]), acc);
            }
        }
#if KILN_HAS_SHARED
        acc += to_f(shared[t * KILN_H + r]);
#endif
        out[t * KILN_H + r] = from_f<scalar_t>(acc);
    }
}
