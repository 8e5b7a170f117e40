// decode_attention — causal GQA attention of the T new query tokens over a head-major KV cache.
//
// Math (f32 inside, one rounding at the output): query token t sits at position past+t and
// attends to the keys at positions 0..=past+t (past clamped to >= 0, at most S_MAX keys) of its
// kv head g = j / (QH/KVH) (query head j):
//   s_p = SCALE * (q[t,j,:] . k_cache[g,p,:])
//   out[t,j,:] = dtype( sum_p softmax(s)_p * v_cache[g,p,:] )
// Layout: q[T,QH,DQK]; k_cache[KVH,S_MAX,DQK], v_cache[KVH,S_MAX,DV] (head-major); out[T,QH,DV];
// pointers 16-byte aligned, DQK and DV multiples of 8.
// Launch: one block of KO_BLOCK threads per (token, query head), block b = t*QH + j, grid T*QH.
// Dynamic shared memory: S_MAX f32 scores, then KO_VSPLIT*DV f32 partial sums when KO_VSPLIT > 1
// (the launch line's smem is exactly that).
// Pass 1: groups of KO_LPK lanes take one key each, KO_KIF keys per group in flight; lane i of a
// group takes the KO_VEC-element chunks i, i+KO_LPK, … of q.k, and the group sums by shuffles.
// Softmax: block max, then the unnormalised probabilities overwrite the scores, block sum l.
// Pass 2: work item (vg, c) sums chunk c of V over rows vg, vg+KO_VSPLIT, … (KO_KIF rows in
// flight); with KO_VSPLIT > 1 the row groups' partial sums meet in shared memory.
// `past` is a runtime value: nothing here depends on it beyond the key count n (1 <= n <= S_MAX).
static_assert(KILN_QH >= 1 && KILN_KVH >= 1 && KILN_QH % KILN_KVH == 0,
              "offline decode_attention: QH must be a multiple of KVH");
static_assert(KILN_S_MAX >= 1, "offline decode_attention: S_MAX must be >= 1");
static_assert(KILN_DQK % KO_VEC == 0 && KILN_DV % KO_VEC == 0,
              "offline decode_attention: DQK and DV must be multiples of the vector width");
static_assert(KO_BLOCK % 32 == 0, "offline decode_attention: whole warps per block");
// A group never straddles a warp (full-mask shuffles), and every lane owns at least one chunk.
static_assert(32 % KO_LPK == 0 && KO_LPK * KO_VEC <= KILN_DQK,
              "offline decode_attention: lanes per key must divide 32 and each lane must own a chunk");

#define WARPS (KO_BLOCK / 32)
#define GQA (KILN_QH / KILN_KVH)
#define CPK (KILN_DQK / KO_VEC)             // chunks of a q or k row
#define QPL ((CPK + KO_LPK - 1) / KO_LPK)   // chunk rounds per lane (the last may leave lanes idle)
#define KGROUPS (KO_BLOCK / KO_LPK)         // key groups in the block
#define CPV (KILN_DV / KO_VEC)              // chunks of a v row
static_assert(KO_QS != 2 || QPL * KO_VEC <= 64, "offline decode_attention: q in registers is at most 64 elements per lane");
static_assert(KO_VSPLIT == 1 || KO_VSPLIT * CPV <= KO_BLOCK,
              "offline decode_attention: the row split must fit one item per thread");

// Every thread of the block calls these (control flow is uniform there): full-mask shuffles.
__device__ __forceinline__ float block_max(float v, float* red) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    v = red[0];
#pragma unroll
    for (int w = 1; w < WARPS; ++w) v = fmaxf(v, red[w]);
    return v;
}
__device__ __forceinline__ float block_sum(float v, float* red) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    v = 0.f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) v += red[w];  // the same order in every thread
    return v;
}

