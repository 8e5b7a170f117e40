#define D KILN_D
#define TPR KO_TPR                    // threads per row
#define RPB KO_RPB                    // rows per block
#define NV (D / (TPR * KO_VEC))       // vectors per thread
// Assumes D % (TPR*VEC) == 0, so every thread owns exactly NV vectors (no tail).
static_assert(D % (TPR * KO_VEC) == 0, "offline rmsnorm: D must be a multiple of TPR*VEC");
static_assert(KO_BLOCK == TPR * RPB && KO_BLOCK % 32 == 0 && KO_BLOCK <= 1024, "offline rmsnorm: bad block");
static_assert(TPR <= 32 ? (32 % TPR == 0) : (TPR % 32 == 0), "offline rmsnorm: a row is a lane segment or whole warps");

__device__ __forceinline__ float inv_rms(float ss) {
#if KO_RS
    return rsqrtf(ss / (float)D + KILN_EPS);
#else
    return 1.0f / sqrtf(ss / (float)D + KILN_EPS);
#endif
}

@ENTRY@ {
#if KO_ADD && __CUDA_ARCH__ >= 900
    // Early launch: a model may start this kernel while the one before it runs.
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
#if TPR > 32
    __shared__ float red[RPB][TPR / 32];
#endif
    const int l = (int)threadIdx.x % TPR;   // thread inside the row
    const int sub = (int)threadIdx.x / TPR; // row inside the block
    const long long groups = ((long long)T + RPB - 1) / RPB;
#if KO_PERS
    for (long long grp = blockIdx.x; grp < groups; grp += gridDim.x) {
#else
    {
        const long long grp = blockIdx.x;
#endif
        const long long row = grp * RPB + sub;
        // Rows past T still join the shuffles and barriers, but never touch memory.
        const bool live = row < (long long)T;
        const long long base = row * D;
        float ss = 0.f;
#if KO_KEEP
        Pack xv[NV];
#endif
        if (live) {
@UNROLL_NV@
            for (int i = 0; i < NV; ++i) {
#if KO_ADD
                // h = dtype(x + residual): the new residual, and the row the norm reads.
                const Pack xa = ld_pack<KO_LDH>(x + base + (i * TPR + l) * KO_VEC);
                const Pack ra = ld_pack<KO_LDH>(residual + base + (i * TPR + l) * KO_VEC);
                Pack p;
#pragma unroll
                for (int j = 0; j < KO_VEC; ++j) pset(p, j, pget(xa, j) + pget(ra, j));
                st_pack<KO_STH>(new_residual + base + (i * TPR + l) * KO_VEC, p);
#else
                const Pack p = ld_pack<KO_LDH>(x + base + (i * TPR + l) * KO_VEC);
#endif
#if KO_KEEP
                xv[i] = p;
#endif
#pragma unroll
                for (int j = 0; j < KO_VEC; ++j) { const float v = pget(p, j); ss = fmaf(v, v, ss); }
            }
        }
#pragma unroll
        for (int o = (TPR < 32 ? TPR : 32) / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
#if TPR > 32
        if ((threadIdx.x & 31) == 0) red[sub][l >> 5] = ss;
        __syncthreads();
        ss = 0.f;
#pragma unroll
        for (int i = 0; i < TPR / 32; ++i) ss += red[sub][i];
#endif
        if (live) {
            const float r = inv_rms(ss);
@UNROLL_NV@
            for (int i = 0; i < NV; ++i) {
                const int off = (i * TPR + l) * KO_VEC;
#if KO_KEEP
                const Pack p = xv[i];
#elif KO_ADD
                const Pack p = ld_pack<0>(new_residual + base + off);  // this thread's own write: plain load
#else
                const Pack p = ld_pack<1>(x + base + off);  // second read: usually an L1/L2 hit
#endif
                const Pack wp = ld_pack<1>(w + off);
                Pack o;
#pragma unroll
                for (int j = 0; j < KO_VEC; ++j) {
                    const float nrm = pget(p, j) * r;
#if KILN_CAST_BEFORE_SCALE
                    pset(o, j, round_dt(nrm) * pget(wp, j));
#else
                    pset(o, j, nrm * pget(wp, j));
#endif
                }
                st_pack<KO_STH>(out + base + off, o);
            }
        }
#if TPR > 32 && KO_PERS
        __syncthreads();  // red is rewritten by the next row group
#endif
    }
}
