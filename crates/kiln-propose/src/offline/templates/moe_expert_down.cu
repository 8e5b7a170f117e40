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

// The vector at `p` of each of the warp's KO_RPW weight rows (p is row r0's); rows past H unread.
__device__ __forceinline__ void load_rows(Pack (&w)[KO_RPW], const scalar_t* p, int r0) {
#pragma unroll
    for (int r = 0; r < KO_RPW; ++r)
        if (r0 + r < KILN_H) w[r] = ld_pack<KO_LDH>(p + (long long)r * KILN_I);
}

// y[r] += the dot product of row r's vector with the matching vector of h.
__device__ __forceinline__ void fma_rows(float (&y)[KO_RPW], const Pack (&w)[KO_RPW], const Pack& hp, int r0) {
#pragma unroll
    for (int r = 0; r < KO_RPW; ++r) {
        if (r0 + r < KILN_H) {
#pragma unroll
            for (int j = 0; j < KO_VEC; ++j) y[r] = fmaf(pget(w[r], j), pget(hp, j), y[r]);
        }
    }
}

// The vector of h[t] that meets vector c of slot k's rows: staged in shared memory, or through L1.
__device__ __forceinline__ Pack h_vec(const scalar_t* hrow, int k, int c) {
#if KO_HS
    return reinterpret_cast<const Pack*>(hrow)[k * NV + c];
#else
    return ld_pack<1>(hrow + (long long)k * KILN_I + (long long)c * KO_VEC);
#endif
}

// acc[r] += w'_k * dtype(the warp's sum of y[r]): one slot's weighted down projection.
__device__ __forceinline__ void add_slot(float (&acc)[KO_RPW], const float (&y)[KO_RPW], float wk) {
#if KILN_WEIGHT_IN_DTYPE
    wk = round_dt(wk);
#endif
#pragma unroll
    for (int r = 0; r < KO_RPW; ++r) acc[r] = fmaf(wk, round_dt(warp_sum(y[r])), acc[r]);
}

#if KO_FLAT
#define JV ((NV + 31) / 32)  // vectors per lane per row
#define NP (KILN_K * JV)     // (slot, vector) pairs per lane
// Loads pairs p0 .. p0 + KO_UNR - 1 of the lane's (slot, vector) stream (slot-major).
__device__ __forceinline__ void load_pairs(Pack (&w)[KO_UNR][KO_RPW], const scalar_t* w_down,
                                           const unsigned int (&e)[KILN_K], int p0, int r0, int lane) {
#pragma unroll
    for (int q = 0; q < KO_UNR; ++q) {
        const int p = p0 + q, k = p / JV, c = (p % JV) * 32 + lane;
        if (p < NP && c < NV && e[k] < (unsigned int)KILN_E)
            load_rows(w[q], w_down + ((long long)e[k] * KILN_H + r0) * KILN_I + (long long)c * KO_VEC, r0);
    }
}
#endif

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
    unsigned int e[KILN_K];
#pragma unroll
    for (int k = 0; k < KILN_K; ++k) e[k] = __ldg(indices + t * KILN_K + k);
    // The weights do not depend on h: the first batch is in flight while h is staged.
    Pack w[KO_UNR][KO_RPW];
    load_pairs(w, w_down, e, 0, r0, lane);
#endif
#if KO_HS
    // h[t] (K*I values) staged once per block: every warp reads all of it.
    __shared__ __align__(16) scalar_t hsh[KILN_K * KILN_I];
    for (int c = (int)threadIdx.x; c < KILN_K * NV; c += KO_BLOCK)
        reinterpret_cast<Pack*>(hsh)[c] = ld_pack<1>(h + t * (KILN_K * KILN_I) + (long long)c * KO_VEC);
    __syncthreads();
    const scalar_t* hrow = hsh;
#else
    const scalar_t* hrow = h + t * (KILN_K * KILN_I);
#endif
    if (r0 >= KILN_H) return;
    float acc[KO_RPW];
#pragma unroll
    for (int r = 0; r < KO_RPW; ++r) acc[r] = 0.f;
#if KO_FLAT
    float y[KILN_K][KO_RPW];
#pragma unroll
    for (int k = 0; k < KILN_K; ++k)
#pragma unroll
        for (int r = 0; r < KO_RPW; ++r) y[k][r] = 0.f;
#pragma unroll
    for (int p0 = 0; p0 < NP; p0 += KO_UNR) {
        if (p0 > 0) load_pairs(w, w_down, e, p0, r0, lane);
#pragma unroll
        for (int q = 0; q < KO_UNR; ++q) {
            const int p = p0 + q, k = p / JV, c = (p % JV) * 32 + lane;
            if (p < NP && c < NV && e[k] < (unsigned int)KILN_E) {
                fma_rows(y[k], w[q], h_vec(hrow, k, c), r0);
            }
        }
    }
    // The slots in order k = 0..K-1; a slot naming no expert reads no weight and adds nothing
    // (the same for the whole warp).
#pragma unroll
    for (int k = 0; k < KILN_K; ++k)
        if (e[k] < (unsigned int)KILN_E) add_slot(acc, y[k], __ldg(weights + t * KILN_K + k));
#else
    for (int k = 0; k < KILN_K; ++k) {
        const unsigned int e = __ldg(indices + t * KILN_K + k);
        if (e >= (unsigned int)KILN_E) continue;  // no expert: nothing read, nothing added
        const scalar_t* row0 = w_down + ((long long)e * KILN_H + r0) * KILN_I;
        float y[KO_RPW];
#pragma unroll
        for (int r = 0; r < KO_RPW; ++r) y[r] = 0.f;
        for (int c0 = lane; c0 < NV; c0 += 32 * KO_UNR) {
            // KO_UNR vectors of each of the warp's KO_RPW weight rows in flight per lane.
            Pack w[KO_UNR][KO_RPW];
#pragma unroll
            for (int q = 0; q < KO_UNR; ++q) {
                const int c = c0 + 32 * q;
                if (c < NV) load_rows(w[q], row0 + (long long)c * KO_VEC, r0);
            }
#pragma unroll
            for (int q = 0; q < KO_UNR; ++q) {
                const int c = c0 + 32 * q;
                if (c < NV) {
                    fma_rows(y, w[q], h_vec(hrow, k, c), r0);
                }
            }
        }
        add_slot(acc, y, __ldg(weights + t * KILN_K + k));
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
