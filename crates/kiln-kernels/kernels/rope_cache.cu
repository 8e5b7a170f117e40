// rope_cache — attention inputs of a model without qk-norm (GLM-4-9B) in one launch: rope on
// the q and k heads of the fused qkv projection, q written out, rotated k and raw v written
// into the KV cache at each token's position.
//
// Math, for token t at position p = positions[t]: exactly rope.cu's (same inv_freq table built
// at compile time, same sincosf of f32(p) * inv_freq_i, same rounding), pair i < ROT_DIM/2:
//   inv_freq_i = f32(1 / f32(THETA^f32(2i/ROT_DIM))),  c = cos(f32(p) * inv_freq_i),  s = sin(...)
//   pair (x1, x2) inside the rotary slice [ROT_OFFSET, ROT_OFFSET+ROT_DIM) of a q or k head:
//     KILN_INTERLEAVED=0 (NeoX rotate-half): x1 = x[OFF+i], x2 = x[OFF+ROT_DIM/2+i]
//     KILN_INTERLEAVED=1 (adjacent pairs; GLM): x1 = x[OFF+2i], x2 = x[OFF+2i+1]
//   y1 = x1*c - x2*s,  y2 = x2*c + x1*s, written back to the same two positions;
//   KILN_HF_ROUNDING=1: c, s, each product and the sum rounded to the dtype (HF eager);
//   KILN_HF_ROUNDING=0: f32 math, one rounding. Dims outside the rotary slice are copied.
//   q heads -> q_out[t, h, :] (at every p, as rope rotates them);  k heads -> k_cache[h, p, :];
//   v heads (no rope) -> v_cache[h, p, :]. A position outside 0..S_MAX writes no cache row.
//   So q_out, k_cache and v_cache are bit for bit what rope followed by the cache write leave.
// Layout: qkv[T, (QH + 2 KVH) * HEAD_DIM] (q heads, then k heads, then v heads: the fused
// projection's output); positions i32[T]; q_out[T, QH, HEAD_DIM];
// k_cache, v_cache [KVH, S_MAX, HEAD_DIM]; 16-byte aligned.
// Defines: KILN_DTYPE, KILN_QH (>=1), KILN_KVH (>=1), KILN_HEAD_DIM, KILN_ROT_DIM,
// KILN_ROT_OFFSET (all three multiples of 8, OFFSET+ROT_DIM <= HEAD_DIM), KILN_INTERLEAVED (0/1),
// KILN_THETA (float literal), KILN_HF_ROUNDING (0/1). Both layouts are supported.
// Arguments: qkv, positions, q_out, k_cache, v_cache, T, S_MAX.
// Why: at decode rope and the cache write were two launches of about 3 µs each per layer
// (H100), for a few KB of data.
// Launch: one block per token, one thread per 8-element unit of the token's q, k and v heads
// (rope.cu's units: a pass-through or v unit is 8 consecutive values, an interleaved rotary unit
// 4 adjacent pairs, a rotate-half unit values 0-3 of the slice's first half and the 4 partners
// of its second half, so no thread needs another's values): block = (QH + 2 KVH) * HEAD_DIM / 8
// threads rounded up to a warp (<= 1024), grid = T. Each thread issues its loads, then the block
// builds the token's cos/sin table in shared memory (ROT_DIM/2 sincos, as rope.cu), then each
// thread rotates and stores its unit.
// Early launch: the models may start this kernel while the one before it runs; it waits
// (griddepcontrol.wait) before its first memory access.
// kiln: block=ceil_div((QH+2*KVH)*HEAD_DIM/8,32)*32 grid=T smem=0
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
#define NR (KILN_QH + KILN_KVH)       // rotated heads (q, then k)
#define NALL (KILN_QH + 2 * KILN_KVH) // every head of a qkv row
#define UPH (HD / 8)                  // 8-element units per head
#define ROT_U (ROT / 8)               // of which rotary
#define UNITS (NALL * UPH)
static_assert(HD % 8 == 0 && ROT % 8 == 0 && OFF % 8 == 0, "rope_cache: HEAD_DIM, ROT_DIM, ROT_OFFSET must be multiples of 8");
static_assert(ROT >= 8 && OFF + ROT <= HD, "rope_cache: the rotary slice must lie inside the head");
static_assert(KILN_QH >= 1 && KILN_KVH >= 1, "rope_cache: QH >= 1, KVH >= 1");
static_assert(UNITS <= 1024, "rope_cache: (QH + 2 KVH) * HEAD_DIM / 8 must be <= 1024");

