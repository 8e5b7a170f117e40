// kiln-cuda probe kernels: what `kiln doctor` and the evaluator measure the
// device with. Not part of the catalog and not searched.
//
// kiln_empty()                      does nothing; its graph-batched launch time
//                                   is the launch floor no kernel can beat.
//   launch: grid=1 block=32
// kiln_stream_read(src, n16, sink)  reads n16 16-byte words once, XOR-folds
//                                   them and writes only if the fold equals a
//                                   value it never takes, so the reads cannot
//                                   be optimised away: bytes read / time is the
//                                   read-streaming bandwidth.
//   launch: grid = 4 * SMS blocks, block = 512, grid-stride loop, 4 loads in flight
// kiln_warm_l2(src, n16, sink)      reads n16 16-byte words once through L2 at normal priority
//                                   (ld.global.cg), folding them as kiln_stream_read does so
//                                   the reads stay. The evaluator runs it over every input of
//                                   a timing graph whose inputs fit in L2 before every
//                                   replay: each replay, the candidate's or the catalog's,
//                                   starts from the L2 the judge set up, not from whatever
//                                   the kernel timed before it left (or evicted) there.
//   launch: grid = min(4 * SMS, ceil_div(n16, 256)) blocks, block = 256, grid-stride loop
// kiln_copy(src, dst, n16)          dst[i] = src[i] for n16 16-byte words: the
//                                   plainest kernel that moves a given number of
//                                   bytes, shaped like kiln's elementwise ops
//                                   (one word per thread, one wave or more).
//                                   Its time at an op's byte count is the
//                                   ceiling that op is measured against.
//   launch: grid = ceil_div(n16, 256), block = 256
// kiln_copy_pdl(src, dst, n16)      the same copy for programmatic dependent
//                                   launch (sm_90+): each block lets the next
//                                   grid launch at once, then waits for the
//                                   previous grid's writes before touching
//                                   memory, as an op reading its predecessor's
//                                   output must. Launched with programmatic
//                                   stream serialization, a chain of these
//                                   overlaps each launch with the previous
//                                   grid's tail; what that saves is what PDL
//                                   would buy kiln's ops.
//   launch: as kiln_copy, plus the launch attribute
// kiln_first_difference(a, b, n, first)
//                                   atomicMin(first, byte offset) of every
//                                   16-byte word (then byte, for the tail) where
//                                   a and b differ, over n bytes; the evaluator
//                                   compares a buffer with its pristine copy on
//                                   the device instead of reading both back.
//   launch: grid = 4 * SMS blocks, block = 256, grid-stride loop; *first = ~0 before
// kiln_digest(a, n, key, digest)   *digest += the sum, wrapping mod 2^64, of
//                                   mix(w ^ mix(i + key)) over the n bytes at a
//                                   read as 8-byte words w at index i (the tail
//                                   bytes as words of their own, indices after
//                                   them), mix a 64-bit finaliser. Equal bytes
//                                   give equal digests; under a secret key,
//                                   different bytes give a different one but
//                                   for a chance of about 2^-64. The evaluator
//                                   keeps a checked replay's digest instead of
//                                   a copy of its outputs, so no device memory
//                                   holds right answers a later launch could
//                                   find and copy.
//   launch: grid = 4 * SMS blocks, block = 256, grid-stride loop; *digest = 0 before
// kiln_clear_shared(words, pattern) writes `pattern` into every one of the
//                                   `words` 32-bit words of its dynamic shared
//                                   memory. Launched with the most dynamic
//                                   shared memory a block may have, so one
//                                   block fills an SM, on twice as many blocks
//                                   as SMs, it overwrites whatever an earlier
//                                   kernel left in any SM's shared memory: the
//                                   evaluator runs it before every replay, so
//                                   no launch finds what a launch of an earlier
//                                   replay (the same inputs) left there.
//   launch: grid = 2 * SMS blocks, block = 1024, smem = the opt-in maximum
// kiln_axpy(x, y, out, a, n)        out[i] = a * x[i] + y[i]; the doctor's
//                                   end-to-end self-check.
//   launch: grid = ceil_div(n, 256), block = 256

extern "C" __global__ void kiln_empty() {}

