// Offline RMSNorm template (rmsnorm, and add_rmsnorm with KO_ADD = 1).
//
// Math (f32 inside), per row t of [T, D]:
//   KO_ADD: h[t,d] = dtype(x[t,d] + residual[t,d]) -> new_residual; the norm reads h (else h = x)
//   r = 1 / sqrt(mean_d(h[t,d]^2) + EPS)
//   KILN_CAST_BEFORE_SCALE=1: out[t,d] = dtype(w[d] * dtype(h[t,d] * r)); else dtype(w[d] * h[t,d] * r)
// Launch: TPR threads per row (a lane segment, or whole warps meeting in shared memory), RPB
// rows per block, grid ceil_div(T, RPB) (KO_PERS: at most KO_PERS*SMS blocks and a grid-stride
// loop). Thread l of a row owns vectors l, l + TPR, ... of KO_VEC elements. KO_KEEP holds the
// row in registers between the sum of squares and the write; KO_WPRE also loads w with it,
// before the reduction, so the write needs no second memory round trip.
#define D KILN_D
#define TPR KO_TPR                    // threads per row
#define RPB KO_RPB                    // rows per block
#define NV (D / (TPR * KO_VEC))       // vectors per thread
// Assumes D % (TPR*VEC) == 0, so every thread owns exactly NV vectors (no tail).
static_assert(D % (TPR * KO_VEC) == 0, "offline rmsnorm: D must be a multiple of TPR*VEC");
static_assert(KO_BLOCK == TPR * RPB && KO_BLOCK % 32 == 0 && KO_BLOCK <= 1024, "offline rmsnorm: bad block");
static_assert(TPR <= 32 ? (32 % TPR == 0) : (TPR % 32 == 0), "offline rmsnorm: a row is a lane segment or whole warps");
static_assert(!KO_WPRE || KO_KEEP, "offline rmsnorm: w is prefetched only beside a row kept in registers");

// Element j of a pack as f32. bf16 widens straight from its 32-bit word (a shift or a mask,
// bit-identical to __bfloat162float), so the packed words are the only copy that stays live:
// a row kept in registers beside w then fits the 32-register cap of 2048 resident threads.
template <typename S> __device__ __forceinline__ float rget_t(const Pack& c, int j) { return pget(c, j); }
template <> __device__ __forceinline__ float rget_t<__nv_bfloat16>(const Pack& c, int j) {
    if constexpr (KO_VEC % 2 == 0) {
        const unsigned wd = reinterpret_cast<const unsigned*>(c.w)[j >> 1];
        return __uint_as_float((j & 1) ? (wd & 0xffff0000u) : (wd << 16));
    } else {
        return pget(c, j);
    }
}
__device__ __forceinline__ float rget(const Pack& c, int j) { return rget_t<scalar_t>(c, j); }

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
#if KO_PERS
    const long long groups = ((long long)T + RPB - 1) / RPB;
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
#if KO_WPRE
        Pack wv[NV];
#endif
        if (live) {
#if KO_KEEP
            // Every load of this thread (x, residual, w) goes out before any arithmetic.
#if KO_ADD
            Pack rv[NV];
#endif
@UNROLL_NV@
            for (int i = 0; i < NV; ++i) {
                const int off = (i * TPR + l) * KO_VEC;
                xv[i] = ld_pack<KO_LDH>(x + base + off);
#if KO_ADD
                rv[i] = ld_pack<KO_LDH>(residual + base + off);
#endif
#if KO_WPRE
                wv[i] = ld_pack<1>(w + off);
#endif
            }
@UNROLL_NV@
            for (int i = 0; i < NV; ++i) {
#if KO_ADD
                // h = dtype(x + residual): the new residual (written now), and the row the norm reads.
                Pack p;
#pragma unroll
                for (int j = 0; j < KO_VEC; ++j) pset(p, j, rget(xv[i], j) + rget(rv[i], j));
                st_pack<KO_STH>(new_residual + base + (i * TPR + l) * KO_VEC, p);
                xv[i] = p;
#endif
#pragma unroll
                for (int j = 0; j < KO_VEC; ++j) { const float v = rget(xv[i], j); ss = fmaf(v, v, ss); }
            }
#else
@UNROLL_NV@
            for (int i = 0; i < NV; ++i) {
#if KO_ADD
                // h = dtype(x + residual): the new residual, and the row the norm reads.
                const Pack xa = ld_pack<KO_LDH>(x + base + (i * TPR + l) * KO_VEC);
                const Pack ra = ld_pack<KO_LDH>(residual + base + (i * TPR + l) * KO_VEC);
                Pack p;
#pragma unroll
                for (int j = 0; j < KO_VEC; ++j) pset(p, j, rget(xa, j) + rget(ra, j));
                st_pack<KO_STH>(new_residual + base + (i * TPR + l) * KO_VEC, p);
#else
                const Pack p = ld_pack<KO_LDH>(x + base + (i * TPR + l) * KO_VEC);
#endif
#pragma unroll
                for (int j = 0; j < KO_VEC; ++j) { const float v = rget(p, j); ss = fmaf(v, v, ss); }
            }
#endif
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
#if KO_WPRE
                const Pack wp = wv[i];
#else
                const Pack wp = ld_pack<1>(w + off);
#endif
                Pack o;
#pragma unroll
                for (int j = 0; j < KO_VEC; ++j) {
                    const float nrm = rget(p, j) * r;
#if KILN_CAST_BEFORE_SCALE
                    pset(o, j, round_dt(nrm) * rget(wp, j));
#else
                    pset(o, j, nrm * rget(wp, j));
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
