// decode_attention — causal GQA attention of the new query tokens over a KV cache (decode and
// short prefill chunks appended to a cache).
//
// Math (f32 inside, one rounding at the output): query token t sits at position past+t and attends
// to the keys at positions 0..=past+t of its kv head g = j / (QH/KVH) (query head j):
//   s_p = SCALE * (q[t,j,:] . k_cache[g,p,:])              p = 0..past+t
//   w_p = softmax(s)_p = exp(s_p - max s) / sum_p' exp(s_p' - max s)
//   out[t,j,:] = dtype( sum_p w_p * v_cache[g,p,:] )
// (HF eager attention rounds the scores and probabilities to the model dtype before the PV product,
// so it can differ from this by a few dtype ulps.) `past` is clamped to >= 0 and the number of keys
// to S_MAX: a token beyond the cache attends to all S_MAX cached keys, nothing past S_MAX is read.
// Layout: q[T,QH,DQK]; k_cache[KVH,S_MAX,DQK] and v_cache[KVH,S_MAX,DV] (head-major; positions
// 0..past+T-1 already written, including the new tokens'); out[T,QH,DV]; pointers 16-byte aligned.
// Defines: KILN_DTYPE, KILN_QH, KILN_KVH (QH % KVH == 0), KILN_DQK (% 8 == 0, <= 1024),
// KILN_DV (% 8 == 0, <= 2048), KILN_S_MAX (>= 1), KILN_SCALE (float literal).
// Launch: each (token, query head) is split over S blocks, S = the largest of 8, 4, 2, 1 that is
// at most 512 / (T*QH) (or 1): about 512 blocks when there are few tokens (the H100/H200 keep
// 4 such blocks on each of 132 SMs), one block per (token, head) from 512 of them on. Block r
// of a group takes the r-th of S contiguous slices of the keys and computes its slice's max
// score m_r, sum l_r = sum exp(s - m_r) and unnormalised V sum acc_r. The blocks run in
// clusters of 8 (sm_90 thread-block clusters; 8/S groups per cluster, the grid padded to a
// multiple of 8 with idle blocks); after a cluster barrier block 0 of each group reads the
// others' (m_r, l_r, acc_r) from their shared memory and writes
//   out = dtype( sum_r exp(m_r - M) acc_r / sum_r exp(m_r - M) l_r ),  M = max_r m_r.
// Why: one block per (token, head) gave a decode step 32 blocks (Qwen3) that each streamed
// the whole cache: 3 % of the DRAM peak at 4K positions (H200); splitting more than needed to
// fill the GPU made T >= 16 slower. (At T >= 16, S = 1, this kernel is still 8-25 % slower than
// the single-block kernel it replaced, without the cluster attribute too: docs/BENCHMARKS.md.)
// The heads of one kv group are adjacent, so they share the
// group's K/V rows in L2. Inside a block: scores of the slice in dynamic shared memory
// (ceil(S_MAX/S) floats). Pass 1: lane groups of min(32, DQK/8) lanes take one key each, about
// 4 loads per lane in flight, q in registers, shuffles within the group. Block max and sum
// reductions, then the probabilities overwrite the scores. Pass 2: groups of DV/8 threads sweep
// the slice for the weighted V sum (4 rows in flight per thread); the groups' partial sums
// meet in shared memory. Before sm_90 (no clusters) block 0 of each group takes the slices in
// turn and merges as it goes; the other blocks leave at once.
// Early launch: the models may start this kernel while the one before it runs; it waits
// (griddepcontrol.wait) before its first memory access.
// kiln: block=256 grid=ceil_div(T*QH*(1+min(512/(T*QH)/2,1)+2*min(512/(T*QH)/4,1)+4*min(512/(T*QH)/8,1)), 8)*8 smem=ceil_div(S_MAX, (1+min(512/(T*QH)/2,1)+2*min(512/(T*QH)/4,1)+4*min(512/(T*QH)/8,1)))*4
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

// 8 consecutive elements: one uint4 for 16-bit types, two for f32.
#define NU (sizeof(scalar_t) / 2)
struct Chunk { uint4 u[NU]; };
__device__ __forceinline__ Chunk load_chunk(const scalar_t* p) {
    Chunk c;
    const uint4* q = reinterpret_cast<const uint4*>(p);
#pragma unroll
    for (int i = 0; i < (int)NU; ++i) c.u[i] = __ldg(q + i);
    return c;
}
__device__ __forceinline__ float chunk_get(const Chunk& c, int j) {
    return to_f(reinterpret_cast<const scalar_t*>(c.u)[j]);
}

