// short_conv — naive seed: one thread per channel, walking the rows in order.
//
// Math, per channel d, for the T rows t of bcx (B | C | x per row):
//   bx[t,d]   = dtype( B[t,d] * x[t,d] )
//   seq       = [state[0,d] .. state[L-2,d], bx[0,d] .. bx[T-1,d]]   (oldest first)
//   conv[t,d] = dtype( sum_{j<L} w[d,j] * seq[t+j] )                 (f32 sum)
//   out[t,d]  = dtype( C[t,d] * conv[t,d] )
// then state[i,d] = seq[T+i]: the state is read and updated in place.
// Layout: bcx[T,3D], w[D,L], state[L-1,D], out[T,D]; row-major, contiguous.
// Defines: KILN_DTYPE, KILN_D, KILN_L.
// Launch: thread d owns channel d (its state is touched by that thread alone).
// kiln: block=128 grid=ceil_div(D, 128) smem=0
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

extern "C" __global__ void short_conv(const scalar_t* bcx, const scalar_t* w, scalar_t* state,
                                      scalar_t* out, int T) {
    const int d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= KILN_D) return;
    for (int t = 0; t < T; ++t) {
        const scalar_t* row = bcx + (long long)t * 3 * KILN_D;
        const scalar_t bx = from_f<scalar_t>(to_f(row[d]) * to_f(row[2 * KILN_D + d]));
        // The L-1 older values are the state rows; the newest is this row's bx.
        float acc = 0.f;
        for (int j = 0; j < KILN_L - 1; ++j)
            acc += to_f(w[(long long)d * KILN_L + j]) * to_f(state[(long long)j * KILN_D + d]);
        acc += to_f(w[(long long)d * KILN_L + KILN_L - 1]) * to_f(bx);
        const float conv = to_f(from_f<scalar_t>(acc));
        out[(long long)t * KILN_D + d] = from_f<scalar_t>(to_f(row[KILN_D + d]) * conv);
        // Shift the state by one row.
        for (int j = 0; j < KILN_L - 2; ++j)
            state[(long long)j * KILN_D + d] = state[(long long)(j + 1) * KILN_D + d];
        state[(long long)(KILN_L - 2) * KILN_D + d] = bx;
    }
}
