// short_conv — LFM2's gated short convolution at decode (and prefill), with
// its state update, in one launch.
//
// Math, per channel d (D channels), for the T rows t of bcx = in_proj(x):
//   B = bcx[t, 0:D], C = bcx[t, D:2D], X = bcx[t, 2D:3D]
//   bx[t,d]   = dtype( B[t,d] * X[t,d] )
//   seq       = [state[0,d] .. state[L-2,d], bx[0,d] .. bx[T-1,d]]   (oldest first)
//   conv[t,d] = dtype( sum_{j<L} w[d,j] * seq[t+j] )                 (f32 sum)
//   out[t,d]  = dtype( C[t,d] * conv[t,d] )
// and afterwards state[i,d] = seq[T+i] (the last L-1 values of bx), in place.
// That is HF's causal depthwise Conv1d of kernel L over B ⊙ x (no bias),
// gated by C, with the L-1 previous B ⊙ x rows kept between steps.
// Layout: bcx[T,3D], w[D,L] (the checkpoint's [D,1,L]), state[L-1,D] (in and
// out), out[T,D]; row-major, contiguous.
// Defines: KILN_DTYPE, KILN_D, KILN_L (2..8).
// Launch: one thread per channel, walking the T rows in order: the state of a
// channel is read and written by that one thread only, so the in-place update
// is race-free at every T. Blocks of 64 spread D = 2048 over 32 SMs; at decode
// (T = 1) the launch moves ~7 D elements.
// Early launch: the models may start this kernel while the one before it runs; it waits
// (griddepcontrol.wait) before its first memory access.
// kiln: block=64 grid=ceil_div(D, 64) smem=0
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

static_assert(KILN_L >= 2 && KILN_L <= 8, "short_conv: L must be in 2..8");

extern "C" __global__ void __launch_bounds__(64) short_conv(const scalar_t* __restrict__ bcx,
                                                            const scalar_t* __restrict__ w,
                                                            scalar_t* __restrict__ state,
                                                            scalar_t* __restrict__ out, int T) {
#if __CUDA_ARCH__ >= 900
    // Early launch: wait for the kernel before this one, then let the next one be scheduled.
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    const int d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= KILN_D) return;
    float wk[KILN_L];
#pragma unroll
    for (int j = 0; j < KILN_L; ++j) wk[j] = to_f(w[(long long)d * KILN_L + j]);
    // win[0..L-2]: the L-1 values before the current row, oldest first (already dtype-rounded).
    float win[KILN_L - 1];
#pragma unroll
    for (int j = 0; j < KILN_L - 1; ++j) win[j] = to_f(state[(long long)j * KILN_D + d]);
    for (int t = 0; t < T; ++t) {
        const scalar_t* row = bcx + (long long)t * 3 * KILN_D;
        const float bx = to_f(from_f<scalar_t>(to_f(row[d]) * to_f(row[2 * KILN_D + d])));
        float acc = wk[KILN_L - 1] * bx;
#pragma unroll
        for (int j = 0; j < KILN_L - 1; ++j) acc += wk[j] * win[j];
        const float conv = to_f(from_f<scalar_t>(acc));
        out[(long long)t * KILN_D + d] = from_f<scalar_t>(to_f(row[KILN_D + d]) * conv);
#pragma unroll
        for (int j = 0; j < KILN_L - 2; ++j) win[j] = win[j + 1];
        win[KILN_L - 2] = bx;
    }
#pragma unroll
    for (int j = 0; j < KILN_L - 1; ++j) state[(long long)j * KILN_D + d] = from_f<scalar_t>(win[j]);
}
