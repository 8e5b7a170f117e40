// Offline top-k router template (softmax_topk, sigmoid_topk with N_GROUP = 1).
//
// Math (f32 inside), per row t of logits[T,E]:
//   softmax: p[e] = exp(l[e] - max l) / sum_e exp(l[e] - max l); idx = the K largest p, by
//            descending p, equal p: lower expert first; weights = p[idx] (KILN_RENORM=1:
//            divided by their sum). KO_ALGO 0 selects on exp(l - max) (p is monotone in it)
//            and divides only the K picks; KO_ALGO 1 selects on l itself and exponentiates
//            only the picks (exp is monotone), the full sum only when not renormalising.
//   sigmoid: s[e] = 1/(1 + exp(-l[e])) (KILN_SIGMOID_IN_DTYPE=1: rounded to the dtype),
//            idx = the K largest s + bias, as above; weights = s[idx] / (sum s[idx] + NORM_EPS)
//            * SCALE (dtype mode rounds every step as HF does). The bias only chooses.
// Launch: TPR lanes per row (a power of two <= 32), RPB rows per block, grid ceil_div(T, RPB)
// (KO_PERS: at most KO_PERS*SMS blocks and a grid-stride loop). Rows past T join every
// shuffle but never touch memory. Lane l writes picks l, l + TPR, ... of its row.
#define E KILN_E
#define K KILN_K
#define TPR KO_TPR                    // lanes per row (a power of two <= 32)
#define RPB KO_RPB                    // rows per block
#define EPL ((E + TPR - 1) / TPR)     // experts per lane
#define KL (K < EPL ? K : EPL)        // length of a lane's sorted head list
#define NEG_INF (-__int_as_float(0x7f800000))
#define NO_IDX 0x7fffffff
static_assert(32 % TPR == 0, "offline topk: TPR must divide 32");
static_assert(KO_BLOCK == TPR * RPB && KO_BLOCK % 32 == 0 && KO_BLOCK <= 1024, "offline topk: bad block");
static_assert(EPL <= 32, "offline topk: at most 32 experts per lane (the picked mask is 32 bits)");
static_assert(K >= 1 && K <= E && K <= 32, "offline topk: K must be in 1..=min(E, 32)");
#if KO_LAY == 1
// Blocked layout: lane l holds experts [l*EPL, (l+1)*EPL), loaded KO_VEC at a time.
static_assert(E % TPR == 0 && EPL % KO_VEC == 0 && E % KO_VEC == 0, "offline topk: blocked layout needs E % TPR == 0");
#endif
#if KO_SIGMOID
static_assert(KILN_N_GROUP == 1, "offline sigmoid_topk templates handle N_GROUP = 1 only");
#endif

// Larger score wins; equal scores go to the lower expert index.
__device__ __forceinline__ bool better(float ov, int oi, float v, int i) { return ov > v || (ov == v && oi < i); }

