// rope — rotary position embedding applied to q and k in one launch.
//
// Math: for pair i in 0..ROT_DIM/2:  inv_freq_i = f32(1 / f32(THETA^f32(2i/ROT_DIM)))  (as HF builds it)
//                                    a = f32(pos[t]) * inv_freq_i,  c = cos(a), s = sin(a)
//   the pair (x1, x2) inside the rotary slice [ROT_OFFSET, ROT_OFFSET+ROT_DIM) of a head:
//     KILN_INTERLEAVED=0 (NeoX rotate-half; Qwen3, LFM2): x1 = x[OFF+i], x2 = x[OFF+ROT_DIM/2+i]
//     KILN_INTERLEAVED=1 (adjacent pairs; GLM/DeepSeek): x1 = x[OFF+2i], x2 = x[OFF+2i+1]
//   y1 = x1*c - x2*s,  y2 = x2*c + x1*s, written back to the same two positions
//   (HF's interleaved path writes [all y1 | all y2] instead; q and k get the same
//   permutation there, so attention scores agree — kiln keeps pairs adjacent).
//   KILN_HF_ROUNDING=1: as HF eager in the model dtype: c, s rounded to dtype, each product
//     rounded, then the sum rounded:  y1 = dtype(dtype(x1*c') - dtype(x2*s')).
//   KILN_HF_ROUNDING=0: f32 math, one rounding.
//   Dims outside the rotary slice are copied unchanged.
// Layout: q[T,QH,HEAD_DIM], k[T,KH,HEAD_DIM], positions[T] i32, q_out, k_out like q, k.
//   KH may be 0 (k, k_out unused). Pointers 16-byte aligned.
// Defines: KILN_DTYPE, KILN_QH (>=1), KILN_KH (>=0), KILN_HEAD_DIM, KILN_ROT_DIM, KILN_ROT_OFFSET
//   (all three multiples of 8, OFFSET+ROT_DIM <= HEAD_DIM), KILN_INTERLEAVED (0/1),
//   KILN_THETA (float literal), KILN_HF_ROUNDING (0/1).
// Launch: one block per token. Each thread first issues the loads of all its
// 8-element units of the token's q and k heads (up to ceil((QH+KH)*HEAD_DIM/8 / 256)
// of them, held in registers), then the block builds the token's cos/sin table in
// shared memory (ROT_DIM/2 entries, one sincos each, inv_freq from a table built
// at compile time), then each thread rotates and stores its units. Why: loading
// after the table's barrier put two memory round trips in a row (position, then
// q) in every block's life, and a double pow per entry sat before every sincos;
// removing both made rope 0-7 % faster at T <= 64 and 7-16 % at T = 4096 (H200
// A/B). It still costs about twice a copy of its bytes at decode sizes.
// Early launch: the models may start this kernel while the one before it runs; it waits
// (griddepcontrol.wait) before its first memory access.
// kiln: block=256 grid=T smem=0
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
#define NH (KILN_QH + KILN_KH)
#define UPH (HD / 8)          // 8-element units per head
#define ROT_U (ROT / 8)       // of which rotary
static_assert(HD % 8 == 0 && ROT % 8 == 0 && OFF % 8 == 0, "rope: HEAD_DIM, ROT_DIM, ROT_OFFSET must be multiples of 8");
static_assert(ROT >= 8 && OFF + ROT <= HD, "rope: the rotary slice must lie inside the head");
static_assert(KILN_QH >= 1 && KILN_KH >= 0, "rope: QH >= 1, KH >= 0");

#define UNITS (NH * UPH)
#define UPT ((UNITS + 255) / 256)  // units per thread (block of 256)
#define NU (sizeof(scalar_t) / 2)  // uint4 words per 8 elements

// 8 elements as raw words: a pass-through unit, an interleaved rotary unit (4
// adjacent pairs), or a rotate-half unit (elements 0-3 from the first half of
// the slice, 4-7 from the second).
struct Unit { uint4 u[NU]; };
// 4 elements: 8 bytes in 16-bit dtypes, 16 in f32.
template <int BYTES> struct QuadOf;
template <> struct QuadOf<2> { typedef uint2 T; };
template <> struct QuadOf<4> { typedef uint4 T; };
typedef QuadOf<(int)sizeof(scalar_t)>::T Quad;

