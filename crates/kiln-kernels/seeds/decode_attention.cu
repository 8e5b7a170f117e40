// decode_attention — naive seed: one block per (token, query head), scores in shared memory.
//
// Math (f32 inside, one rounding at the output): query token t sits at position past+t and
// attends to the keys at positions 0..=past+t (at most S_MAX) of its kv head g = j / (QH/KVH):
//   s_p = SCALE * (q[t,j,:] . k_cache[g,p,:])
//   out[t,j,:] = dtype( sum_p softmax(s)_p * v_cache[g,p,:] )
// Layout: q[T,QH,DQK]; k_cache[KVH,S_MAX,DQK], v_cache[KVH,S_MAX,DV] (head-major); out[T,QH,DV].
// Defines: KILN_DTYPE, KILN_QH, KILN_KVH, KILN_DQK, KILN_DV, KILN_S_MAX, KILN_SCALE.
// Launch: block b = t*QH + j; 128 threads; thread i scores keys i, i+128, … (a scalar dot product
// each), the block reduces max and sum, then thread i sums output dims i, i+128, … over the keys.
// kiln: block=128 grid=T*QH smem=S_MAX*4
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

// Block-wide reduction over 128 threads (op 0: max, 1: sum); every thread gets the result.
__device__ float block_reduce(float v, int op, float* red) {
    for (int o = 16; o > 0; o >>= 1) {
        const float u = __shfl_xor_sync(0xffffffffu, v, o);
        v = op == 0 ? fmaxf(v, u) : v + u;
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float r = red[0];
    for (int w = 1; w < 4; ++w) r = op == 0 ? fmaxf(r, red[w]) : r + red[w];
    return r;
}

extern "C" __global__ void decode_attention(const scalar_t* q, const scalar_t* k_cache,
                                            const scalar_t* v_cache, scalar_t* out, int T,
                                            int past) {
    extern __shared__ float scores[];
    __shared__ float red[4];
    const int t = blockIdx.x / KILN_QH, j = blockIdx.x % KILN_QH;
    if (t >= T) return;
    const int g = j / (KILN_QH / KILN_KVH);
    const long long pos = (long long)(past < 0 ? 0 : past) + t + 1;
    const int n = pos < KILN_S_MAX ? (int)pos : KILN_S_MAX;
    const scalar_t* qr = q + ((long long)t * KILN_QH + j) * KILN_DQK;
    float m = __int_as_float(0xff800000);  // -inf
    for (int p = threadIdx.x; p < n; p += blockDim.x) {
        const scalar_t* kr = k_cache + ((long long)g * KILN_S_MAX + p) * KILN_DQK;
        float s = 0.f;
        for (int d = 0; d < KILN_DQK; ++d) s += to_f(qr[d]) * to_f(kr[d]);
        s *= (float)KILN_SCALE;
        scores[p] = s;
        m = fmaxf(m, s);
    }
    m = block_reduce(m, 0, red);
    float l = 0.f;
    for (int p = threadIdx.x; p < n; p += blockDim.x) {
        const float e = expf(scores[p] - m);
        scores[p] = e;
        l += e;
    }
    l = block_reduce(l, 1, red);
    __syncthreads();
    for (int d = threadIdx.x; d < KILN_DV; d += blockDim.x) {
        float acc = 0.f;
        for (int p = 0; p < n; ++p) acc += scores[p] * to_f(v_cache[((long long)g * KILN_S_MAX + p) * KILN_DV + d]);
        out[((long long)t * KILN_QH + j) * KILN_DV + d] = from_f<scalar_t>(acc / l);
    }
}
