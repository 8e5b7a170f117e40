// Assumes I % KO_VEC == 0, a staged h[t] fits 48 KiB and, with KO_FLAT, K * KO_RPW <= 32 partial
// sums per lane (the generator checks all three).
static_assert(KILN_I % KO_VEC == 0, "offline moe_expert_down: I must be a multiple of the vector width");
static_assert(!KO_HS || KILN_K * KILN_I * (int)sizeof(scalar_t) <= 48 * 1024,
              "offline moe_expert_down: h[t] must fit 48 KiB");
#define NV (KILN_I / KO_VEC)            // vectors per weight row
#define RPB (KO_WPB * KO_RPW)           // output rows per block
#define RB ((KILN_H + RPB - 1) / RPB)   // blocks per token

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

extern "C" __global__ void KO_BOUNDS moe_expert_down(const scalar_t* __restrict__ h,
                                                     const scalar_t* __restrict__ w_down,
                                                     const unsigned int* __restrict__ indices,
                                                     const float* __restrict__ weights,
                                                     const scalar_t* __restrict__ shared,
                                                     scalar_t* __restrict__ out, int T) {
#if __CUDA_ARCH__ >= 900
    // Early launch: a model may start this kernel while the one before it runs.
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    const long long t = blockIdx.x / RB;
    const int warp = (int)(threadIdx.x >> 5);
    const int lane = (int)(threadIdx.x & 31);
    const int r0 = (int)(blockIdx.x - t * RB) * RPB + warp * KO_RPW;  // this warp's first output row
    if (t >= T) return;  // the whole block
#if KO_FLAT
    // Every slot's rows as one stream of (slot, vector) pairs, KO_UNR loads in flight per lane
    // across slots: a row has only a few vectors per lane, and slot by slot the K slots would
    // wait for K memory latencies one after another.
    constexpr int JV = (NV + 31) / 32;  // vectors per lane per row
    constexpr int NP = KILN_K * JV;     // (slot, vector) pairs per lane
    unsigned int e[KILN_K];
#pragma unroll
    for (int k = 0; k < KILN_K; ++k) e[k] = __ldg(indices + t * KILN_K + k);
    float y[KILN_K][KO_RPW];
#pragma unroll
    for (int k = 0; k < KILN_K; ++k)
#pragma unroll
        for (int r = 0; r < KO_RPW; ++r) y[k][r] = 0.f;
    // The weights do not depend on h: the first batch is in flight while h is staged.
    Pack w[KO_UNR][KO_RPW];
#pragma unroll
    for (int q = 0; q < KO_UNR; ++q) {
        const int p = q, k = p / JV, c = (p % JV) * 32 + lane;
#pragma unroll
        for (int r = 0; r < KO_RPW; ++r)
            if (p < NP && c < NV && e[k] < (unsigned int)KILN_E && r0 + r < KILN_H)
                w[q][r] = ld_pack<KO_LDH>(w_down + ((long long)e[k] * KILN_H + r0 + r) * KILN_I + (long long)c * KO_VEC);
    }
#endif
#if KO_HS
    // h[t] (K*I values) staged once per block: every warp reads all of it.
    __shared__ __align__(16) scalar_t hsh[KILN_K * KILN_I];
    for (int c = (int)threadIdx.x; c < KILN_K * NV; c += KO_BLOCK)
        reinterpret_cast<Pack*>(hsh)[c] = ld_pack<1>(h + t * (KILN_K * KILN_I) + (long long)c * KO_VEC);
    __syncthreads();
#else
    const scalar_t* ht = h + t * (KILN_K * KILN_I);
#endif
    if (r0 >= KILN_H) return;
    float acc[KO_RPW];
#pragma unroll
    for (int r = 0; r < KO_RPW; ++r) acc[r] = 0.f;
#if KO_FLAT
#pragma unroll
    for (int p0 = 0; p0 < NP; p0 += KO_UNR) {
        if (p0 > 0) {
#pragma unroll
            for (int q = 0; q < KO_UNR; ++q) {
                const int p = p0 + q, k = p / JV, c = (p % JV) * 32 + lane;
#pragma unroll
                for (int r = 0; r < KO_RPW; ++r)
                    if (p < NP && c < NV && e[k] < (unsigned int)KILN_E && r0 + r < KILN_H)
                        w[q][r] = ld_pack<KO_LDH>(w_down + ((long long)e[k] * KILN_H + r0 + r) * KILN_I + (long long)c * KO_VEC);
            }
        }
#pragma unroll
        for (int q = 0; q < KO_UNR; ++q) {
            const int p = p0 + q, k = p / JV, c = (p % JV) * 32 + lane;
            if (p < NP && c < NV && e[k] < (unsigned int)KILN_E) {
#if KO_HS
                const Pack hp = reinterpret_cast<const Pack*>(hsh)[k * NV + c];
#else
                const Pack hp = ld_pack<1>(ht + (long long)k * KILN_I + (long long)c * KO_VEC);
#endif
#pragma unroll
                for (int r = 0; r < KO_RPW; ++r) {
                    if (r0 + r < KILN_H) {
#pragma unroll
                        for (int j = 0; j < KO_VEC; ++j) y[k][r] = fmaf(pget(w[q][r], j), pget(hp, j), y[k][r]);
                    }
                }
            }
        }
    }
    // The slots in order k = 0..K-1; a slot naming no expert reads no weight and adds nothing.
#pragma unroll
    for (int k = 0; k < KILN_K; ++k) {
        if (e[k] >= (unsigned int)KILN_E) continue;  // the same for the whole warp
        float wk = __ldg(weights + t * KILN_K + k);
#if KILN_WEIGHT_IN_DTYPE
        wk = round_dt(wk);
#endif
#pragma unroll
        for (int r = 0; r < KO_RPW; ++r) acc[r] = fmaf(wk, round_dt(warp_sum(y[k][r])), acc[r]);
    }
#else
    for (int k = 0; k < KILN_K; ++k) {
        const unsigned int e = __ldg(indices + t * KILN_K + k);
        if (e >= (unsigned int)KILN_E) continue;  // no expert: nothing read, nothing added
        const long long row0 = ((long long)e * KILN_H + r0) * KILN_I;
        float y[KO_RPW];
#pragma unroll
        for (int r = 0; r < KO_RPW; ++r) y[r] = 0.f;
        for (int c0 = lane; c0 < NV; c0 += 32 * KO_UNR) {
            // KO_UNR vectors of each of the warp's KO_RPW weight rows in flight per lane.
            Pack w[KO_UNR][KO_RPW];
#pragma unroll
            for (int q = 0; q < KO_UNR; ++q) {
                const int c = c0 + 32 * q;
#pragma unroll
                for (int r = 0; r < KO_RPW; ++r)
                    if (c < NV && r0 + r < KILN_H)
                        w[q][r] = ld_pack<KO_LDH>(w_down + row0 + (long long)r * KILN_I + (long long)c * KO_VEC);
            }
#pragma unroll
            for (int q = 0; q < KO_UNR; ++q) {
                const int c = c0 + 32 * q;
                if (c < NV) {
#if KO_HS
                    const Pack hp = reinterpret_cast<const Pack*>(hsh)[k * NV + c];
#else
                    const Pack hp = ld_pack<1>(ht + (long long)k * KILN_I + (long long)c * KO_VEC);
#endif
#pragma unroll
                    for (int r = 0; r < KO_RPW; ++r) {
                        if (r0 + r < KILN_H) {
#pragma unroll
                            for (int j = 0; j < KO_VEC; ++j) y[r] = fmaf(pget(w[q][r], j), pget(hp, j), y[r]);
                        }
                    }
                }
            }
        }
        float wk = __ldg(weights + t * KILN_K + k);
#if KILN_WEIGHT_IN_DTYPE
        wk = round_dt(wk);
#endif
#pragma unroll
        for (int r = 0; r < KO_RPW; ++r) acc[r] = fmaf(wk, round_dt(warp_sum(y[r])), acc[r]);
    }
#endif
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < KO_RPW; ++r) {
            if (r0 + r < KILN_H) {
                float a = acc[r];
#if KILN_HAS_SHARED
                a += to_f(shared[t * KILN_H + r0 + r]);
#endif
                out[t * KILN_H + r0 + r] = from_f<scalar_t>(a);
            }
        }
    }
}
