// ttt_linear_decode — naive seed: one block of F threads per row, thread j owns column j.
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
// Layout: xq, xk, xv, out [T,F] (dtype); W, W_grad, W_out, W_grad_out [T,F,F] f32 (row k
//   of a row's W multiplies xk[k]); b, b_grad, b_out, b_grad_out [T,F] f32; ln_w, ln_b [H,F]
//   (dtype); lr, token_idx [T] f32; last_in_mb [T] i32. T = batch*heads, head fastest.
// Defines: KILN_DTYPE, KILN_F (<= 1024), KILN_H (heads), KILN_LN_EPS (float literal).
// Launch: block r handles row r; row sums are computed by every thread from shared memory.
// kiln: block=F grid=T smem=0
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

// Sum of v[0..F) (every thread reads the same shared array).
__device__ __forceinline__ float row_sum(const float* v) {
    float s = 0.f;
    for (int i = 0; i < F; ++i) s += v[i];
    return s;
}

extern "C" __global__ void ttt_linear_decode(
    const scalar_t* xq, const scalar_t* xk, const scalar_t* xv, const float* W, const float* b,
    const float* W_grad, const float* b_grad, const scalar_t* ln_w, const scalar_t* ln_b, const float* lr,
    const float* token_idx, const int* last_in_mb, scalar_t* out, float* W_out, float* b_out,
    float* W_grad_out, float* b_grad_out, int T) {
    __shared__ float s_xq[F], s_xk[F], s_a[F], s_b[F];
    const long long r = blockIdx.x;
    if (r >= (long long)T) return;  // block-uniform
    const int j = threadIdx.x;
    const int head = (int)(r % KILN_H);
    const float* Wr = W + r * F * F;
    const float* Wgr = W_grad + r * F * F;
    s_xq[j] = to_f(xq[r * F + j]);
    s_xk[j] = to_f(xk[r * F + j]);
    __syncthreads();

    float z = b[r * F + j];
    for (int k = 0; k < F; ++k) z = fmaf(s_xk[k], Wr[k * F + j], z);
    const float lw = to_f(ln_w[head * F + j]), lb = to_f(ln_b[head * F + j]);

    s_a[j] = z;
    __syncthreads();
    const float mean = row_sum(s_a) / (float)F;
    const float dz = z - mean;
    s_b[j] = dz * dz;
    __syncthreads();
    const float var = row_sum(s_b) / (float)F;
    const float stdv = sqrtf(var + KILN_LN_EPS);
    const float xh = dz / stdv;
    const float target = to_f(xv[r * F + j]) - s_xk[j];
    const float g = (lw * xh + lb - target) * lw;
    __syncthreads();  // s_a and s_b are read above; reuse them
    s_a[j] = g;
    s_b[j] = g * xh;
    __syncthreads();
    const float sg = row_sum(s_a);
    const float sgx = row_sum(s_b);
    const float gz = ((float)F * g - sg - xh * sgx) / ((float)F * stdv);

    const float lrr = lr[r], ti = token_idx[r];
    const bool last = last_in_mb[r] != 0;
    const float bg_new = b_grad[r * F + j] + lrr * gz;
    const float b_bar = b[r * F + j] - ti * bg_new;
    float zq = b_bar;
    for (int k = 0; k < F; ++k) {
        const float w = Wr[k * F + j];
        const float wg_new = Wgr[k * F + j] + (lrr * s_xk[k]) * gz;
        const float w_bar = w - ti * wg_new;
        zq = fmaf(s_xq[k], w_bar, zq);
        W_out[r * F * F + k * F + j] = last ? w_bar : w;
        W_grad_out[r * F * F + k * F + j] = last ? 0.f : wg_new;
    }
    __syncthreads();
    s_a[j] = zq;
    __syncthreads();
    const float mq = row_sum(s_a) / (float)F;
    const float dq = zq - mq;
    s_b[j] = dq * dq;
    __syncthreads();
    const float vq = row_sum(s_b) / (float)F;
    const float y = lw * (dq / sqrtf(vq + KILN_LN_EPS)) + lb;
    out[r * F + j] = from_f<scalar_t>(s_xq[j] + y);
    b_out[r * F + j] = last ? b_bar : b[r * F + j];
    b_grad_out[r * F + j] = last ? 0.f : bg_new;
}
