// Assumes H % KO_VEC == 0 and a staged x row fits 48 KiB (the generator checks both).
static_assert(KILN_H % KO_VEC == 0, "offline moe_expert_swiglu: H must be a multiple of the vector width");
static_assert(!KO_XS || KILN_H * (int)sizeof(scalar_t) <= 48 * 1024, "offline moe_expert_swiglu: x[t] must fit 48 KiB");
#define NV (KILN_H / KO_VEC)            // vectors per weight row
#define RPB (KO_WPB * KO_RPW)           // rows of h per block
#define RB ((KILN_I + RPB - 1) / RPB)   // blocks per slot

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

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

extern "C" __global__ void KO_BOUNDS moe_expert_swiglu(const scalar_t* __restrict__ x,
                                                       const scalar_t* __restrict__ w_gate,
                                                       const scalar_t* __restrict__ w_up,
                                                       const unsigned int* __restrict__ indices,
                                                       scalar_t* __restrict__ h, int T) {
#if __CUDA_ARCH__ >= 900
    // Early launch: a model may start this kernel while the one before it runs.
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    const long long slot = blockIdx.x / RB;  // t*K + k
    const int warp = (int)(threadIdx.x >> 5);
    const int lane = (int)(threadIdx.x & 31);
    const int i0 = (int)(blockIdx.x - slot * RB) * RPB + warp * KO_RPW;  // this warp's first row
    if (slot >= (long long)T * KILN_K) return;  // the whole block
    const long long t = slot / KILN_K;
#if KO_XS
    // x[t] staged once per block: every warp reads all of it.
    __shared__ __align__(16) scalar_t xsh[KILN_H];
    for (int c = (int)threadIdx.x; c < NV; c += KO_BLOCK)
        reinterpret_cast<Pack*>(xsh)[c] = ld_pack<1>(x + t * KILN_H + (long long)c * KO_VEC);
    __syncthreads();
#else
    const scalar_t* xr = x + t * KILN_H;
#endif
    if (i0 >= KILN_I) return;
    const unsigned int e = __ldg(indices + slot);
    if (e >= (unsigned int)KILN_E) {
        // No expert: the slot's rows of h are zeros.
        if (lane < KO_RPW && i0 + lane < KILN_I) h[slot * KILN_I + i0 + lane] = from_f<scalar_t>(0.f);
        return;
    }
    const long long row0 = ((long long)e * KILN_I + i0) * KILN_H;
    float ag[KO_RPW], au[KO_RPW];
#pragma unroll
    for (int r = 0; r < KO_RPW; ++r) ag[r] = au[r] = 0.f;
    for (int c0 = lane; c0 < NV; c0 += 32 * KO_UNR) {
        // KO_UNR vectors of each of the warp's KO_RPW gate and up rows in flight per lane.
        Pack g[KO_UNR][KO_RPW], u[KO_UNR][KO_RPW];
#pragma unroll
        for (int q = 0; q < KO_UNR; ++q) {
            const int c = c0 + 32 * q;
#pragma unroll
            for (int r = 0; r < KO_RPW; ++r) {
                if (c < NV && i0 + r < KILN_I) {
                    const long long off = row0 + (long long)r * KILN_H + (long long)c * KO_VEC;
                    g[q][r] = ld_pack<KO_LDH>(w_gate + off);
                    u[q][r] = ld_pack<KO_LDH>(w_up + off);
                }
            }
        }
#pragma unroll
        for (int q = 0; q < KO_UNR; ++q) {
            const int c = c0 + 32 * q;
            if (c < NV) {
#if KO_XS
                const Pack xp = reinterpret_cast<const Pack*>(xsh)[c];
#else
                const Pack xp = ld_pack<1>(xr + (long long)c * KO_VEC);
#endif
#pragma unroll
                for (int r = 0; r < KO_RPW; ++r) {
                    if (i0 + r < KILN_I) {
#pragma unroll
                        for (int j = 0; j < KO_VEC; ++j) {
                            const float xv = pget(xp, j);
                            ag[r] = fmaf(pget(g[q][r], j), xv, ag[r]);
                            au[r] = fmaf(pget(u[q][r], j), xv, au[r]);
                        }
                    }
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < KO_RPW; ++r) {
        ag[r] = warp_sum(ag[r]);
        au[r] = warp_sum(au[r]);
    }
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < KO_RPW; ++r) {
            if (i0 + r < KILN_I) {
                const float gq = round_dt(ag[r]);
                const float uq = round_dt(au[r]);
                const float s = silu(gq);
#if KILN_SILU_IN_DTYPE
                h[slot * KILN_I + i0 + r] = from_f<scalar_t>(round_dt(s) * uq);
#else
                h[slot * KILN_I + i0 + r] = from_f<scalar_t>(s * uq);
#endif
            }
        }
    }
}