#define NU (sizeof(scalar_t) / 2)  // uint4 words per 8 elements

// The unit and load/store helpers are rope.cu's.
struct Unit { uint4 u[NU]; };
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

extern "C" __global__ void __launch_bounds__(1024) rope_cache(const scalar_t* __restrict__ qkv,
                                                              const int* __restrict__ positions,
                                                              scalar_t* __restrict__ q_out,
                                                              scalar_t* __restrict__ k_cache,
                                                              scalar_t* __restrict__ v_cache,
                                                              int T, int s_max) {
#if __CUDA_ARCH__ >= 900
    // Early launch: wait for the kernel before this one, then let the next one be scheduled.
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    __shared__ float cs[HALF], sn[HALF];
    const long long t = blockIdx.x;
    if (t >= (long long)T) return;  // block-uniform
    const int posi = __ldg(positions + t);
    const int u = threadIdx.x;
    // Padding threads (past the last unit) only help build the table.
    const bool valid = u < UNITS;
    const int h = valid ? u / UPH : 0;
    const int c8 = u - h * UPH;
    const bool rotary = h < NR && c8 < ROT_U;
    // The load goes out before the table and its barrier.
    Unit x;
    if (valid) {
        const scalar_t* src = qkv + (t * NALL + h) * HD;
        if (h >= NR) {
            load8(x, src + c8 * 8);
        } else if (!rotary) {
            const int cc = c8 - ROT_U;
            load8(x, src + (cc * 8 < OFF ? cc * 8 : cc * 8 + ROT));
        } else {
#if KILN_INTERLEAVED
            load8(x, src + OFF + c8 * 8);
#else
            load4(x, 0, src + OFF + c8 * 4);
            load4(x, 1, src + OFF + HALF + c8 * 4);
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
    if (!valid) return;

    const bool in_cache = posi >= 0 && posi < s_max;
    scalar_t* dst;
    if (h < KILN_QH) {
        dst = q_out + (t * KILN_QH + h) * HD;
    } else if (!in_cache) {
        return;
    } else if (h < NR) {
        dst = k_cache + ((long long)(h - KILN_QH) * s_max + posi) * HD;
    } else {
        // v: copied unchanged.
        store8(v_cache + ((long long)(h - NR) * s_max + posi) * HD + c8 * 8, x);
        return;
    }
    if (!rotary) {
        const int cc = c8 - ROT_U;
        store8(dst + (cc * 8 < OFF ? cc * 8 : cc * 8 + ROT), x);
        return;
    }
    Unit y;
#if KILN_INTERLEAVED
#pragma unroll
    for (int m = 0; m < 4; ++m) {
        const int i = c8 * 4 + m;
        float y1, y2;
        rotate(get(x, 2 * m), get(x, 2 * m + 1), cs[i], sn[i], y1, y2);
        set(y, 2 * m, y1);
        set(y, 2 * m + 1, y2);
    }
    store8(dst + OFF + c8 * 8, y);
#else
#pragma unroll
    for (int m = 0; m < 4; ++m) {
        const int i = c8 * 4 + m;
        float y1, y2;
        rotate(get(x, m), get(x, 4 + m), cs[i], sn[i], y1, y2);
        set(y, m, y1);
        set(y, 4 + m, y2);
    }
    store4(dst + OFF + c8 * 4, y, 0);
    store4(dst + OFF + HALF + c8 * 4, y, 1);
#endif
}
