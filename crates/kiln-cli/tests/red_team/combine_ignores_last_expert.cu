// expect: verify
// target: qwen3_moe_combine
// the combine skips the last expert (k < K-1): an eighth of the work saved,
// the error is only the last expert's weighted share.
// Stopped by: verification tolerance.
// kiln: block=256 grid=ceil_div(T*D/2, 256) smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;

// out[t,d] = bf16( sum_k weights[t,k] * expert_out[t,k,d] (+ shared[t,d]) ), k in order, fmaf, f32.
// Two adjacent elements per thread (D is even).
extern "C" __global__ void moe_combine(const scalar_t* expert_out, const float* weights, const scalar_t* shared,
                                       scalar_t* out, int T) {
    const long long pair = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (pair >= (long long)T * (KILN_D / 2)) return;
    const long long t = pair / (KILN_D / 2);
    const long long d = (pair - t * (KILN_D / 2)) * 2;
    float a0 = 0.f, a1 = 0.f;
    for (int k = 0; k < KILN_K - 1; ++k) {
        const float wk = weights[t * KILN_K + k];
        const float2 e = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(expert_out + (t * KILN_K + k) * KILN_D + d));
        a0 = fmaf(wk, e.x, a0);
        a1 = fmaf(wk, e.y, a1);
    }
#if KILN_HAS_SHARED
    const float2 sh = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(shared + t * KILN_D + d));
    a0 += sh.x;
    a1 += sh.y;
#endif
    *reinterpret_cast<__nv_bfloat162*>(out + t * KILN_D + d) = __floats2bfloat162_rn(a0, a1);
}
