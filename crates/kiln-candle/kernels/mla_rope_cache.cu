// mla_rope_cache — GLM-4.7-Flash / DeepSeek-V3 attention inputs in one launch: the MLA key
// (each head's no-rope part next to the rope part all heads share), rope on q and that key, and
// the cache write of the key and the value.
//
// Math, for token t at position p = positions[t], head h < NH (HD = NOPE + ROPE, the rotary slice
// [ROT_OFFSET, ROT_OFFSET + ROT_DIM) = [NOPE, HD), ROT_DIM = ROPE):
//   key[t, h, :] = [k_nope[t, h, 0..NOPE] | k_pe[t, 0..ROPE]]            (mla_key's copy)
//   q_out[t, h, :] = rope(q[t, h, :]),  k_cache[h, p, :] = rope(key[t, h, :]),
//   v_cache[h, p, 0..DV] = v[t, h, :]                                     (kv_cache_write's copy)
//   rope is exactly rope.cu's (the same compile-time inv_freq table, the same sincosf of
//   f32(p) * inv_freq_i, the same rotation and rounding, KILN_INTERLEAVED and KILN_HF_ROUNDING
//   as there); dims outside the rotary slice are copied. A position outside 0..S_MAX writes no
//   cache row. So q_out and the caches are bit for bit what mla_key, rope and kv_cache_write leave.
// Layout: q[T, NH, HD] contiguous; k_nope, v strided views (last dimension contiguous): element
// (t, h, d) at k_nope[t * N_ST + h * N_SH + d], likewise v with V_ST, V_SH; k_pe[t, d] at
// k_pe[t * P_ST + d]; positions i32[T]; q_out[T, NH, HD]; k_cache[NH, S_MAX, HD],
// v_cache[NH, S_MAX, DV] contiguous.
// Defines: KILN_DTYPE and rope's (KILN_HEAD_DIM, KILN_ROT_DIM, KILN_ROT_OFFSET, KILN_INTERLEAVED,
// KILN_THETA, KILN_HF_ROUNDING; KILN_QH and KILN_KH unused).
// Arguments: q, k_nope, k_pe, v, positions, q_out, k_cache, v_cache, T, NH, DV, S_MAX, N_ST, N_SH,
// P_ST, V_ST, V_SH.
// Why: at decode GLM-4.7-Flash ran these as three launches (mla_key, rope, kv_cache_write) of
// 3 to 5 µs each per layer on an H100 (2026-12-08), for about 30 KB of data.
// Launch: one block of 128 threads per (t, h): grid = T * NH; the block builds the token's
// cos/sin table in shared memory (ROT_DIM/2 sincos, as rope.cu), then threads stride over the
// pass-through dims, the rotary pairs and v.
// Early launch: the models may start this kernel while the one before it runs; it waits
// (griddepcontrol.wait) before its first memory access.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

typedef KILN_DTYPE scalar_t;

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename S> __device__ __forceinline__ S from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
// Rounds an f32 value through the storage dtype.
__device__ __forceinline__ float round_dt(float v) { return to_f(from_f<scalar_t>(v)); }

#define HD KILN_HEAD_DIM
#define ROT KILN_ROT_DIM
#define OFF KILN_ROT_OFFSET
#define HALF (ROT / 2)
static_assert(ROT % 2 == 0 && ROT >= 2, "mla_rope_cache: ROT_DIM must be even");
static_assert(OFF + ROT == HD, "mla_rope_cache: the rotary slice must be the key's rope part, [NOPE, HD)");

// inv_freq exactly as rope.cu builds it (same code, so the same f32 values): HF's f32 steps with
// the power taken in double at compile time so it rounds to the correct f32.
constexpr double LN2_HI = 6.93147180369123816490e-01;  // ln 2 = LN2_HI + LN2_LO, HI exact in 32 bits
constexpr double LN2_LO = 1.90821492927058770002e-10;
// ln(x), x > 0: x = m * 2^k with m in [1, 2), ln m = 2 atanh((m-1)/(m+1)) as a series.
constexpr double const_ln(double x) {
    int k = 0;
    while (x >= 2.0) { x *= 0.5; ++k; }
    while (x < 1.0) { x *= 2.0; --k; }
    const double z = (x - 1.0) / (x + 1.0), z2 = z * z;
    double term = z, sum = 0.0;
    for (int n = 1; n < 99; n += 2) { sum += term / n; term *= z2; }
    return 2.0 * sum + k * LN2_LO + k * LN2_HI;
}
// exp(y): y = k ln 2 + r with |r| <= ln2/2, exp r as a Taylor series, times 2^k.
constexpr double const_exp(double y) {
    const int k = (int)(y / (LN2_HI + LN2_LO) + (y >= 0.0 ? 0.5 : -0.5));
    const double r = (y - k * LN2_HI) - k * LN2_LO;
    double term = 1.0, sum = 1.0;
    for (int n = 1; n < 30; ++n) { term *= r / n; sum += term; }
    for (int i = 0; i < k; ++i) sum *= 2.0;
    for (int i = 0; i > k; --i) sum *= 0.5;
    return sum;
}
struct InvFreq { float v[HALF]; };
constexpr InvFreq make_inv_freq() {
    InvFreq f{};
    const double ln_theta = const_ln((double)(KILN_THETA));
    for (int i = 0; i < HALF; ++i) {
        const float expo = (float)(2 * i) / (float)ROT;
        const float p = (float)const_exp((double)expo * ln_theta);
        f.v[i] = 1.0f / p;
    }
    return f;
}
__constant__ InvFreq INV_FREQ = make_inv_freq();