// An order-preserving key of a score (-0 counts as +0, as `better` compares them), and back.
__device__ __forceinline__ unsigned ord_key(float v) {
    const unsigned u = __float_as_uint(v + 0.0f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float from_key(unsigned k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

__device__ __forceinline__ int expert_of(int l, int j) {
#if KO_LAY == 0
    return l + TPR * j;
#else
    return l * EPL + j;
#endif
}
__device__ __forceinline__ int owner_lane(int e) {
#if KO_LAY == 0
    return e % TPR;
#else
    return e / EPL;
#endif
}
__device__ __forceinline__ int owner_slot(int e) {
#if KO_LAY == 0
    return e / TPR;
#else
    return e % EPL;
#endif
}

__device__ __forceinline__ float ex(float v) {
#if KO_FAST
    return __expf(v);
#else
    return expf(v);
#endif
}

// Max and min of unsigned keys over a row's TPR lanes. A whole-warp row is one redux.sync;
// narrower rows use a shuffle butterfly, because redux.sync with a different member mask per
// row of the warp is serialised (it measured 2-10x slower than the shuffles).
__device__ __forceinline__ unsigned grp_max_u32(unsigned v) {
#if TPR == 32
    return __reduce_max_sync(0xffffffffu, v);
#else
#pragma unroll
    for (int o = TPR / 2; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
#endif
}
__device__ __forceinline__ unsigned grp_min_u32(unsigned v) {
#if TPR == 32
    return __reduce_min_sync(0xffffffffu, v);
#else
#pragma unroll
    for (int o = TPR / 2; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
#endif
}
// The row maximum: on order-preserving keys (one redux.sync for a whole-warp row).
__device__ __forceinline__ float seg_max(float v) { return from_key(grp_max_u32(ord_key(v))); }
__device__ __forceinline__ float seg_sum(float v) {
#pragma unroll
    for (int o = TPR / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

@ENTRY@ {
    const int l = (int)threadIdx.x % TPR;
    const int sub = (int)threadIdx.x / TPR;
#if KO_PERS
    const long long groups = ((long long)T + RPB - 1) / RPB;
    for (long long grp = blockIdx.x; grp < groups; grp += gridDim.x) {
#else
    {
        const long long grp = blockIdx.x;
#endif
        const long long row = grp * RPB + sub;
        // Rows past T join every shuffle (the whole warp must) but never touch memory.
        const bool live = row < (long long)T;
        const scalar_t* lr = logits + row * E;

        // x[j]: this lane's raw logits (NEG_INF for padding slots and dead rows).
        float x[EPL];
#if KO_LAY == 0
#pragma unroll
        for (int j = 0; j < EPL; ++j) {
            const int e = expert_of(l, j);
            x[j] = (live && e < E) ? ld_elem<KO_LDH>(lr + e) : NEG_INF;
        }
#else
        if (live) {
#pragma unroll
            for (int p = 0; p < EPL / KO_VEC; ++p) {
                const Pack pk = ld_pack<KO_LDH>(lr + l * EPL + p * KO_VEC);
#pragma unroll
                for (int q = 0; q < KO_VEC; ++q) x[p * KO_VEC + q] = pget(pk, q);
            }
        } else {
#pragma unroll
            for (int j = 0; j < EPL; ++j) x[j] = NEG_INF;
        }
#endif

#if KO_SIGMOID
        // s: the unbiased sigmoid scores (they make the weights); x becomes the selection score s + bias.
        float sv[EPL];
#pragma unroll
        for (int j = 0; j < EPL; ++j) {
            const int e = expert_of(l, j);
            if (live && e < E) {
#if KO_FAST
                float s = __frcp_rn(1.0f + __expf(-x[j]));
#else
                float s = 1.0f / (1.0f + expf(-x[j]));
#endif
#if KILN_SIGMOID_IN_DTYPE
                s = round_dt(s);
#endif
                sv[j] = s;
                x[j] = s + __ldg(bias + e);
            } else {
                sv[j] = 0.f;
                x[j] = NEG_INF;
            }
        }
#elif KO_ALGO == 0
        // exp(l - max) (and, without renormalisation, its row sum) first, then select on those:
        // p is exp(l - max) / sum, monotone in it, so only the K picks are divided (below).
#if !KILN_RENORM
        float rsum;
#endif
        {
            float m = NEG_INF;
#pragma unroll
            for (int j = 0; j < EPL; ++j) m = fmaxf(m, x[j]);
            m = seg_max(m);
            float s = 0.f;
#pragma unroll
            for (int j = 0; j < EPL; ++j) {
                const bool ok = live && expert_of(l, j) < E;
                const float v = ok ? ex(x[j] - m) : 0.f;
                s += v;
                x[j] = ok ? v : NEG_INF;
            }
#if KILN_RENORM
            (void)s;  // the renormalised weights need only the picks' sum
#else
            rsum = seg_sum(s);
#endif
        }
#endif
        // (KO_ALGO == 1: select on the logits themselves; exp is monotonic, so the order is the same.)

        float pv[K];
        int pi[K];
#if KO_SIGMOID
        float ps[K];
#endif
#if KO_SEL == 2
        // K rounds on order-preserving integer keys made once per slot (0: padding, dead rows and
        // experts already picked): each lane's largest key (ascending slots hold ascending experts,
        // so a strict > keeps the lower one on ties), then the row's largest key and the lowest
        // expert holding it as two group reductions, and the owner clears the winner's key. Why:
        // a round costs one integer compare per slot, with no float or index tie logic.
        unsigned key[EPL];
#pragma unroll
        for (int j = 0; j < EPL; ++j) key[j] = (live && expert_of(l, j) < E) ? ord_key(x[j]) : 0u;
#pragma unroll
        for (int k = 0; k < K; ++k) {
            unsigned bk = 0u, bi = 0xffffffffu;
#if KO_SIGMOID
            float bs = 0.f;
#endif
#pragma unroll
            for (int j = 0; j < EPL; ++j) {
                if (key[j] > bk) {
                    bk = key[j];
                    bi = (unsigned)expert_of(l, j);
#if KO_SIGMOID
                    bs = sv[j];
#endif
                }
            }
            const unsigned top = grp_max_u32(bk);
            const unsigned win = grp_min_u32(bk == top ? bi : 0xffffffffu);
#pragma unroll
            for (int j = 0; j < EPL; ++j) key[j] = expert_of(l, j) == (int)win ? 0u : key[j];
            pv[k] = from_key(top);
            pi[k] = (int)win;
#if KO_SIGMOID
            // The winner's unbiased score, from the lane that holds it (every lane of the warp
            // shuffles: rows past T take part, so the full mask is exact).
            ps[k] = __shfl_sync(0xffffffffu, bs, owner_lane((int)win), TPR);
#endif
        }
#elif KO_SEL == 0
        // K rounds: each lane's best unpicked slot, then an arg-max across the row's lanes.
        unsigned picked = 0u;
#pragma unroll
        for (int k = 0; k < K; ++k) {
            float bv = NEG_INF;
            int bi = NO_IDX;
#if KO_SIGMOID
            float bs = 0.f;
#endif
#pragma unroll
            for (int j = 0; j < EPL; ++j) {
                const int e = expert_of(l, j);
                if (e < E && !((picked >> j) & 1u) && better(x[j], e, bv, bi)) {
                    bv = x[j];
                    bi = e;
#if KO_SIGMOID
                    bs = sv[j];
#endif
                }
            }
#pragma unroll
            for (int o = TPR / 2; o > 0; o >>= 1) {
                const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
                const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
#if KO_SIGMOID
                const float os = __shfl_xor_sync(0xffffffffu, bs, o);
#endif
                if (better(ov, oi, bv, bi)) {
                    bv = ov;
                    bi = oi;
#if KO_SIGMOID
                    bs = os;
#endif
                }
            }
            if (bi != NO_IDX && owner_lane(bi) == l) picked |= 1u << owner_slot(bi);
            pv[k] = bv;
            pi[k] = bi;
#if KO_SIGMOID
            ps[k] = bs;
#endif
        }
#else
        // Each lane sorts its own top-KL once; then K rounds compare only the lanes' heads.
        float hv[KL];
        int hi[KL];
#if KO_SIGMOID
        float hs[KL];
#endif
#pragma unroll
        for (int q = 0; q < KL; ++q) {
            hv[q] = NEG_INF;
            hi[q] = NO_IDX;
#if KO_SIGMOID
            hs[q] = 0.f;
#endif
        }
#pragma unroll
        for (int j = 0; j < EPL; ++j) {
            const int e = expert_of(l, j);
            if (e < E) {
                float cv = x[j];
                int ci = e;
#if KO_SIGMOID
                float cs = sv[j];
#endif
#pragma unroll
                for (int q = 0; q < KL; ++q) {
                    if (better(cv, ci, hv[q], hi[q])) {
                        const float tv = hv[q]; hv[q] = cv; cv = tv;
                        const int ti = hi[q]; hi[q] = ci; ci = ti;
#if KO_SIGMOID
                        const float ts = hs[q]; hs[q] = cs; cs = ts;
#endif
                    }
                }
            }
        }
#pragma unroll
        for (int k = 0; k < K; ++k) {
            float bv = hv[0];
            int bi = hi[0];
#if KO_SIGMOID
            float bs = hs[0];
#endif
#pragma unroll
            for (int o = TPR / 2; o > 0; o >>= 1) {
                const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
                const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
#if KO_SIGMOID
                const float os = __shfl_xor_sync(0xffffffffu, bs, o);
#endif
                if (better(ov, oi, bv, bi)) {
                    bv = ov;
                    bi = oi;
#if KO_SIGMOID
                    bs = os;
#endif
                }
            }
            if (bi != NO_IDX && hi[0] == bi) {  // this lane supplied the pick: pop its head
#pragma unroll
                for (int q = 0; q + 1 < KL; ++q) {
                    hv[q] = hv[q + 1];
                    hi[q] = hi[q + 1];
#if KO_SIGMOID
                    hs[q] = hs[q + 1];
#endif
                }
                hv[KL - 1] = NEG_INF;
                hi[KL - 1] = NO_IDX;
            }
            pv[k] = bv;
            pi[k] = bi;
#if KO_SIGMOID
            ps[k] = bs;
#endif
        }
#endif

        // Every lane of the row holds all K picks. The sums need every pick; the divisions only
        // the picks a lane writes: lane l writes picks l, l + TPR, ...
        float nu[K];  // numerator of each pick's weight, over the common den
        float den = 0.f;
#if KO_SIGMOID
        (void)pv;  // the weights come from the unbiased scores ps, not the selection scores
#pragma unroll
        for (int k = 0; k < K; ++k) {
            nu[k] = ps[k];
            den += ps[k];
        }
#if KILN_SIGMOID_IN_DTYPE
        den = round_dt(round_dt(den) + KILN_NORM_EPS);
#else
        den = den + KILN_NORM_EPS;
#endif
#elif KO_ALGO == 0
        // Picks are exp(l - max); p = that / rsum.
#pragma unroll
        for (int k = 0; k < K; ++k) nu[k] = pv[k];
#if KILN_RENORM
        // p[idx] / sum_k p[idx] = e[idx] / sum_k e[idx]: the row sum cancels.
#pragma unroll
        for (int k = 0; k < K; ++k) den += pv[k];
#else
        den = rsum;
#endif
#else
        // Picks are logits and pv[0] is the row maximum.
#pragma unroll
        for (int k = 0; k < K; ++k) nu[k] = ex(pv[k] - pv[0]);
#if KILN_RENORM
#pragma unroll
        for (int k = 0; k < K; ++k) den += nu[k];
#else
        // The full softmax denominator.
#pragma unroll
        for (int j = 0; j < EPL; ++j) den += (live && expert_of(l, j) < E) ? ex(x[j] - pv[0]) : 0.f;
        den = seg_sum(den);
#endif
#endif
        if (live) {
#pragma unroll
            for (int q = 0; q < (K + TPR - 1) / TPR; ++q) {
                const int k = q * TPR + l;
                if (k < K) {
                    // Pick k's numerator and expert: a select chain over this lane's candidates
                    // (a register array indexed by a lane-dependent k would go to local memory).
                    float n = 0.f;
                    int ix = 0;
#pragma unroll
                    for (int kk = q * TPR; kk < K && kk < (q + 1) * TPR; ++kk) {
                        n = kk == k ? nu[kk] : n;
                        ix = kk == k ? pi[kk] : ix;
                    }
#if KO_SIGMOID && KILN_SIGMOID_IN_DTYPE
                    const float wk = round_dt(round_dt(n / den) * KILN_SCALE);
#elif KO_SIGMOID
                    const float wk = (n / den) * KILN_SCALE;
#else
                    const float wk = n / den;
#endif
                    st_word<KO_STH>(weights + row * K + k, wk);
                    st_word<KO_STH>(indices + row * K + k, (unsigned int)ix);
                }
            }
        }
    }
}