static_assert(KILN_QH >= 1 && KILN_KVH >= 1 && KILN_QH % KILN_KVH == 0, "decode_attention: QH must be a multiple of KVH");
static_assert(KILN_DQK % 8 == 0 && KILN_DQK >= 8 && KILN_DQK <= 1024, "decode_attention: DQK must be a multiple of 8 in 8..=1024");
static_assert(KILN_DV % 8 == 0 && KILN_DV >= 8 && KILN_DV <= 2048, "decode_attention: DV must be a multiple of 8 in 8..=2048");
static_assert(KILN_S_MAX >= 1, "decode_attention: S_MAX must be >= 1");
#define BLOCK 256
#define WARPS (BLOCK / 32)
#define CLUSTER 8  // blocks per cluster (the portable maximum)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define KILN_CLUSTERS 1
#define CLUSTER_ATTR __cluster_dims__(CLUSTER, 1, 1)
#else
#define KILN_CLUSTERS 0
#define CLUSTER_ATTR
#endif
#define GQA (KILN_QH / KILN_KVH)
// Pass 1: lanes per key (a power of two), chunks of q per lane, key groups in the block.
#define CPK (KILN_DQK / 8)
#define LPK (CPK >= 32 ? 32 : CPK >= 16 ? 16 : CPK >= 8 ? 8 : CPK >= 4 ? 4 : CPK >= 2 ? 2 : 1)
#define QPL ((CPK + LPK - 1) / LPK)
#define KGROUPS (BLOCK / LPK)
#define KU (QPL >= 3 ? 1 : QPL == 2 ? 2 : 4)  // keys per group in flight: 3-4 chunks per lane
// Pass 2: threads per V row (one 8-element chunk each), V groups in the block.
#define CPV (KILN_DV / 8)
#define VGROUPS (BLOCK / CPV)
#define VU 4

__device__ __forceinline__ float block_max(float v, float* red) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    v = red[0];
#pragma unroll
    for (int w = 1; w < WARPS; ++w) v = fmaxf(v, red[w]);
    return v;
}
__device__ __forceinline__ float block_sum(float v, float* red) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    v = 0.f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) v += red[w];  // same order in every thread
    return v;
}

#if KILN_CLUSTERS
// Every thread of every block of the cluster arrives, then waits: shared-memory writes before
// it are visible to the whole cluster after it.
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
// Reads the float at `p` (this block's shared memory) in the shared memory of cluster block `rank`.
__device__ __forceinline__ float cluster_load(const float* p, unsigned rank) {
    const unsigned local = (unsigned)__cvta_generic_to_shared(p);
    unsigned remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
    float v;
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(remote) : "memory");
    return v;
}
#endif

