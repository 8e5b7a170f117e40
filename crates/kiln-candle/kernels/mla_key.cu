// mla_key — GLM-4.7-Flash / DeepSeek-V3 attention keys: each head's no-rope part next to the one
// rope part all heads share.
//
// Math (copies): for t < T, head h < NH:
//   key[t, h, d] = k_nope[t, h, d]          d < NOPE
//   key[t, h, d] = k_pe[t, d - NOPE]        NOPE <= d < NOPE + ROPE
// Layout: k_nope is a strided view, element (t, h, d) at k_nope[t * N_ST + h * N_SH + d] (its
// last dimension contiguous: a slice of the kv_b projection); k_pe[t, d] at k_pe[t * P_ST + d]
// (a slice of the kv_a projection); key[T, NH, NOPE + ROPE] contiguous. Defines: KILN_DTYPE.
// Arguments: k_nope, k_pe, key, T, NH, NOPE, ROPE, N_ST, N_SH, P_ST.
// Why a kernel: candle's concatenation of the strided slice with the broadcast rope part cost
// three copy launches per layer at decode.
// Launch: one block of 128 threads per (t, h); threads stride over d.
// Early launch: the models may start this kernel while the one before it runs; it waits
// (griddepcontrol.wait) before its first memory access.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

typedef KILN_DTYPE scalar_t;

extern "C" __global__ void mla_key(const scalar_t* __restrict__ k_nope,
                                   const scalar_t* __restrict__ k_pe,
                                   scalar_t* __restrict__ key,
                                   int t_rows, int nh, int nope, int rope,
                                   long long n_st, long long n_sh, long long p_st) {
#if __CUDA_ARCH__ >= 900
    // Early launch: wait for the kernel before this one, then let the next one be scheduled.
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    const int t = blockIdx.x / nh;
    const int h = blockIdx.x % nh;
    if (t >= t_rows) return;
    const int d_all = nope + rope;
    scalar_t* out = key + ((long long)t * nh + h) * d_all;
    const scalar_t* src = k_nope + t * n_st + h * n_sh;
    const scalar_t* pe = k_pe + t * p_st;
    for (int d = threadIdx.x; d < d_all; d += blockDim.x) out[d] = d < nope ? src[d] : pe[d - nope];
}
