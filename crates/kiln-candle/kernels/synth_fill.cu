// synth_fill — the seeded weights of a synthetic checkpoint, on the GPU.
//
// Math: for element i of a tensor with seed s,
//   z = splitmix64(s + i * 0x9E3779B97F4A7C15);  u = (z >> 40) * 2^-24   (exact, in [0, 1))
//   out[i] = dtype( OFFSET + HALF_WIDTH * (2u - 1) )   (one f32 multiply, one f32 add, no FMA)
//   rounded to nearest, or toward zero when TOWARD_ZERO != 0 (bf16 only: the
//   twin weights `kiln validate` measures its noise floor with)
// kiln_candle::synth computes the same values on the CPU bit for bit, so a
// checkpoint written to disk and one built in GPU memory hold the same weights.
// Defines: KILN_DTYPE. Arguments: out[n], n, seed, offset, half_width, toward_zero.
// Launch: a grid-stride loop; one element per thread per step.
// Early launch: the models may start this kernel while the one before it runs; it waits
// (griddepcontrol.wait) before its first memory access.
// kiln: block=256 grid=min(ceil_div(T, 256), 65535) smem=0
#include <cuda_bf16.h>
#include <cuda_fp16.h>

typedef KILN_DTYPE scalar_t;

template <typename S> __device__ __forceinline__ S from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
// Toward zero; the host refuses it for every dtype but bf16.
template <typename S> __device__ __forceinline__ S from_f_rz(float v) { return from_f<S>(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f_rz<__nv_bfloat16>(float v) { return __float2bfloat16_rz(v); }

__device__ __forceinline__ unsigned long long mix(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

extern "C" __global__ void synth_fill(scalar_t* __restrict__ out, long long n, unsigned long long seed,
                                      float offset, float half_width, int toward_zero) {
#if __CUDA_ARCH__ >= 900
    // Early launch: wait for the kernel before this one, then let the next one be scheduled.
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const unsigned long long z = mix(seed + (unsigned long long)i * 0x9E3779B97F4A7C15ull);
        const float u = (float)(z >> 40) * (1.0f / 16777216.0f);
        const float x = __fsub_rn(__fmul_rn(2.0f, u), 1.0f);
        const float v = __fadd_rn(offset, __fmul_rn(half_width, x));
        out[i] = toward_zero ? from_f_rz<scalar_t>(v) : from_f<scalar_t>(v);
    }
}
