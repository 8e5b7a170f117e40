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
// Launch: one block per token: its threads first build the token's cos/sin table in
// shared memory (ROT_DIM/2 entries, one sincos each), then stream all heads of q and k
// in 8-element units.
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

// n consecutive elements <-> f32 (n = 4 or 8), with 8/16-byte accesses.
template <int N> __device__ __forceinline__ void load_n(const scalar_t* p, float* v) {
    constexpr int BYTES = N * (int)sizeof(scalar_t);
    if constexpr (BYTES == 8) {
        uint2 u = __ldg(reinterpret_cast<const uint2*>(p));
        const scalar_t* e = reinterpret_cast<const scalar_t*>(&u);
#pragma unroll
        for (int j = 0; j < N; ++j) v[j] = to_f(e[j]);
    } else {
        uint4 u[BYTES / 16];
#pragma unroll
        for (int i = 0; i < BYTES / 16; ++i) u[i] = __ldg(reinterpret_cast<const uint4*>(p) + i);
        const scalar_t* e = reinterpret_cast<const scalar_t*>(u);
#pragma unroll
        for (int j = 0; j < N; ++j) v[j] = to_f(e[j]);
    }
}
template <int N> __device__ __forceinline__ void store_n(scalar_t* p, const float* v) {
    constexpr int BYTES = N * (int)sizeof(scalar_t);
    if constexpr (BYTES == 8) {
        uint2 u;
        scalar_t* e = reinterpret_cast<scalar_t*>(&u);
#pragma unroll
        for (int j = 0; j < N; ++j) e[j] = from_f<scalar_t>(v[j]);
        *reinterpret_cast<uint2*>(p) = u;
    } else {
        uint4 u[BYTES / 16];
        scalar_t* e = reinterpret_cast<scalar_t*>(u);
#pragma unroll
        for (int j = 0; j < N; ++j) e[j] = from_f<scalar_t>(v[j]);
#pragma unroll
        for (int i = 0; i < BYTES / 16; ++i) reinterpret_cast<uint4*>(p)[i] = u[i];
    }
}
// Values stored straight back: no conversion round trip.
__device__ __forceinline__ void copy8(const scalar_t* src, scalar_t* dst) {
#pragma unroll
    for (int i = 0; i < (int)sizeof(scalar_t) / 2; ++i)
        reinterpret_cast<uint4*>(dst)[i] = __ldg(reinterpret_cast<const uint4*>(src) + i);
}

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
    __shared__ float cs[HALF], sn[HALF];
    const long long t = blockIdx.x;
    if (t >= (long long)T) return;  // block-uniform
    const float pos = (float)__ldg(positions + t);
    for (int i = threadIdx.x; i < HALF; i += blockDim.x) {
        // HF builds inv_freq in f32: exponent 2i/ROT in f32, THETA^exponent rounded
        // to f32, then 1/that. The power goes through double so it is the correctly
        // rounded f32 (powf may be 1 ulp off, and at long positions 1 ulp of
        // inv_freq moves the angle by more than the f32 tolerance).
        const float expo = (float)(2 * i) / (float)ROT;
        const float p = (float)pow((double)(KILN_THETA), (double)expo);
        const float inv_freq = 1.0f / p;
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

    for (int u = threadIdx.x; u < NH * UPH; u += blockDim.x) {
        const int h = u / UPH;
        const int c8 = u - h * UPH;
        const scalar_t* src = h < KILN_QH ? q + (t * KILN_QH + h) * HD
                                          : k + (t * KILN_KH + (h - KILN_QH)) * HD;
        scalar_t* dst = h < KILN_QH ? q_out + (t * KILN_QH + h) * HD
                                    : k_out + (t * KILN_KH + (h - KILN_QH)) * HD;
        if (c8 >= ROT_U) {
            const int cc = c8 - ROT_U;
            const int d = cc * 8 < OFF ? cc * 8 : cc * 8 + ROT;
            copy8(src + d, dst + d);
            continue;
        }
#if KILN_INTERLEAVED
        float v[8], y[8];
        load_n<8>(src + OFF + c8 * 8, v);
#pragma unroll
        for (int m = 0; m < 4; ++m) {
            const int i = c8 * 4 + m;
            rotate(v[2 * m], v[2 * m + 1], cs[i], sn[i], y[2 * m], y[2 * m + 1]);
        }
        store_n<8>(dst + OFF + c8 * 8, y);
#else
        float a[4], b[4], ya[4], yb[4];
        load_n<4>(src + OFF + c8 * 4, a);
        load_n<4>(src + OFF + HALF + c8 * 4, b);
#pragma unroll
        for (int m = 0; m < 4; ++m) {
            const int i = c8 * 4 + m;
            rotate(a[m], b[m], cs[i], sn[i], ya[m], yb[m]);
        }
        store_n<4>(dst + OFF + c8 * 4, ya);
        store_n<4>(dst + OFF + HALF + c8 * 4, yb);
#endif
    }
}
