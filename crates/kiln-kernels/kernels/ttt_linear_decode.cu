// ttt_linear_decode — one decode step of a TTT-Linear layer, one row per (batch, head).
//
// Per row r (head h = r % H), F = head dim, all state and math in f32:
//   Z      = xk·W + b                                     (xk[1,F] · W[F,F])
//   LN(z)  = ln_w * (z - mean z) / sqrt(var z + LN_EPS) + ln_b      (population variance)
//   target = xv - xk
//   gZ     = d/dZ ½‖LN(Z) - target‖²  (back through the LayerNorm):
//            g = (LN(Z) - target) * ln_w,  x̂ = (Z - mean)/std,
//            gZ = (F*g - Σg - x̂*Σ(g*x̂)) / (F*std)
//   W_grad' = W_grad + lr[r] * xkᵀ·gZ        b_grad' = b_grad + lr[r] * gZ
//   W̄ = W - token_idx[r] * W_grad'            b̄ = b - token_idx[r] * b_grad'
//   out = dtype( xq + LN(xq·W̄ + b̄) )
//   last_in_mb[r] != 0:  W_out = W̄, b_out = b̄, W_grad_out = 0, b_grad_out = 0
//   otherwise:           W_out = W, b_out = b, W_grad_out = W_grad', b_grad_out = b_grad'
// Inputs are never written: the state lives in separate in and out buffers.
// Layout: xq, xk, xv, out [T,F] (dtype); W, W_grad, W_out, W_grad_out [T,F,F] f32 (row k
//   of a row's W multiplies xk[k]); b, b_grad, b_out, b_grad_out [T,F] f32; ln_w, ln_b [H,F]
//   (dtype); lr, token_idx [T] f32; last_in_mb [T] i32. T = batch*heads, head fastest.
// Defines: KILN_DTYPE, KILN_F (multiple of 32, <= 128), KILN_H (heads), KILN_LN_EPS (float literal).
// Launch: one block of 4F threads per row: thread (q, j) owns column j and the k-quarter q
// of W, keeps those F/4 weights in registers between the two products, and the
// reductions go through shared memory.
// Early launch: the models may start this kernel while the one before it runs; it waits
// (griddepcontrol.wait) before its first memory access.
// kiln: block=4*F grid=T smem=0
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

#define F KILN_F
#define KS 4                 // k-split of the F x F products
#define KQ (F / KS)          // rows of W per thread
#define NT (KS * F)          // threads per block
static_assert(F % 32 == 0 && F <= 128, "ttt_linear_decode: F must be a multiple of 32 and <= 128");

// Sum over the block of one value per thread (all NT threads call it).
__device__ __forceinline__ float block_sum(float v, float* red) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    __syncthreads();  // red may still be read by the previous call
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < NT / 32; ++i) s += red[i];
    return s;
}

extern "C" __global__ void __launch_bounds__(NT) ttt_linear_decode(
    const scalar_t* __restrict__ xq, const scalar_t* __restrict__ xk, const scalar_t* __restrict__ xv,
    const float* __restrict__ W, const float* __restrict__ b, const float* __restrict__ W_grad,
    const float* __restrict__ b_grad, const scalar_t* __restrict__ ln_w, const scalar_t* __restrict__ ln_b,
    const float* __restrict__ lr, const float* __restrict__ token_idx, const int* __restrict__ last_in_mb,
    scalar_t* __restrict__ out, float* __restrict__ W_out, float* __restrict__ b_out,
    float* __restrict__ W_grad_out, float* __restrict__ b_grad_out, int T) {
#if __CUDA_ARCH__ >= 900
    // Early launch: wait for the kernel before this one, then let the next one be scheduled.
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    __shared__ float s_xq[F], s_xk[F], s_part[KS][F], s_red[NT / 32];
    const long long r = blockIdx.x;
    if (r >= (long long)T) return;  // block-uniform
    const int tid = threadIdx.x;
    const int j = tid % F;   // column
    const int q = tid / F;   // k-quarter
    const int head = (int)(r % KILN_H);
    if (tid < F) {
        s_xq[tid] = to_f(xq[r * F + tid]);
        s_xk[tid] = to_f(xk[r * F + tid]);
    }
    __syncthreads();

    const float* Wr = W + r * F * F;
    float wreg[KQ];
    float acc = 0.f;
#pragma unroll
    for (int i = 0; i < KQ; ++i) {
        const int kk = q * KQ + i;
        wreg[i] = __ldg(Wr + kk * F + j);
        acc = fmaf(s_xk[kk], wreg[i], acc);
    }
    s_part[q][j] = acc;
    __syncthreads();
    // Every thread rebuilds Z[j] of its column (KS-way redundant, saves a broadcast).
    float z = __ldg(b + r * F + j);
#pragma unroll
    for (int i = 0; i < KS; ++i) z += s_part[i][j];
    const bool lead = q == 0;  // one thread per column feeds the row reductions
    const float lw = to_f(ln_w[head * F + j]), lb = to_f(ln_b[head * F + j]);

    // LayerNorm forward of Z and its backward for the reconstruction loss.
    const float mean = block_sum(lead ? z : 0.f, s_red) / (float)F;
    const float dz = z - mean;
    const float var = block_sum(lead ? dz * dz : 0.f, s_red) / (float)F;
    const float stdv = sqrtf(var + KILN_LN_EPS);
    const float xh = dz / stdv;
    const float target = to_f(xv[r * F + j]) - s_xk[j];
    const float g = (lw * xh + lb - target) * lw;
    const float sg = block_sum(lead ? g : 0.f, s_red);
    const float sgx = block_sum(lead ? g * xh : 0.f, s_red);
    const float gz = ((float)F * g - sg - xh * sgx) / ((float)F * stdv);

    const float lrr = __ldg(lr + r), ti = __ldg(token_idx + r);
    const bool last = __ldg(last_in_mb + r) != 0;
    const float bg_new = __ldg(b_grad + r * F + j) + lrr * gz;
    const float b_bar = __ldg(b + r * F + j) - ti * bg_new;

    const float* Wgr = W_grad + r * F * F;
    float* Wo = W_out + r * F * F;
    float* Wgo = W_grad_out + r * F * F;
    acc = 0.f;
#pragma unroll
    for (int i = 0; i < KQ; ++i) {
        const int kk = q * KQ + i;
        const float wg_new = __ldg(Wgr + kk * F + j) + (lrr * s_xk[kk]) * gz;
        const float w_bar = wreg[i] - ti * wg_new;
        acc = fmaf(s_xq[kk], w_bar, acc);
        Wo[kk * F + j] = last ? w_bar : wreg[i];
        Wgo[kk * F + j] = last ? 0.f : wg_new;
    }
    __syncthreads();  // everyone has read s_part for Z
    s_part[q][j] = acc;
    __syncthreads();
    float zq = b_bar;
#pragma unroll
    for (int i = 0; i < KS; ++i) zq += s_part[i][j];
    const float mq = block_sum(lead ? zq : 0.f, s_red) / (float)F;
    const float dq = zq - mq;
    const float vq = block_sum(lead ? dq * dq : 0.f, s_red) / (float)F;
    const float y = lw * (dq / sqrtf(vq + KILN_LN_EPS)) + lb;
    if (lead) {
        out[r * F + j] = from_f<scalar_t>(s_xq[j] + y);
        b_out[r * F + j] = last ? b_bar : __ldg(b + r * F + j);
        b_grad_out[r * F + j] = last ? 0.f : bg_new;
    }
}