// rope.cu's rotation, same expression (so the same contraction where the dtype is f32).
__device__ __forceinline__ void rotate(float x1, float x2, float c, float s, float& y1, float& y2) {
#if KILN_HF_ROUNDING
    y1 = round_dt(x1 * c) - round_dt(x2 * s);
    y2 = round_dt(x2 * c) + round_dt(x1 * s);
#else
    y1 = x1 * c - x2 * s;
    y2 = x2 * c + x1 * s;
#endif
}

// The two places of pair i inside the rotary slice.
__device__ __forceinline__ int first_of(int i) { return KILN_INTERLEAVED ? 2 * i : i; }
__device__ __forceinline__ int second_of(int i) { return KILN_INTERLEAVED ? 2 * i + 1 : HALF + i; }

extern "C" __global__ void __launch_bounds__(128) mla_rope_cache(
    const scalar_t* __restrict__ q, const scalar_t* __restrict__ k_nope,
    const scalar_t* __restrict__ k_pe, const scalar_t* __restrict__ v,
    const int* __restrict__ positions, scalar_t* __restrict__ q_out,
    scalar_t* __restrict__ k_cache, scalar_t* __restrict__ v_cache, int t_rows, int nh, int dv,
    int s_max, long long n_st, long long n_sh, long long p_st, long long v_st, long long v_sh) {
#if __CUDA_ARCH__ >= 900
    // Early launch: wait for the kernel before this one, then let the next one be scheduled.
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    __shared__ float cs[HALF], sn[HALF];
    const int t = blockIdx.x / nh;
    const int h = blockIdx.x % nh;
    if (t >= t_rows) return;  // block-uniform
    const int posi = __ldg(positions + t);
    const float pos = (float)posi;
    for (int i = threadIdx.x; i < HALF; i += blockDim.x) {
        const float inv_freq = INV_FREQ.v[i];
        float s, c;
        sincosf(pos * inv_freq, &s, &c);
#if KILN_HF_ROUNDING
        c = round_dt(c);
        s = round_dt(s);
#endif
        cs[i] = c;
        sn[i] = s;
    }
    __syncthreads();

    const scalar_t* qs = q + ((long long)t * nh + h) * HD;
    scalar_t* qd = q_out + ((long long)t * nh + h) * HD;
    const scalar_t* ks = k_nope + t * n_st + h * n_sh;
    const scalar_t* ps = k_pe + t * p_st;
    const bool in_cache = posi >= 0 && posi < s_max;
    scalar_t* kd = k_cache + ((long long)h * s_max + (in_cache ? posi : 0)) * HD;
    // The pass-through dims: q's copied out, the key's from k_nope.
    for (int d = threadIdx.x; d < OFF; d += blockDim.x) {
        qd[d] = qs[d];
        if (in_cache) kd[d] = ks[d];
    }
    // The rotary pairs: q's, and the key's (k_pe, the same for every head).
    for (int i = threadIdx.x; i < HALF; i += blockDim.x) {
        const int a = first_of(i), b = second_of(i);
        float y1, y2;
        rotate(to_f(qs[OFF + a]), to_f(qs[OFF + b]), cs[i], sn[i], y1, y2);
        qd[OFF + a] = from_f<scalar_t>(y1);
        qd[OFF + b] = from_f<scalar_t>(y2);
        if (in_cache) {
            rotate(to_f(ps[a]), to_f(ps[b]), cs[i], sn[i], y1, y2);
            kd[OFF + a] = from_f<scalar_t>(y1);
            kd[OFF + b] = from_f<scalar_t>(y2);
        }
    }
    if (!in_cache) return;
    const scalar_t* vs = v + t * v_st + h * v_sh;
    scalar_t* vd = v_cache + ((long long)h * s_max + posi) * dv;
    for (int d = threadIdx.x; d < dv; d += blockDim.x) vd[d] = vs[d];
}
