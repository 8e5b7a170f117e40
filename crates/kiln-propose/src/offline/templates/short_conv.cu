// short_conv — LFM2's gated short convolution with its in-place state update.
//
// Math, per channel d, for the T rows t of bcx (B | C | x per row):
//   bx[t,d]   = dtype( B[t,d] * x[t,d] )
//   seq       = [state[0,d] .. state[L-2,d], bx[0,d] .. bx[T-1,d]]   (oldest first)
//   conv[t,d] = dtype( sum_{j<L} w[d,j] * seq[t+j] )   (f32 fmaf sum, j = 0..L-1)
//   out[t,d]  = dtype( C[t,d] * conv[t,d] )
// then state[i,d] = seq[T+i] (the last L-1 values of bx), in place.
// Layout: bcx[T,3D], w[D,L], state[L-1,D], out[T,D]; row-major, contiguous.
// Launch: thread n owns the KO_VEC adjacent channels from n*KO_VEC and walks the
// T rows in order, so a channel's state is read and written by that one thread
// only (race-free at every T); grid = ceil_div(D, KO_BLOCK*KO_VEC).
// Assumes D % KO_VEC == 0, so every vector access stays inside a row and is
// aligned to its width (the generator checks it; the static_assert proves it).
static_assert(KILN_D % KO_VEC == 0, "offline short_conv: D must be a multiple of the vector width");
static_assert(KILN_L >= 2 && KILN_L <= 8, "offline short_conv: L must be in 2..8");
static_assert(KO_PF * KO_VEC <= 32, "offline short_conv: at most 32 prefetched channel-rows per thread");

// The L weights of KO_VEC adjacent channels are KO_VEC*L contiguous elements:
// L vector loads, then unpacked per channel (element c*L + j is w[d0+c, j]).
__device__ __forceinline__ void load_w(const scalar_t* p, float (&wk)[KO_VEC][KILN_L]) {
    Pack q[KILN_L];
@UNROLL_L@
    for (int i = 0; i < KILN_L; ++i) q[i] = ld_pack<KO_LDH>(p + i * KO_VEC);
#pragma unroll
    for (int c = 0; c < KO_VEC; ++c) {
@UNROLL_L@
        for (int j = 0; j < KILN_L; ++j) wk[c][j] = pget(q[(c * KILN_L + j) / KO_VEC], (c * KILN_L + j) % KO_VEC);
    }
}

@ENTRY@ {
#if __CUDA_ARCH__ >= 900
    // Early launch: the model may start this kernel while the one before it
    // runs (as it does the catalog's); wait before the first memory access.
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    const int d0 = ((int)blockIdx.x * KO_BLOCK + (int)threadIdx.x) * KO_VEC;
    if (d0 >= KILN_D) return;
#if KO_KEEP
    // Weights and the L-1 older values stay in registers across rows; the state is written once at the end.
    float wk[KO_VEC][KILN_L];
    load_w(w + (long long)d0 * KILN_L, wk);
    float win[KO_VEC][KILN_L - 1];
@UNROLL_L@
    for (int j = 0; j < KILN_L - 1; ++j) {
        // Plain loads: the state is written by this kernel, so the read-only paths are not allowed.
        const Pack s = ld_pack<0>(state + (long long)j * KILN_D + d0);
#pragma unroll
        for (int c = 0; c < KO_VEC; ++c) win[c][j] = pget(s, c);
    }
#endif
    for (int t0 = 0; t0 < T; t0 += KO_PF) {
        // B, C and x of KO_PF rows are loaded before any is convolved: they do not depend on the state.
        Pack pb[KO_PF], pc[KO_PF], px[KO_PF];
#pragma unroll
        for (int r = 0; r < KO_PF; ++r) {
            if (t0 + r < T) {
                const scalar_t* row = bcx + (long long)(t0 + r) * 3 * KILN_D + d0;
                pb[r] = ld_pack<KO_LDH>(row);
                pc[r] = ld_pack<KO_LDH>(row + KILN_D);
                px[r] = ld_pack<KO_LDH>(row + 2 * KILN_D);
            }
        }
#pragma unroll
        for (int r = 0; r < KO_PF; ++r) {
            if (t0 + r < T) {
                const long long t = t0 + r;
                float bx[KO_VEC];
#pragma unroll
                for (int c = 0; c < KO_VEC; ++c) bx[c] = round_dt(pget(pb[r], c) * pget(px[r], c));
#if !KO_KEEP
                // Weights and the L-1 older values are re-read from memory every row (the seed's design).
                float wk[KO_VEC][KILN_L];
                load_w(w + (long long)d0 * KILN_L, wk);
                Pack s[KILN_L - 1];
@UNROLL_L@
                for (int j = 0; j < KILN_L - 1; ++j) s[j] = ld_pack<0>(state + (long long)j * KILN_D + d0);
#endif
                Pack o;
#pragma unroll
                for (int c = 0; c < KO_VEC; ++c) {
                    float acc = 0.f;
@UNROLL_L@
                    for (int j = 0; j < KILN_L - 1; ++j) {
#if KO_KEEP
                        acc = fmaf(wk[c][j], win[c][j], acc);
#else
                        acc = fmaf(wk[c][j], pget(s[j], c), acc);
#endif
                    }
                    acc = fmaf(wk[c][KILN_L - 1], bx[c], acc);
                    pset(o, c, pget(pc[r], c) * round_dt(acc));
                }
                st_pack<KO_STH>(out + t * KILN_D + d0, o);
#if KO_KEEP
#pragma unroll
                for (int c = 0; c < KO_VEC; ++c) {
@UNROLL_L@
                    for (int j = 0; j < KILN_L - 2; ++j) win[c][j] = win[c][j + 1];
                    win[c][KILN_L - 2] = bx[c];
                }
#else
                // Shift the state by one row in memory; bx is already a dtype value, so storing it is exact.
@UNROLL_L@
                for (int j = 0; j < KILN_L - 2; ++j) st_pack<0>(state + (long long)j * KILN_D + d0, s[j + 1]);
                Pack nb;
#pragma unroll
                for (int c = 0; c < KO_VEC; ++c) pset(nb, c, bx[c]);
                st_pack<0>(state + (long long)(KILN_L - 2) * KILN_D + d0, nb);
#endif
            }
        }
    }
#if KO_KEEP
@UNROLL_L@
    for (int j = 0; j < KILN_L - 1; ++j) {
        Pack s;
#pragma unroll
        for (int c = 0; c < KO_VEC; ++c) pset(s, c, win[c][j]);
        st_pack<0>(state + (long long)j * KILN_D + d0, s);
    }
#endif
}
