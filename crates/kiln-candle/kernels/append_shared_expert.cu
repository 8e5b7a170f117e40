// append_shared_expert — the stacked shared expert as one more routed column of every token.
//
// Math (copies): for t < T,
//   w_out[t, j] = w[t, j],  idx_out[t, j] = idx[t, j]    j < K
//   w_out[t, K] = 1.0f,     idx_out[t, K] = E             (the shared expert, stacked at index E)
// Layout: w f32[T, K], idx u32[T, K], w_out f32[T, K+1], idx_out u32[T, K+1], contiguous.
// Arguments: w, idx, w_out, idx_out, T, K, E.
// Why a kernel: two candle concatenations cost four copy launches per MoE layer at decode.
// Launch: one thread per output element; 128 threads per block, ceil(T * (K + 1) / 128) blocks.
// Early launch: the models may start this kernel while the one before it runs; it waits
// (griddepcontrol.wait) before its first memory access.

extern "C" __global__ void append_shared_expert(const float* __restrict__ w,
                                                const unsigned int* __restrict__ idx,
                                                float* __restrict__ w_out,
                                                unsigned int* __restrict__ idx_out,
                                                int t_rows, int k, int e) {
#if __CUDA_ARCH__ >= 900
    // Early launch: wait for the kernel before this one, then let the next one be scheduled.
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long n = (long long)t_rows * (k + 1);
    if (i >= n) return;
    const int t = (int)(i / (k + 1));
    const int j = (int)(i % (k + 1));
    if (j < k) {
        w_out[i] = w[(long long)t * k + j];
        idx_out[i] = idx[(long long)t * k + j];
    } else {
        w_out[i] = 1.0f;
        idx_out[i] = (unsigned int)e;
    }
}
