// Assumes D % KO_VEC == 0 (the generator checks it; the static_assert proves it).
static_assert(KILN_D % KO_VEC == 0, "offline moe_combine: D must be a multiple of the vector width");
#define CPR (KILN_D / KO_VEC)  // vectors per row

__device__ __forceinline__ int vslot(int k) {
#if KO_LAY == 0
    return k * KO_BLOCK + (int)threadIdx.x;
#else
    return (int)threadIdx.x * KO_UPT + k;
#endif
}

// out[t, ci*VEC ..] from the loaded expert vectors; k-sum in order 0..K-1 with fmaf, one rounding.
__device__ __forceinline__ Pack combine(const Pack* e, const float* wk, const scalar_t* __restrict__ shared,
                                        long long t, long long ci) {
    float acc[KO_VEC];
#pragma unroll
    for (int j = 0; j < KO_VEC; ++j) acc[j] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KILN_K; ++kk) {
#pragma unroll
        for (int j = 0; j < KO_VEC; ++j) acc[j] = fmaf(wk[kk], pget(e[kk], j), acc[j]);
    }
#if KILN_HAS_SHARED
    const Pack s = ld_pack<KO_LDH>(shared + t * KILN_D + ci * KO_VEC);
#endif
    Pack o;
#pragma unroll
    for (int j = 0; j < KO_VEC; ++j) {
#if KILN_HAS_SHARED
        pset(o, j, acc[j] + pget(s, j));
#else
        pset(o, j, acc[j]);
#endif
    }
    return o;
}

extern "C" __global__ void KO_BOUNDS moe_combine(const scalar_t* __restrict__ expert_out,
                                                 const float* __restrict__ weights,
                                                 const scalar_t* __restrict__ shared,
                                                 scalar_t* __restrict__ out, int T) {
#if KO_MAP == 0
    // Flat: the T*CPR output vectors, KO_UPT per thread.
    const long long n = (long long)T * CPR;
    const long long tile = (long long)KO_BLOCK * KO_UPT;
#if KO_PERS
    for (long long base = (long long)blockIdx.x * tile; base < n; base += (long long)gridDim.x * tile) {
#else
    {
        const long long base = (long long)blockIdx.x * tile;
#endif
        Pack e[KO_UPT][KILN_K];
#pragma unroll
        for (int k = 0; k < KO_UPT; ++k) {
            const long long c = base + vslot(k);
            if (c < n) {
                const long long t = c / CPR;
                const long long ci = c - t * CPR;
#pragma unroll
                for (int kk = 0; kk < KILN_K; ++kk)
                    e[k][kk] = ld_pack<KO_LDH>(expert_out + (t * KILN_K + kk) * KILN_D + ci * KO_VEC);
            }
        }
#pragma unroll
        for (int k = 0; k < KO_UPT; ++k) {
            const long long c = base + vslot(k);
            if (c < n) {
                const long long t = c / CPR;
                const long long ci = c - t * CPR;
                float wk[KILN_K];
#pragma unroll
                for (int kk = 0; kk < KILN_K; ++kk) wk[kk] = __ldg(weights + t * KILN_K + kk);
                st_pack<KO_STH>(out + t * KILN_D + ci * KO_VEC, combine(e[k], wk, shared, t, ci));
            }
        }
    }
#else
    // Row-blocked: each work item is one slice of one row, so the row's K weights are loaded once.
    const int bpr = (CPR + KO_BLOCK * KO_UPT - 1) / (KO_BLOCK * KO_UPT);  // items per row
    const long long n = (long long)T * bpr;
#if KO_PERS
    for (long long item = blockIdx.x; item < n; item += gridDim.x) {
#else
    {
        const long long item = blockIdx.x;
#endif
        const long long t = item / bpr;
        const long long first = (item - t * bpr) * (long long)(KO_BLOCK * KO_UPT);
        float wk[KILN_K];
#pragma unroll
        for (int kk = 0; kk < KILN_K; ++kk) wk[kk] = __ldg(weights + t * KILN_K + kk);
        Pack e[KO_UPT][KILN_K];
#pragma unroll
        for (int k = 0; k < KO_UPT; ++k) {
            const long long ci = first + vslot(k);
            if (ci < CPR) {
#pragma unroll
                for (int kk = 0; kk < KILN_K; ++kk)
                    e[k][kk] = ld_pack<KO_LDH>(expert_out + (t * KILN_K + kk) * KILN_D + ci * KO_VEC);
            }
        }
#pragma unroll
        for (int k = 0; k < KO_UPT; ++k) {
            const long long ci = first + vslot(k);
            if (ci < CPR) st_pack<KO_STH>(out + t * KILN_D + ci * KO_VEC, combine(e[k], wk, shared, t, ci));
        }
    }
#endif
}