extern "C" __global__ void kiln_stream_read(const uint4* __restrict__ src,
                                            unsigned long long n16,
                                            unsigned int* __restrict__ sink) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    unsigned int acc = 0;
    for (; i + 3 * stride < n16; i += 4 * stride) {
        uint4 a = __ldcs(src + i);
        uint4 b = __ldcs(src + i + stride);
        uint4 c = __ldcs(src + i + 2 * stride);
        uint4 d = __ldcs(src + i + 3 * stride);
        acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w;
        acc ^= c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
    }
    for (; i < n16; i += stride) {
        uint4 a = __ldcs(src + i);
        acc ^= a.x ^ a.y ^ a.z ^ a.w;
    }
    // The buffer is filled with a byte pattern whose XOR-fold is never this.
    if (acc == 0x9E3779B9u) {
        sink[0] = acc;
    }
}

extern "C" __global__ void kiln_warm_l2(const uint4* __restrict__ src,
                                        unsigned long long n16,
                                        unsigned int* __restrict__ sink) {
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    unsigned int acc = 0;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n16;
         i += stride) {
        const uint4 a = __ldcg(src + i);
        acc ^= a.x ^ a.y ^ a.z ^ a.w;
    }
    // A write that almost never happens keeps the loads; the sink is scratch.
    if (acc == 0x9E3779B9u) {
        sink[0] = acc;
    }
}

extern "C" __global__ void kiln_copy(const uint4* __restrict__ src,
                                     uint4* __restrict__ dst,
                                     unsigned long long n16) {
    const unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i < n16) {
        dst[i] = __ldg(src + i);
    }
}

extern "C" __global__ void kiln_copy_pdl(const uint4* __restrict__ src,
                                         uint4* __restrict__ dst,
                                         unsigned long long n16) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
    const unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i < n16) {
        dst[i] = __ldg(src + i);
    }
}

extern "C" __global__ void kiln_axpy(const float* __restrict__ x,
                                     const float* __restrict__ y,
                                     float* __restrict__ out, float a, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        out[i] = a * x[i] + y[i];
    }
}

extern "C" __global__ void kiln_clear_shared(unsigned int words, unsigned int pattern) {
    extern __shared__ unsigned int cleared[];
    // volatile: the stores have no reader, and must still happen.
    volatile unsigned int* s = cleared;
    for (unsigned int i = threadIdx.x; i < words; i += blockDim.x) {
        s[i] = pattern;
    }
}

extern "C" __global__ void kiln_first_difference(const unsigned char* __restrict__ a,
                                                 const unsigned char* __restrict__ b,
                                                 unsigned long long n,
                                                 unsigned long long* __restrict__ first) {
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    const unsigned long long i0 = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned long long n16 = n / 16;
    const uint4* a16 = reinterpret_cast<const uint4*>(a);
    const uint4* b16 = reinterpret_cast<const uint4*>(b);
    for (unsigned long long k = i0; k < n16; k += stride) {
        const uint4 x = a16[k];
        const uint4 y = b16[k];
        if (x.x != y.x || x.y != y.y || x.z != y.z || x.w != y.w) {
            atomicMin(first, k * 16);
        }
    }
    for (unsigned long long k = n16 * 16 + i0; k < n; k += stride) {
        if (a[k] != b[k]) {
            atomicMin(first, k);
        }
    }
}

// A 64-bit finaliser: every input bit flips about half of the output bits.
__device__ __forceinline__ unsigned long long kiln_mix(unsigned long long x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

extern "C" __global__ void kiln_digest(const unsigned char* __restrict__ a,
                                       unsigned long long n,
                                       unsigned long long key,
                                       unsigned long long* __restrict__ digest) {
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    const unsigned long long i0 = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned long long n8 = n / 8;
    const unsigned long long* a8 = reinterpret_cast<const unsigned long long*>(a);
    unsigned long long sum = 0;
    for (unsigned long long k = i0; k < n8; k += stride) {
        sum += kiln_mix(a8[k] ^ kiln_mix(k + key));
    }
    for (unsigned long long k = n8 * 8 + i0; k < n; k += stride) {
        sum += kiln_mix((unsigned long long)a[k] ^ kiln_mix(k + key));
    }
    // Addition commutes, so the order the warps' atomics land in is moot.
    for (int off = 16; off > 0; off /= 2) {
        sum += __shfl_down_sync(0xffffffffu, sum, off);
    }
    if ((threadIdx.x & 31) == 0) {
        atomicAdd(digest, sum);
    }
}
