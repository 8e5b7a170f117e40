// argmax — greedy decoding's pick: the index of the largest of V logits, in one launch.
//
// Math: out = the lowest i < V whose key(x[i]) is the largest, where key orders floats by their
//       IEEE total order (-NaN < -inf < ... < -0 < +0 < ... < +inf < +NaN, so a NaN logit wins,
//       as torch's argmax lets it).
// Layout: x[V] (KILN_DTYPE, V < 2^31), out[1] u32; scratch[4] u32, zero between launches: word 0 counts the
//         blocks done, words 2..3 hold the best (key << 32 | ~i) so far as one u64.
// Defines: KILN_DTYPE.
// Launch: 256 threads a block, each thread EPT = 4 elements at a stride of the whole grid (one
// coalesced pass); a block reduces its threads' best by warp shuffles and one shared round, then
// folds it into scratch by one 64-bit atomicMax. The last block to finish writes out and sets the
// scratch back to zero, so the next launch (a graph replay too) finds it there.
// Why: candle's argmax runs one block over the whole row (74 µs for Qwen3's 151936 logits on an
// H100, 2026-12-08), longer than a decoder layer.
// Early launch: the models may start this kernel while the one before it runs; it waits
// (griddepcontrol.wait) before its first memory access.
// kiln: block=256 grid=max(min(ceil_div(V, 256*4), 2*SMS), 1) smem=0
#include <cuda_bf16.h>
#include <cuda_fp16.h>

typedef KILN_DTYPE scalar_t;
#define EPT 4

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

// Larger keys for larger floats in the IEEE total order.
__device__ __forceinline__ unsigned ordered(float v) {
    const unsigned b = __float_as_uint(v);
    return b ^ ((unsigned)((int)b >> 31) | 0x80000000u);
}
// The best candidate first: the larger key, then the lower index (~i is larger).
__device__ __forceinline__ unsigned long long candidate(float v, unsigned i) {
    return ((unsigned long long)ordered(v) << 32) | (unsigned long long)(~i);
}

extern "C" __global__ void __launch_bounds__(256) argmax(const scalar_t* __restrict__ x,
                                                         unsigned int* __restrict__ out,
                                                         unsigned int* __restrict__ scratch,
                                                         int v_len) {
#if __CUDA_ARCH__ >= 900
    // Early launch: wait for the kernel before this one, then let the next one be scheduled.
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    const unsigned long long n = v_len > 0 ? (unsigned long long)v_len : 0ull;
    const unsigned stride = gridDim.x * blockDim.x;
    unsigned long long best = 0;  // below every candidate: ~i of an index below 2^32 - 1 is > 0
    const unsigned first = blockIdx.x * blockDim.x + threadIdx.x;
    // All EPT loads of the first pass are issued before any compare.
    scalar_t v[EPT];
#pragma unroll
    for (int e = 0; e < EPT; ++e) {
        const unsigned long long i = first + (unsigned long long)e * stride;
        if (i < n) v[e] = x[i];
    }
#pragma unroll
    for (int e = 0; e < EPT; ++e) {
        const unsigned long long i = first + (unsigned long long)e * stride;
        if (i < n) best = max(best, candidate(to_f(v[e]), (unsigned)i));
    }
    // A grid smaller than V / EPT (a cap on blocks) goes round again.
    for (unsigned long long i = first + (unsigned long long)EPT * stride; i < n; i += stride)
        best = max(best, candidate(to_f(x[i]), (unsigned)i));

#pragma unroll
    for (int o = 16; o > 0; o >>= 1) best = max(best, __shfl_xor_sync(0xffffffffu, best, o));
    __shared__ unsigned long long warp_best[8];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) warp_best[warp] = best;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); ++w) best = max(best, warp_best[w]);
        unsigned long long* slot = reinterpret_cast<unsigned long long*>(scratch + 2);
        atomicMax(slot, best);
        __threadfence();  // the fold is visible to every SM before this block is counted
        if (atomicAdd(scratch, 1u) == gridDim.x - 1) {
            // Every block's fold was counted before this one: read the result through L2.
            const unsigned long long all = atomicAdd(slot, 0ull);
            out[0] = ~(unsigned)(all & 0xffffffffull);
            *slot = 0ull;
            scratch[0] = 0u;
        }
    }
}
