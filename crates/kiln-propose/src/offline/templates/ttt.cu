#define F KILN_F
#define KS KO_KS               // k-split of the F x F products
#define CPT KO_CPT             // columns per thread (float, float2 or float4 accesses)
#define NCG (F / CPT)          // column groups
#define NT (KS * NCG)          // threads per block
#define KQ (F / KS)            // rows of W per thread
#define NWARP (NT / 32)
// Assumes F % KS == 0, F % CPT == 0 and NT a multiple of 32 (the generator checks them).
static_assert(F % KS == 0 && F % CPT == 0, "offline ttt: KS and CPT must divide F");
static_assert(NT == KO_BLOCK && NT % 32 == 0 && NT <= 1024, "offline ttt: bad block");

// CPT consecutive floats through load hint H / store hint H.
template <int H> __device__ __forceinline__ void ldf(const float* p, float* d) {
#if CPT == 4
    const float4 t = ld_word<H>(reinterpret_cast<const float4*>(p));
    d[0] = t.x; d[1] = t.y; d[2] = t.z; d[3] = t.w;
#elif CPT == 2
    const float2 t = ld_word<H>(reinterpret_cast<const float2*>(p));
    d[0] = t.x; d[1] = t.y;
#else
    d[0] = ld_word<H>(p);
#endif
}
template <int H> __device__ __forceinline__ void stf(float* p, const float* s) {
#if CPT == 4
    st_word<H>(reinterpret_cast<float4*>(p), make_float4(s[0], s[1], s[2], s[3]));
#elif CPT == 2
    st_word<H>(reinterpret_cast<float2*>(p), make_float2(s[0], s[1]));
#else
    st_word<H>(p, s[0]);
#endif
}

// Sum over the block of one value per thread (every thread calls it).
__device__ __forceinline__ float block_sum(float v, float* red) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();  // red may still be read by the previous call
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < NWARP; ++i) s += red[i];
    return s;
}
// Two sums for the price of one pair of barriers.
__device__ __forceinline__ float2 block_sum2(float a, float b, float* red) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        a += __shfl_xor_sync(0xffffffffu, a, o);
        b += __shfl_xor_sync(0xffffffffu, b, o);
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0) {
        red[threadIdx.x >> 5] = a;
        red[NWARP + (threadIdx.x >> 5)] = b;
    }
    __syncthreads();
    float2 s = make_float2(0.f, 0.f);
#pragma unroll
    for (int i = 0; i < NWARP; ++i) {
        s.x += red[i];
        s.y += red[NWARP + i];
    }
    return s;
}

