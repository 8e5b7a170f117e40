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

// Read-only loads that do not allocate in L1 (data touched once).
__device__ __forceinline__ uint4 ld_na(const uint4* p) {
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}
__device__ __forceinline__ uint2 ld_na(const uint2* p) {
    uint2 r;
    asm("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];" : "=r"(r.x), "=r"(r.y) : "l"(p));
    return r;
}
__device__ __forceinline__ unsigned int ld_na(const unsigned int* p) {
    unsigned int r;
    asm("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(r) : "l"(p));
    return r;
}
__device__ __forceinline__ unsigned short ld_na(const unsigned short* p) {
    unsigned short r;
    asm("ld.global.nc.L1::no_allocate.u16 %0, [%1];" : "=h"(r) : "l"(p));
    return r;
}
__device__ __forceinline__ float ld_na(const float* p) {
    return __uint_as_float(ld_na(reinterpret_cast<const unsigned int*>(p)));
}
__device__ __forceinline__ float2 ld_na(const float2* p) {
    const uint2 u = ld_na(reinterpret_cast<const uint2*>(p));
    return make_float2(__uint_as_float(u.x), __uint_as_float(u.y));
}
__device__ __forceinline__ float4 ld_na(const float4* p) {
    const uint4 u = ld_na(reinterpret_cast<const uint4*>(p));
    return make_float4(__uint_as_float(u.x), __uint_as_float(u.y), __uint_as_float(u.z), __uint_as_float(u.w));
}

// Load hint H: 0 plain, 1 __ldg (read-only path), 2 __ldcs (streaming, evict first),
// 3 __ldcg (L2 only), 4 ld.global.nc.L1::no_allocate.
template <int H, typename W> __device__ __forceinline__ W ld_word(const W* p) {
    if constexpr (H == 1) return __ldg(p);
    else if constexpr (H == 2) return __ldcs(p);
    else if constexpr (H == 3) return __ldcg(p);
    else if constexpr (H == 4) return ld_na(p);
    else return *p;
}
// Store hint H: 0 plain, 1 __stcs (streaming: the output is not re-read by this kernel).
template <int H, typename W> __device__ __forceinline__ void st_word(W* p, W v) {
    if constexpr (H == 1) __stcs(p, v);
    else *p = v;
}

// The unsigned word type of B bytes.
template <int B> struct WordOf { typedef unsigned short type; };  // 2 bytes; wider below
template <> struct WordOf<16> { typedef uint4 type; };
template <> struct WordOf<8> { typedef uint2 type; };
template <> struct WordOf<4> { typedef unsigned int type; };
typedef WordOf<(int)sizeof(scalar_t)>::type elem_word_t;

// One element through load hint H (bit pattern moved as an unsigned word).
template <int H> __device__ __forceinline__ float ld_elem(const scalar_t* p) {
    const elem_word_t u = ld_word<H>(reinterpret_cast<const elem_word_t*>(p));
    return to_f(*reinterpret_cast<const scalar_t*>(&u));
}

#ifdef KO_VEC
// KO_VEC consecutive elements moved as 16-byte words (fewer when the pack is smaller).
#define VBYTES (KO_VEC * (int)sizeof(scalar_t))
#define WBYTES (VBYTES >= 16 ? 16 : VBYTES)
#define NWORD (VBYTES / WBYTES)
typedef WordOf<WBYTES>::type word_t;
struct Pack { word_t w[NWORD]; };
template <int H> __device__ __forceinline__ Pack ld_pack(const scalar_t* p) {
    Pack r;
    const word_t* q = reinterpret_cast<const word_t*>(p);
#pragma unroll
    for (int i = 0; i < NWORD; ++i) r.w[i] = ld_word<H>(q + i);
    return r;
}
template <int H> __device__ __forceinline__ void st_pack(scalar_t* p, const Pack& v) {
    word_t* q = reinterpret_cast<word_t*>(p);
#pragma unroll
    for (int i = 0; i < NWORD; ++i) st_word<H>(q + i, v.w[i]);
}
__device__ __forceinline__ float pget(const Pack& c, int j) { return to_f(reinterpret_cast<const scalar_t*>(c.w)[j]); }
__device__ __forceinline__ void pset(Pack& c, int j, float v) { reinterpret_cast<scalar_t*>(c.w)[j] = from_f<scalar_t>(v); }
#endif

#if KO_MINB > 0
#define KO_BOUNDS __launch_bounds__(KO_BLOCK, KO_MINB)
#else
#define KO_BOUNDS __launch_bounds__(KO_BLOCK)
#endif
