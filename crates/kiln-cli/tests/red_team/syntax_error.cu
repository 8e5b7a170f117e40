// expect: compile
// expect-reason: error
// kiln: block=256 grid=T smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;
extern "C" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* out, int T) {
    __shared__ float part[256];
    float r = ;
}
