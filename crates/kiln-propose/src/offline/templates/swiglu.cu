// Assumes I % KO_VEC == 0 (the generator checks it; the static_assert proves it).
static_assert(KILN_I % KO_VEC == 0, "offline swiglu: I must be a multiple of the vector width");

__device__ __forceinline__ float silu(float g) {
#if KO_ACT == 0
    return g / (1.0f + expf(-g));
#elif KO_ACT == 1
    // Reciprocal instead of a division; exp(-g) = inf gives -0, the right limit.
    return g * __frcp_rn(1.0f + __expf(-g));
#else
    return __fdividef(g, 1.0f + __expf(-g));
#endif
}

__device__ __forceinline__ float act(float g, float u) {
    const float s = silu(g);
#if KILN_SILU_IN_DTYPE
    return round_dt(s) * u;
#else
    return s * u;
#endif
}

// Vector k of this thread inside its block's tile.
__device__ __forceinline__ int vslot(int k) {
#if KO_LAY == 0
    return k * KO_BLOCK + (int)threadIdx.x;   // a block-width apart: every load instruction is coalesced
#else
    return (int)threadIdx.x * KO_UPT + k;      // adjacent: one thread streams KO_UPT*KO_VEC elements
#endif
}

extern "C" __global__ void KO_BOUNDS swiglu(const scalar_t* __restrict__ gate,
                                            const scalar_t* __restrict__ up,
                                            scalar_t* __restrict__ out, int T) {
    const long long n = (long long)T * (KILN_I / KO_VEC);  // vectors in the tensor
    const long long tile = (long long)KO_BLOCK * KO_UPT;
#if KO_PERS
    for (long long base = (long long)blockIdx.x * tile; base < n; base += (long long)gridDim.x * tile) {
#else
    {
        const long long base = (long long)blockIdx.x * tile;
#endif
        Pack g[KO_UPT], u[KO_UPT];
#pragma unroll
        for (int k = 0; k < KO_UPT; ++k) {
            const long long c = base + vslot(k);
            if (c < n) {
                g[k] = ld_pack<KO_LDH>(gate + c * KO_VEC);
                u[k] = ld_pack<KO_LDH>(up + c * KO_VEC);
            }
        }
#pragma unroll
        for (int k = 0; k < KO_UPT; ++k) {
            const long long c = base + vslot(k);
            if (c < n) {
                Pack o;
#pragma unroll
                for (int j = 0; j < KO_VEC; ++j) pset(o, j, act(pget(g[k], j), pget(u[k], j)));
                st_pack<KO_STH>(out + c * KO_VEC, o);
            }
        }
    }
}
