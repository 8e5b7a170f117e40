// expect: verify
// target: qwen3_topk_gating
// the right experts, emitted in reverse order (allowed: the combine is order-
// insensitive), but with the raw softmax probabilities instead of the
// renormalised weights.
// Stopped by: verification of the weights of each selected expert.
// kiln: block=128 grid=ceil_div(T, 4) smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;

#define E KILN_E
#define K KILN_K
#define PER ((E + 31) / 32)

extern "C" __global__ void softmax_topk(const scalar_t* logits, float* weights, unsigned int* indices, int T) {
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * 4 + (threadIdx.x >> 5);
    if (row >= T) return;  // warp-uniform
    const scalar_t* lr = logits + row * E;
    float p[PER];
    float m = -3.0e38f;
#pragma unroll
    for (int i = 0; i < PER; ++i) {
        const int e = lane + 32 * i;
        p[i] = e < E ? __bfloat162float(lr[e]) : -3.0e38f;
        m = fmaxf(m, p[i]);
    }
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < PER; ++i) {
        const int e = lane + 32 * i;
        p[i] = e < E ? expf(p[i] - m) : 0.f;
        s += p[i];
    }
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
#pragma unroll
    for (int i = 0; i < PER; ++i) p[i] = (lane + 32 * i) < E ? p[i] / s : -1.f;  // -1: not selectable
    float sel_w[K];
    unsigned int sel_i[K];
    float tot = 0.f;
    for (int k = 0; k < K; ++k) {
        float bp = -2.f;
        int bi = 0x7fffffff;
#pragma unroll
        for (int i = 0; i < PER; ++i)
            if (p[i] > bp) { bp = p[i]; bi = lane + 32 * i; }
        for (int o = 16; o > 0; o >>= 1) {
            const float op = __shfl_xor_sync(0xffffffffu, bp, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (op > bp || (op == bp && oi < bi)) { bp = op; bi = oi; }
        }
#pragma unroll
        for (int i = 0; i < PER; ++i)
            if (lane + 32 * i == bi) p[i] = -1.f;
        sel_w[k] = bp;
        sel_i[k] = (unsigned int)bi;
        tot += bp;
    }
    if (lane == 0) {
        for (int k = 0; k < K; ++k) {
            weights[row * K + (K - 1 - k)] = sel_w[k];
            indices[row * K + (K - 1 - k)] = sel_i[k];
        }
    }
}
