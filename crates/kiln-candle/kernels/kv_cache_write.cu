// kv_cache_write — appends T new key and value rows to a head-major KV cache at positions read
// from device memory.
//
// Math (a copy, no rounding): for t < T, kv head h < KVH, with p = positions[t],
//   k_cache[h, p, d] = k[t, h, d]   d < DK
//   v_cache[h, p, d] = v[t, h, d]   d < DV
// A position outside 0..S_MAX writes nothing (the host checks bounds before every launch; the
// device check keeps a stale position from writing outside the cache).
// Why the positions come from device memory: a captured decode graph replays this launch at
// every step, so the position cannot be a launch argument.
// Layout: k and v are strided views (their last dimension contiguous): element (t, h, d) of k
// sits at k[t * K_ST + h * K_SH + d], likewise v; k_cache[KVH, S_MAX, DK], v_cache[KVH, S_MAX, DV]
// contiguous. Defines: KILN_DTYPE.
// Arguments: k, v, positions (i32[T]), k_cache, v_cache, T, KVH, DK, DV, S_MAX, K_ST, K_SH, V_ST, V_SH.
// Launch: one block of 128 threads per (t, h): grid = T * KVH, threads stride over d.
// Early launch: the models may start this kernel while the one before it runs; it waits
// (griddepcontrol.wait) before its first memory access.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

typedef KILN_DTYPE scalar_t;

extern "C" __global__ void kv_cache_write(const scalar_t* __restrict__ k,
                                          const scalar_t* __restrict__ v,
                                          const int* __restrict__ positions,
                                          scalar_t* __restrict__ k_cache,
                                          scalar_t* __restrict__ v_cache,
                                          int t_rows, int kvh, int dk, int dv, int s_max,
                                          long long k_st, long long k_sh,
                                          long long v_st, long long v_sh) {
#if __CUDA_ARCH__ >= 900
    // Early launch: wait for the kernel before this one, then let the next one be scheduled.
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    const int t = blockIdx.x / kvh;
    const int h = blockIdx.x % kvh;
    if (t >= t_rows) return;
    const int p = positions[t];
    if (p < 0 || p >= s_max) return;
    const scalar_t* ks = k + t * k_st + h * k_sh;
    const scalar_t* vs = v + t * v_st + h * v_sh;
    scalar_t* kd = k_cache + ((long long)h * s_max + p) * dk;
    scalar_t* vd = v_cache + ((long long)h * s_max + p) * dv;
    for (int d = threadIdx.x; d < dk; d += blockDim.x) kd[d] = ks[d];
    for (int d = threadIdx.x; d < dv; d += blockDim.x) vd[d] = vs[d];
}