__device__ __forceinline__ void load8(Unit& x, const scalar_t* p) {
#pragma unroll
    for (int i = 0; i < (int)NU; ++i) x.u[i] = __ldg(reinterpret_cast<const uint4*>(p) + i);
}
__device__ __forceinline__ void store8(scalar_t* p, const Unit& x) {
#pragma unroll
    for (int i = 0; i < (int)NU; ++i) reinterpret_cast<uint4*>(p)[i] = x.u[i];
}
__device__ __forceinline__ void load4(Unit& x, int half, const scalar_t* p) {
    reinterpret_cast<Quad*>(x.u)[half] = __ldg(reinterpret_cast<const Quad*>(p));
}
__device__ __forceinline__ void store4(scalar_t* p, const Unit& x, int half) {
    *reinterpret_cast<Quad*>(p) = reinterpret_cast<const Quad*>(x.u)[half];
}
__device__ __forceinline__ float get(const Unit& x, int j) { return to_f(reinterpret_cast<const scalar_t*>(x.u)[j]); }
__device__ __forceinline__ void set(Unit& x, int j, float v) { reinterpret_cast<scalar_t*>(x.u)[j] = from_f<scalar_t>(v); }

// inv_freq depends only on THETA and ROT_DIM, so it is built at compile time:
// HF's f32 steps (exponent 2i/ROT in f32, THETA^exponent rounded to f32, then
// 1/that), with the power taken in double so it rounds to the correct f32 (powf
// may be 1 ulp off, and at long positions 1 ulp of inv_freq moves the angle by
// more than the f32 tolerance). Why: a double pow per table entry at run time
// sat on every block's critical path, before any sincos could start.
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

__device__ __forceinline__ void rotate(float x1, float x2, float c, float s, float& y1, float& y2) {
#if KILN_HF_ROUNDING
    y1 = round_dt(x1 * c) - round_dt(x2 * s);
    y2 = round_dt(x2 * c) + round_dt(x1 * s);
#else
    y1 = x1 * c - x2 * s;
    y2 = x2 * c + x1 * s;
#endif
}

extern "C" __global__ void __launch_bounds__(256) rope(const scalar_t* __restrict__ q,
                                                       const scalar_t* __restrict__ k,
                                                       const int* __restrict__ positions,
                                                       scalar_t* __restrict__ q_out,
                                                       scalar_t* __restrict__ k_out, int T) {
#if __CUDA_ARCH__ >= 900
    // Early launch: wait for the kernel before this one, then let the next one be scheduled.
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    __shared__ float cs[HALF], sn[HALF];
    const long long t = blockIdx.x;
    if (t >= (long long)T) return;  // block-uniform
    const int posi = __ldg(positions + t);
    // Every load of this thread goes out before the table and its barrier.
    Unit x[UPT];
#pragma unroll
    for (int r = 0; r < UPT; ++r) {
        const int u = threadIdx.x + r * 256;
        if (u >= UNITS) break;
        const int h = u / UPH;
        const int c8 = u - h * UPH;
        const scalar_t* src = h < KILN_QH ? q + (t * KILN_QH + h) * HD
                                          : k + (t * KILN_KH + (h - KILN_QH)) * HD;
        if (c8 >= ROT_U) {
            const int cc = c8 - ROT_U;
            load8(x[r], src + (cc * 8 < OFF ? cc * 8 : cc * 8 + ROT));
        } else {
#if KILN_INTERLEAVED
            load8(x[r], src + OFF + c8 * 8);
#else
            load4(x[r], 0, src + OFF + c8 * 4);
            load4(x[r], 1, src + OFF + HALF + c8 * 4);
#endif
        }
    }
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

#pragma unroll
    for (int r = 0; r < UPT; ++r) {
        const int u = threadIdx.x + r * 256;
        if (u >= UNITS) break;
        const int h = u / UPH;
        const int c8 = u - h * UPH;
        scalar_t* dst = h < KILN_QH ? q_out + (t * KILN_QH + h) * HD
                                    : k_out + (t * KILN_KH + (h - KILN_QH)) * HD;
        if (c8 >= ROT_U) {
            const int cc = c8 - ROT_U;
            store8(dst + (cc * 8 < OFF ? cc * 8 : cc * 8 + ROT), x[r]);
            continue;
        }
        Unit y;
#if KILN_INTERLEAVED
#pragma unroll
        for (int m = 0; m < 4; ++m) {
            const int i = c8 * 4 + m;
            float y1, y2;
            rotate(get(x[r], 2 * m), get(x[r], 2 * m + 1), cs[i], sn[i], y1, y2);
            set(y, 2 * m, y1);
            set(y, 2 * m + 1, y2);
        }
        store8(dst + OFF + c8 * 8, y);
#else
#pragma unroll
        for (int m = 0; m < 4; ++m) {
            const int i = c8 * 4 + m;
            float y1, y2;
            rotate(get(x[r], m), get(x[r], 4 + m), cs[i], sn[i], y1, y2);
            set(y, m, y1);
            set(y, 4 + m, y2);
        }
        store4(dst + OFF + c8 * 4, y, 0);
        store4(dst + OFF + HALF + c8 * 4, y, 1);
#endif
    }
}
