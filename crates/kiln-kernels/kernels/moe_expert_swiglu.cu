// moe_expert_swiglu — gathered expert gate/up mat-vec with fused SwiGLU (the first
// half of a decode MoE layer: HF's `act_fn(gate_proj(x)) * up_proj(x)` per routed slot).
//
// Math (f32 inside): for every slot (t,k) with e = indices[t,k] and every row i < I:
//   g = dtype( sum_h w_gate[e,i,h] * x[t,h] )    (the linear outputs are model-dtype tensors in HF)
//   u = dtype( sum_h w_up[e,i,h]   * x[t,h] )
//   s = silu(g) = g / (1 + exp(-g))
//   KILN_SILU_IN_DTYPE=1 (HF eager: `act_fn` returns the model dtype): h[t,k,i] = dtype( dtype(s) * u )
//   KILN_SILU_IN_DTYPE=0:                                               h[t,k,i] = dtype( s * u )
// An index e >= E names no expert: the slot never reads the weights and its row of h is all zeros
// (a padded or dropped slot then contributes nothing downstream).
// Layout: x[T,H]; w_gate[E,I,H] and w_up[E,I,H] (the experts' HF `gate_proj.weight` / `up_proj.weight`
// [I,H] stacked, row-major); indices[T,K] u32; h[T,K,I]; pointers 16-byte aligned.
// Defines: KILN_DTYPE, KILN_H (H % 256 == 0), KILN_I (>= 1), KILN_E (>= 1), KILN_K (>= 1),
// KILN_SILU_IN_DTYPE (0/1).
// Launch: a block per (slot, 8 consecutive rows i), a warp per row. Lane l reads the 8-element chunks
// l, l+32, ... of the gate and up rows with 16-byte streaming loads (up to 16 in flight per lane)
// and the same chunks of x[t] (L1-resident: every warp of the block reads them); warp shuffles
// reduce the two dot products. A slot's blocks are adjacent, so its expert's rows stream in order.
// Early launch: the models may start this kernel while the one before it runs; it waits
// (griddepcontrol.wait) before its first memory access.
// kiln: block=256 grid=T*K*ceil_div(I, 8) smem=0
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
// Weights are read once per slot: keep them out of L1 (L2 still serves tokens sharing an expert).
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

static_assert(KILN_H % 256 == 0, "moe_expert_swiglu: H must be a multiple of 256");
static_assert(KILN_I >= 1 && KILN_E >= 1 && KILN_K >= 1, "moe_expert_swiglu: I, E and K must be >= 1");
#define WARPS 8
#define CPL (KILN_H / 256)                       // 8-element chunks per lane per row
#define ROW_BLOCKS ((KILN_I + WARPS - 1) / WARPS)  // blocks per slot

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

extern "C" __global__ void __launch_bounds__(256) moe_expert_swiglu(const scalar_t* __restrict__ x,
                                                                    const scalar_t* __restrict__ w_gate,
                                                                    const scalar_t* __restrict__ w_up,
                                                                    const unsigned int* __restrict__ indices,
                                                                    scalar_t* __restrict__ h, int T) {
#if __CUDA_ARCH__ >= 900
    // Early launch: wait for the kernel before this one, then let the next one be scheduled.
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    const long long slot = blockIdx.x / ROW_BLOCKS;  // t*K + k
    const int i = (int)(blockIdx.x - slot * ROW_BLOCKS) * WARPS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (slot >= (long long)T * KILN_K || i >= KILN_I) return;
    const unsigned int e = __ldg(indices + slot);
    scalar_t* dst = h + slot * KILN_I + i;
    if (e >= (unsigned int)KILN_E) {
        if (lane == 0) *dst = from_f<scalar_t>(0.f);
        return;
    }
    const long long t = slot / KILN_K;
    const scalar_t* xr = x + t * KILN_H;
    const long long row = ((long long)e * KILN_I + i) * KILN_H;
    const scalar_t* gr = w_gate + row;
    const scalar_t* ur = w_up + row;
    // Up to 16 uint4 loads per lane in flight, whatever H and the dtype.
    constexpr int BATCH = 8 / (int)NU;
    float ag = 0.f, au = 0.f;
#pragma unroll
    for (int c0 = 0; c0 < CPL; c0 += BATCH) {
        Chunk g[BATCH], u[BATCH];
#pragma unroll
        for (int b = 0; b < BATCH; ++b) {
            const int off = ((c0 + b) * 32 + lane) * 8;
            if (c0 + b < CPL) {
                g[b] = load_chunk_stream(gr + off);
                u[b] = load_chunk_stream(ur + off);
            }
        }
#pragma unroll
        for (int b = 0; b < BATCH; ++b) {
            if (c0 + b < CPL) {
                const Chunk xc = load_chunk(xr + ((c0 + b) * 32 + lane) * 8);
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    const float xv = chunk_get(xc, j);
                    ag = fmaf(chunk_get(g[b], j), xv, ag);
                    au = fmaf(chunk_get(u[b], j), xv, au);
                }
            }
        }
    }
    ag = warp_sum(ag);
    au = warp_sum(au);
    if (lane == 0) {
        const float gq = round_dt(ag);
        const float uq = round_dt(au);
        // Reciprocal instead of a division: no slow-path subroutine; exp(-g) = inf gives -0.
        const float s = gq * __frcp_rn(1.0f + __expf(-gq));
#if KILN_SILU_IN_DTYPE
        *dst = from_f<scalar_t>(round_dt(s) * uq);
#else
        *dst = from_f<scalar_t>(s * uq);
#endif
    }
}
