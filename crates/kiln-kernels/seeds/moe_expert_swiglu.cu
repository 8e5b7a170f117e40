// moe_expert_swiglu — naive seed: one warp per (slot, row), scalar loads.
//
// Math (f32 inside): for every slot (t,k) with e = indices[t,k] and every row i < I:
//   g = dtype( sum_h w_gate[e,i,h] * x[t,h] ),   u = dtype( sum_h w_up[e,i,h] * x[t,h] )
//   s = silu(g) = g / (1 + exp(-g))
//   KILN_SILU_IN_DTYPE=1: h[t,k,i] = dtype( dtype(s) * u );   KILN_SILU_IN_DTYPE=0: h[t,k,i] = dtype( s * u )
// An index e >= E names no expert: h[t,k,:] is all zeros and no weight is read.
// Layout: x[T,H]; w_gate[E,I,H] and w_up[E,I,H] row-major; indices[T,K] u32; h[T,K,I].
// Defines: KILN_DTYPE, KILN_H, KILN_I, KILN_E, KILN_K, KILN_SILU_IN_DTYPE (0/1).
// Launch: warp w of the grid computes the flat row w of the T*K*I rows of h; lane l sums the
// products h = l, l+32, ... and warp shuffles reduce them.
// kiln: block=256 grid=ceil_div(T*K*I, 8) smem=0
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

extern "C" __global__ void moe_expert_swiglu(const scalar_t* x, const scalar_t* w_gate, const scalar_t* w_up,
                                             const unsigned int* indices, scalar_t* h, int T) {
    // Blocks are whole warps, so a warp's 32 lanes share one row and leave together.
    const long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;  // (t*K + k)*I + i
    const int lane = threadIdx.x & 31;
    if (row >= (long long)T * KILN_K * KILN_I) return;
    const long long slot = row / KILN_I;
    const long long i = row - slot * KILN_I;
    const long long t = slot / KILN_K;
    const unsigned int e = indices[slot];
    if (e >= (unsigned int)KILN_E) {
        if (lane == 0) h[row] = from_f<scalar_t>(0.f);
        return;
    }
    const scalar_t* gr = w_gate + ((long long)e * KILN_I + i) * KILN_H;
    const scalar_t* ur = w_up + ((long long)e * KILN_I + i) * KILN_H;
    const scalar_t* xr = x + t * KILN_H;
    float ag = 0.f, au = 0.f;
    for (int c = lane; c < KILN_H; c += 32) {
        const float xv = to_f(xr[c]);
        ag = fmaf(to_f(gr[c]), xv, ag);
        au = fmaf(to_f(ur[c]), xv, au);
    }
    for (int o = 16; o > 0; o >>= 1) {
        ag += __shfl_xor_sync(0xffffffffu, ag, o);
        au += __shfl_xor_sync(0xffffffffu, au, o);
    }
    if (lane == 0) {
        const float gq = round_dt(ag);
        const float uq = round_dt(au);
        const float s = gq / (1.0f + expf(-gq));  // exp(-g) = inf gives -0, the right limit
#if KILN_SILU_IN_DTYPE
        h[row] = from_f<scalar_t>(round_dt(s) * uq);
#else
        h[row] = from_f<scalar_t>(s * uq);
#endif
    }
}