extern "C" __global__ void KO_BOUNDS decode_attention(const scalar_t* __restrict__ q,
                                                      const scalar_t* __restrict__ k_cache,
                                                      const scalar_t* __restrict__ v_cache,
                                                      scalar_t* __restrict__ out, int T, int past) {
#if __CUDA_ARCH__ >= 900
    // Early launch: the model may start this kernel while the one before it runs; wait before
    // the first memory access.
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    extern __shared__ float sc[];  // [S_MAX] scores, then probabilities; [KO_VSPLIT][DV] partial sums after
    // Separate arrays: a thread may still read red_max while another writes red_sum.
    __shared__ float red_max[WARPS], red_sum[WARPS];
    const int t = (int)blockIdx.x / KILN_QH;
    const int j = (int)blockIdx.x - t * KILN_QH;
    if (t >= T) return;  // the whole block: no barrier is left half-reached
    const int tid = (int)threadIdx.x;
    const int g = j / GQA;
    const long long pos = (long long)(past > 0 ? past : 0) + t + 1;
    const int n = pos < KILN_S_MAX ? (int)pos : KILN_S_MAX;  // keys, 1..=S_MAX
    const scalar_t* qr = q + ((long long)t * KILN_QH + j) * KILN_DQK;
    const scalar_t* kb = k_cache + (long long)g * KILN_S_MAX * KILN_DQK;
    const scalar_t* vb = v_cache + (long long)g * KILN_S_MAX * KILN_DV;

    // Pass 1: scores.
    {
        const int lig = tid & (KO_LPK - 1);  // lane in its key group
        const int grp = tid / KO_LPK;        // key group
#if KO_QS == 2
        // q stays packed in registers (converted per use): fewer registers for 16-bit types.
        Pack qc[QPL];
#pragma unroll
        for (int r = 0; r < QPL; ++r) {
            const int c = r * KO_LPK + lig;
            if (c < CPK) qc[r] = ld_pack<1>(qr + c * KO_VEC);
        }
#elif KO_QS == 1
        // q staged once in its dtype: a group's lanes then read adjacent chunks, conflict-free.
        __shared__ __align__(16) scalar_t qsh[KILN_DQK];
        for (int c = tid; c < CPK; c += KO_BLOCK) reinterpret_cast<Pack*>(qsh)[c] = ld_pack<1>(qr + c * KO_VEC);
        __syncthreads();
#endif
        // base is the same in every thread, so every lane of a warp runs every round and shuffle.
        for (int base = 0; base < n; base += KGROUPS * KO_KIF) {
            float d[KO_KIF];
#pragma unroll
            for (int u = 0; u < KO_KIF; ++u) d[u] = 0.f;
@UNROLL_QK@
            for (int r = 0; r < QPL; ++r) {
                const int c = r * KO_LPK + lig;
                if (c < CPK) {
                    Pack kc[KO_KIF];
#pragma unroll
                    for (int u = 0; u < KO_KIF; ++u) {
                        const int p = base + u * KGROUPS + grp;
                        if (p < n) kc[u] = ld_pack<KO_LDH>(kb + (long long)p * KILN_DQK + c * KO_VEC);
                    }
#if KO_QS == 2
                    const Pack qv = qc[r];
#elif KO_QS == 1
                    const Pack qv = reinterpret_cast<const Pack*>(qsh)[c];
#else
                    const Pack qv = ld_pack<0>(qr + c * KO_VEC);  // re-read through L1 (the seed's way)
#endif
#pragma unroll
                    for (int u = 0; u < KO_KIF; ++u) {
                        const int p = base + u * KGROUPS + grp;
                        if (p < n) {
#pragma unroll
                            for (int i = 0; i < KO_VEC; ++i) d[u] = fmaf(pget(qv, i), pget(kc[u], i), d[u]);
                        }
                    }
                }
            }
#pragma unroll
            for (int u = 0; u < KO_KIF; ++u) {
#pragma unroll
                for (int o = KO_LPK / 2; o > 0; o >>= 1) d[u] += __shfl_xor_sync(0xffffffffu, d[u], o);
                const int p = base + u * KGROUPS + grp;
                if (lig == 0 && p < n) sc[p] = d[u] * (float)KILN_SCALE;
            }
        }
    }
    __syncthreads();

    // Softmax statistics; the unnormalised probabilities overwrite the scores.
    float m = -__int_as_float(0x7f800000);  // -inf (no <math.h> under NVRTC)
    for (int p = tid; p < n; p += KO_BLOCK) m = fmaxf(m, sc[p]);
    m = block_max(m, red_max);
    float l = 0.f;
    for (int p = tid; p < n; p += KO_BLOCK) {
        const float e = expf(sc[p] - m);
        sc[p] = e;
        l += e;
    }
    l = block_sum(l, red_sum);  // its barrier also publishes the probabilities

    // Pass 2: the weighted V sum, divided by l (l >= 1: the max key contributes exp(0)).
    scalar_t* o = out + ((long long)t * KILN_QH + j) * KILN_DV;
    for (int w = tid; w < KO_VSPLIT * CPV; w += KO_BLOCK) {
        const int vg = w / CPV, c = w - vg * CPV;
        float acc[KO_VEC];
#pragma unroll
        for (int i = 0; i < KO_VEC; ++i) acc[i] = 0.f;
        const scalar_t* vc = vb + c * KO_VEC;
        for (int base = vg; base < n; base += KO_VSPLIT * KO_KIF) {
            Pack vv[KO_KIF];
#pragma unroll
            for (int u = 0; u < KO_KIF; ++u) {
                const int p = base + u * KO_VSPLIT;
                if (p < n) vv[u] = ld_pack<KO_LDH>(vc + (long long)p * KILN_DV);
            }
#pragma unroll
            for (int u = 0; u < KO_KIF; ++u) {
                const int p = base + u * KO_VSPLIT;
                if (p < n) {
                    const float wt = sc[p];
#pragma unroll
                    for (int i = 0; i < KO_VEC; ++i) acc[i] = fmaf(wt, pget(vv[u], i), acc[i]);
                }
            }
        }
#if KO_VSPLIT == 1
        Pack res;
#pragma unroll
        for (int i = 0; i < KO_VEC; ++i) pset(res, i, acc[i] / l);
        st_pack<0>(o + c * KO_VEC, res);
#else
        float* part = sc + KILN_S_MAX;  // [KO_VSPLIT][DV]
#pragma unroll
        for (int i = 0; i < KO_VEC; ++i) part[vg * KILN_DV + c * KO_VEC + i] = acc[i];
#endif
    }
#if KO_VSPLIT > 1
    __syncthreads();  // outside the item loop: every thread reaches it
    {
        const float* part = sc + KILN_S_MAX;
        for (int dd = tid; dd < KILN_DV; dd += KO_BLOCK) {
            float s = 0.f;
#pragma unroll
            for (int r = 0; r < KO_VSPLIT; ++r) s += part[r * KILN_DV + dd];  // row-group order
            o[dd] = from_f<scalar_t>(s / l);
        }
    }
#endif
}