extern "C" __global__ void KO_BOUNDS ttt_linear_decode(
    const scalar_t* __restrict__ xq, const scalar_t* __restrict__ xk, const scalar_t* __restrict__ xv,
    const float* __restrict__ W, const float* __restrict__ b, const float* __restrict__ W_grad,
    const float* __restrict__ b_grad, const scalar_t* __restrict__ ln_w, const scalar_t* __restrict__ ln_b,
    const float* __restrict__ lr, const float* __restrict__ token_idx, const int* __restrict__ last_in_mb,
    scalar_t* __restrict__ out, float* __restrict__ W_out, float* __restrict__ b_out,
    float* __restrict__ W_grad_out, float* __restrict__ b_grad_out, int T) {
    __shared__ float s_xq[F], s_xk[F], s_part[KS][F], s_red[2 * NWARP];
    const long long r = blockIdx.x;
    if (r >= (long long)T) return;  // block-uniform
    const int tid = threadIdx.x;
    const int j0 = (tid % NCG) * CPT;  // first column of this thread
    const int q = tid / NCG;           // k-slice
    const int head = (int)(r % KILN_H);
    for (int i = tid; i < F; i += NT) {
        s_xq[i] = to_f(xq[r * F + i]);
        s_xk[i] = to_f(xk[r * F + i]);
    }
    const float* Wr = W + r * F * F;
    const float* Wgr = W_grad + r * F * F;
    float wreg[KQ][CPT];
#if KO_PRE
    float wg[KQ][CPT];  // W_grad prefetched with W: its latency hides behind the first LayerNorm
#endif
#pragma unroll
    for (int i = 0; i < KQ; ++i) {
        ldf<KO_WH>(Wr + (q * KQ + i) * F + j0, wreg[i]);
#if KO_PRE
        ldf<KO_WH>(Wgr + (q * KQ + i) * F + j0, wg[i]);
#endif
    }
    __syncthreads();  // s_xq, s_xk ready
    float acc[CPT];
#pragma unroll
    for (int c = 0; c < CPT; ++c) acc[c] = 0.f;
#pragma unroll
    for (int i = 0; i < KQ; ++i) {
        const float xkk = s_xk[q * KQ + i];
#pragma unroll
        for (int c = 0; c < CPT; ++c) acc[c] = fmaf(xkk, wreg[i][c], acc[c]);
    }
#pragma unroll
    for (int c = 0; c < CPT; ++c) s_part[q][j0 + c] = acc[c];
    __syncthreads();
    const bool lead = q == 0;  // one thread per column group feeds the row reductions
    float z[CPT], lw[CPT], lb[CPT], bb[CPT];
    float t0 = 0.f;
#pragma unroll
    for (int c = 0; c < CPT; ++c) {
        bb[c] = __ldg(b + r * F + j0 + c);
        z[c] = bb[c];
#pragma unroll
        for (int i = 0; i < KS; ++i) z[c] += s_part[i][j0 + c];
        lw[c] = to_f(ln_w[head * F + j0 + c]);
        lb[c] = to_f(ln_b[head * F + j0 + c]);
        t0 += z[c];
    }
    // LayerNorm forward of Z and its backward for the reconstruction loss.
    const float mean = block_sum(lead ? t0 : 0.f, s_red) / (float)F;
    float dz[CPT], t1 = 0.f;
#pragma unroll
    for (int c = 0; c < CPT; ++c) { dz[c] = z[c] - mean; t1 += dz[c] * dz[c]; }
    const float var = block_sum(lead ? t1 : 0.f, s_red) / (float)F;
    const float stdv = sqrtf(var + KILN_LN_EPS);
    float xh[CPT], g[CPT], t2 = 0.f, t3 = 0.f;
#pragma unroll
    for (int c = 0; c < CPT; ++c) {
        xh[c] = dz[c] / stdv;
        const float target = to_f(xv[r * F + j0 + c]) - s_xk[j0 + c];
        g[c] = (lw[c] * xh[c] + lb[c] - target) * lw[c];
        t2 += g[c];
        t3 += g[c] * xh[c];
    }
#if KO_FUSE
    const float2 sums = block_sum2(lead ? t2 : 0.f, lead ? t3 : 0.f, s_red);
    const float sg = sums.x, sgx = sums.y;
#else
    const float sg = block_sum(lead ? t2 : 0.f, s_red);
    const float sgx = block_sum(lead ? t3 : 0.f, s_red);
#endif
    const float lrr = __ldg(lr + r), ti = __ldg(token_idx + r);
    const bool last = __ldg(last_in_mb + r) != 0;
    float gz[CPT], bg_new[CPT], b_bar[CPT];
#pragma unroll
    for (int c = 0; c < CPT; ++c) {
        gz[c] = ((float)F * g[c] - sg - xh[c] * sgx) / ((float)F * stdv);
        bg_new[c] = __ldg(b_grad + r * F + j0 + c) + lrr * gz[c];
        b_bar[c] = bb[c] - ti * bg_new[c];
    }

    float* Wo = W_out + r * F * F;
    float* Wgo = W_grad_out + r * F * F;
#pragma unroll
    for (int c = 0; c < CPT; ++c) acc[c] = 0.f;
#pragma unroll
    for (int i = 0; i < KQ; ++i) {
        const int kk = q * KQ + i;
#if KO_PRE
        const float* wgv = wg[i];
#else
        float wgv[CPT];
        ldf<KO_WH>(Wgr + kk * F + j0, wgv);
#endif
        const float sx = lrr * s_xk[kk];
        float wo[CPT], wgo[CPT];
#pragma unroll
        for (int c = 0; c < CPT; ++c) {
            const float wg_new = wgv[c] + sx * gz[c];
            const float w_bar = wreg[i][c] - ti * wg_new;
            acc[c] = fmaf(s_xq[kk], w_bar, acc[c]);
            wo[c] = last ? w_bar : wreg[i][c];
            wgo[c] = last ? 0.f : wg_new;
        }
        stf<KO_SH>(Wo + kk * F + j0, wo);
        stf<KO_SH>(Wgo + kk * F + j0, wgo);
    }
    __syncthreads();  // everyone has read s_part for Z
#pragma unroll
    for (int c = 0; c < CPT; ++c) s_part[q][j0 + c] = acc[c];
    __syncthreads();
    float zq[CPT], t4 = 0.f;
#pragma unroll
    for (int c = 0; c < CPT; ++c) {
        zq[c] = b_bar[c];
#pragma unroll
        for (int i = 0; i < KS; ++i) zq[c] += s_part[i][j0 + c];
        t4 += zq[c];
    }
    const float mq = block_sum(lead ? t4 : 0.f, s_red) / (float)F;
    float dq[CPT], t5 = 0.f;
#pragma unroll
    for (int c = 0; c < CPT; ++c) { dq[c] = zq[c] - mq; t5 += dq[c] * dq[c]; }
    const float vq = block_sum(lead ? t5 : 0.f, s_red) / (float)F;
    const float sq = sqrtf(vq + KILN_LN_EPS);
    if (lead) {
#pragma unroll
        for (int c = 0; c < CPT; ++c) {
            const int jj = j0 + c;
            const float y = lw[c] * (dq[c] / sq) + lb[c];
            out[r * F + jj] = from_f<scalar_t>(s_xq[jj] + y);
            b_out[r * F + jj] = last ? b_bar[c] : bb[c];
            b_grad_out[r * F + jj] = last ? 0.f : bg_new[c];
        }
    }
}
