// expect: pass
// Honest control: inline PTX vector loads and stores (ld.global.nc.v4.u32,
// st.global.v4.u32 through asm volatile): 8 bf16 per access. Inline asm as
// such is allowed; only timer and counter registers are not.
// kiln: block=256 grid=T smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;

__device__ __forceinline__ uint4 ld_nc_v4(const void* p) {
    uint4 v;
    asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}
__device__ __forceinline__ void st_v4(void* p, const uint4& v) {
    asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
                 : "memory");
}
__device__ __forceinline__ float lo(unsigned int u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float hi(unsigned int u) { return __uint_as_float(u & 0xffff0000u); }

extern "C" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* out, int T) {
    __shared__ float part[8];
    const int row = blockIdx.x;
    if (row >= T) return;
    const scalar_t* xr = x + (long long)row * KILN_D;
    scalar_t* orow = out + (long long)row * KILN_D;
    float ss = 0.f;
    for (int c = threadIdx.x; c < KILN_D / 8; c += blockDim.x) {
        const uint4 v = ld_nc_v4(xr + c * 8);
        const unsigned int u[4] = {v.x, v.y, v.z, v.w};
        for (int k = 0; k < 4; ++k) {
            ss = fmaf(lo(u[k]), lo(u[k]), ss);
            ss = fmaf(hi(u[k]), hi(u[k]), ss);
        }
    }
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
    __syncthreads();
    float total = 0.f;
    for (int i = 0; i < (int)(blockDim.x / 32); ++i) total += part[i];
    const float r = rsqrtf(total / (float)KILN_D + KILN_EPS);
    for (int c = threadIdx.x; c < KILN_D / 8; c += blockDim.x) {
        const uint4 v = ld_nc_v4(xr + c * 8);
        const uint4 g = ld_nc_v4(w + c * 8);
        const unsigned int u[4] = {v.x, v.y, v.z, v.w};
        const unsigned int q[4] = {g.x, g.y, g.z, g.w};
        unsigned int o[4];
        for (int k = 0; k < 4; ++k) {
            const float n0 = __bfloat162float(__float2bfloat16_rn(lo(u[k]) * r));
            const float n1 = __bfloat162float(__float2bfloat16_rn(hi(u[k]) * r));
            const __nv_bfloat162 h = __floats2bfloat162_rn(n0 * lo(q[k]), n1 * hi(q[k]));
            o[k] = *reinterpret_cast<const unsigned int*>(&h);
        }
        st_v4(orow + c * 8, make_uint4(o[0], o[1], o[2], o[3]));
    }
}