// Attends query (t, head j of kv group g) to the keys [lo, lo + n) (n may be 0): returns the
// slice's max score m and l = sum exp(s - m) in every thread, and leaves the unnormalised V sum
// sum exp(s - m) v in part[0..DV) (m = -inf, l = 0 and a zero sum for an empty slice).
__device__ __forceinline__ float2 attend_slice(const scalar_t* __restrict__ q,
                                               const scalar_t* __restrict__ k_cache,
                                               const scalar_t* __restrict__ v_cache, int t, int j, int g,
                                               int lo, int n, float* sc, float* red_max, float* red_sum,
                                               float* part) {
    const int tid = threadIdx.x, lane = tid & 31;
    // Pass 1: scores.
    {
        const int lig = lane & (LPK - 1);        // lane in its key group
        const int grp = tid / LPK;               // key group
        const scalar_t* qr = q + ((long long)t * KILN_QH + j) * KILN_DQK;
        // q stays packed (converted per use): fewer registers for 16-bit types.
        Chunk qc[QPL];
#pragma unroll
        for (int r = 0; r < QPL; ++r) {
            const int c = r * LPK + lig;
            if (c < CPK) qc[r] = load_chunk(qr + c * 8);
        }
        const scalar_t* kb = k_cache + ((long long)g * KILN_S_MAX + lo) * KILN_DQK;
        for (int base = 0; base < n; base += KGROUPS * KU) {
            Chunk kc[KU][QPL];
#pragma unroll
            for (int u = 0; u < KU; ++u) {
                const int p = base + u * KGROUPS + grp;
#pragma unroll
                for (int r = 0; r < QPL; ++r) {
                    const int c = r * LPK + lig;
                    if (p < n && c < CPK) kc[u][r] = load_chunk(kb + (long long)p * KILN_DQK + c * 8);
                }
            }
            float d[KU];
#pragma unroll
            for (int u = 0; u < KU; ++u) {
                const int p = base + u * KGROUPS + grp;
                d[u] = 0.f;
#pragma unroll
                for (int r = 0; r < QPL; ++r) {
                    const int c = r * LPK + lig;
                    if (p < n && c < CPK) {
#pragma unroll
                        for (int i = 0; i < 8; ++i) d[u] = fmaf(chunk_get(qc[r], i), chunk_get(kc[u][r], i), d[u]);
                    }
                }
            }
#pragma unroll
            for (int u = 0; u < KU; ++u) {
#pragma unroll
                for (int o = LPK / 2; o > 0; o >>= 1) d[u] += __shfl_xor_sync(0xffffffffu, d[u], o);
                const int p = base + u * KGROUPS + grp;
                if (lig == 0 && p < n) sc[p] = d[u] * KILN_SCALE;
            }
        }
    }
    __syncthreads();

    // Softmax statistics; the unnormalised probabilities overwrite the scores.
    float m = -__int_as_float(0x7f800000);  // -inf (no <math.h> under NVRTC)
    for (int p = tid; p < n; p += BLOCK) m = fmaxf(m, sc[p]);
    m = block_max(m, red_max);
    float l = 0.f;
    for (int p = tid; p < n; p += BLOCK) {
        const float e = expf(sc[p] - m);
        sc[p] = e;
        l += e;
    }
    l = block_sum(l, red_sum);  // its __syncthreads also publishes the probabilities

    // Pass 2: the weighted V sum.
    const int vg = tid / CPV, vc = tid - vg * CPV;
    if (vg < VGROUPS) {
        float acc[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[i] = 0.f;
        const scalar_t* vb = v_cache + ((long long)g * KILN_S_MAX + lo) * KILN_DV + vc * 8;
        for (int base = 0; base < n; base += VGROUPS * VU) {
            Chunk vv[VU];
#pragma unroll
            for (int u = 0; u < VU; ++u) {
                const int p = base + u * VGROUPS + vg;
                if (p < n) vv[u] = load_chunk(vb + (long long)p * KILN_DV);
            }
#pragma unroll
            for (int u = 0; u < VU; ++u) {
                const int p = base + u * VGROUPS + vg;
                if (p < n) {
                    const float w = sc[p];
#pragma unroll
                    for (int i = 0; i < 8; ++i) acc[i] = fmaf(w, chunk_get(vv[u], i), acc[i]);
                }
            }
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) part[vg * KILN_DV + vc * 8 + i] = acc[i];
    }
    __syncthreads();
    // The block's unnormalised V sum into row 0 of `part` (thread d owns column d).
    for (int d = tid; d < KILN_DV; d += BLOCK) {
        float s = 0.f;
        for (int gq = 0; gq < VGROUPS; ++gq) s += part[gq * KILN_DV + d];
        part[d] = s;
    }
    return make_float2(m, l);
}

// S of the launch line: blocks per (token, head).
__device__ __forceinline__ int splits_for(int T) {
    const int x = 512 / (T * KILN_QH);
    return 1 + min(x / 2, 1) + 2 * min(x / 4, 1) + 4 * min(x / 8, 1);
}

extern "C" __global__ void CLUSTER_ATTR __launch_bounds__(BLOCK) decode_attention(const scalar_t* __restrict__ q,
                                                                     const scalar_t* __restrict__ k_cache,
                                                                     const scalar_t* __restrict__ v_cache,
                                                                     scalar_t* __restrict__ out, int T, int past) {
#if __CUDA_ARCH__ >= 900
    // Early launch: wait for the kernel before this one, then let the next one be scheduled.
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    extern __shared__ float sc[];             // [ceil(S_MAX/S)] scores, then unnormalised probabilities
    __shared__ float red_max[WARPS], red_sum[WARPS];
    __shared__ __align__(16) float part[VGROUPS * KILN_DV];  // pass-2 partial sums (<= BLOCK*8 floats)
    const int ns = splits_for(T);
    const int pair = blockIdx.x / ns;          // (token, head) = (pair / QH, pair % QH)
    const int split = blockIdx.x - pair * ns;  // the block's slice
    const bool live = pair < T * KILN_QH;      // padding blocks after the last pair are idle
    const int t = pair / KILN_QH;
    const int j = pair - t * KILN_QH;
    const int g = j / GQA;
    const long long n_keys = (long long)(past > 0 ? past : 0) + t + 1;
    const int n_all = (int)(n_keys < KILN_S_MAX ? n_keys : KILN_S_MAX);
    // Slice r is [r*per, (r+1)*per) clipped to the keys; slice 0 is never empty (n_all >= 1).
    const int per = (n_all + ns - 1) / ns;
    const int tid = threadIdx.x;
    scalar_t* o = out + ((long long)t * KILN_QH + j) * KILN_DV;
#if KILN_CLUSTERS
    if (ns == 1) {  // the same for the whole grid: no merging, no cluster barriers
        if (!live) return;
        const float2 ml = attend_slice(q, k_cache, v_cache, t, j, g, 0, n_all, sc, red_max, red_sum, part);
        const float inv = __frcp_rn(ml.y);  // l >= 1: the max key contributes exp(0)
        for (int d = tid; d < KILN_DV; d += BLOCK) o[d] = from_f<scalar_t>(part[d] * inv);
        return;
    }
    // Every block of the cluster, idle ones included, reaches both barriers.
    __shared__ float stats[2];  // this block's (m, l)
    if (live) {
        const int lo = split * per < n_all ? split * per : n_all;
        const int hi = lo + per < n_all ? lo + per : n_all;
        const float2 ml = attend_slice(q, k_cache, v_cache, t, j, g, lo, hi - lo, sc, red_max, red_sum, part);
        if (tid == 0) {
            stats[0] = ml.x;
            stats[1] = ml.y;
        }
    }
    cluster_sync();
    if (live && split == 0) {
        // The group's blocks are cluster ranks first .. first + ns - 1 (ns divides 8).
        const unsigned first = blockIdx.x % CLUSTER;
        float scale[CLUSTER];
        float mx = -__int_as_float(0x7f800000);
#pragma unroll
        for (int r = 0; r < CLUSTER; ++r) {
            if (r < ns) {
                scale[r] = cluster_load(&stats[0], first + r);
                mx = fmaxf(mx, scale[r]);
            }
        }
        float lt = 0.f;
#pragma unroll
        for (int r = 0; r < CLUSTER; ++r) {
            if (r < ns) {
                // An empty slice has m = -inf and l = 0: its weight is exp(-inf) = 0.
                scale[r] = expf(scale[r] - mx);
                lt += scale[r] * cluster_load(&stats[1], first + r);
            }
        }
        const float inv = __frcp_rn(lt);  // lt >= 1: the max key contributes exp(0)
        for (int d = tid; d < KILN_DV; d += BLOCK) {
            float acc = 0.f;
#pragma unroll
            for (int r = 0; r < CLUSTER; ++r)
                if (r < ns) acc += scale[r] * cluster_load(&part[d], first + r);
            o[d] = from_f<scalar_t>(acc * inv);
        }
    }
    // The other blocks stay until block 0 of their group has read their shared memory.
    cluster_sync();
#else
    // No clusters: block 0 of each group takes the slices one after another, merging as it goes.
    if (!live || split != 0) return;
    __shared__ float total[KILN_DV];
    float mt = -__int_as_float(0x7f800000), lt = 0.f;
    for (int r = 0; r < ns; ++r) {
        const int lo = r * per < n_all ? r * per : n_all;
        const int hi = lo + per < n_all ? lo + per : n_all;
        if (hi == lo) break;  // slices past the keys are empty
        const float2 ml = attend_slice(q, k_cache, v_cache, t, j, g, lo, hi - lo, sc, red_max, red_sum, part);
        const float mn = fmaxf(mt, ml.x);
        const float a = expf(mt - mn), b = expf(ml.x - mn);
        for (int d = tid; d < KILN_DV; d += BLOCK) total[d] = (r == 0 ? 0.f : total[d] * a) + part[d] * b;
        lt = lt * a + ml.y * b;
        mt = mn;
        __syncthreads();  // the next slice reuses sc and part
    }
    const float inv = __frcp_rn(lt);  // lt >= 1: the max key contributes exp(0)
    for (int d = tid; d < KILN_DV; d += BLOCK) o[d] = from_f<scalar_t>(total[d] * inv);
#endif
}
