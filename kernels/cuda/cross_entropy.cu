// Softmax cross-entropy over one row chunk of bf16 logits z [rows, v] that cuBLAS computed
// (z = h · wᵀ); f32 math (CPU reference: kernels/src/cross_entropy.rs, ChunkedHead).
//
// Math, per row i with target t_i:
//   Forward:  m_i = max_j z_ij,  lse_i = ln(Σ_j exp(z_ij − m_i)) + m_i,  logp_i = z_{i,t_i} − lse_i.
//             One pass over the row with an online (max, sum) pair per thread:
//             on a new max m', s ← s·exp(m − m') before adding; the per-thread pairs are merged by
//             a fixed shuffle/shared-memory tree (deterministic run to run). −inf entries are
//             handled without NaN (an all −inf row gives lse = −inf).
//   Backward (IN PLACE, z becomes dz):  p_ij = exp(z_ij − lse_i)
//             z_ij ← bf16( −g_i · p_ij )               for j ≠ t_i
//             z_ij ← bf16( (−g_i · p_ij) + g_i )       for j = t_i
//             i.e. g_i·([j = t_i] − p_ij) with the CPU's rounding order (−g·p everywhere, then a
//             scatter-add of g at the target).
//   A target t_i ≥ v (invalid) gives logp_i = NaN in the forward and no +g_i term in the backward.
//
// Memory traffic: forward reads z once (2·rows·v bytes) + targets, writes logp and lse (8 bytes/row);
// backward reads and writes z once (4·rows·v bytes) + targets, lse, g (12 bytes/row).
// Fast path: 16-byte vector accesses (8 bf16) when v % 8 == 0 and z is 16-byte aligned; otherwise
// scalar (still coalesced).
//
// LAUNCH CONTRACT
//   oxt_ce_fwd_bf16(const bf16* z, const unsigned int* targets, float* logp, float* lse, int rows, int v)
//     grid = (rows, 1, 1), block = (256, 1, 1), dynamic smem = 0.
//     z: [rows, v] contiguous; targets, logp, lse: [rows]. Block i writes logp[i] and lse[i].
//   oxt_ce_bwd_bf16(bf16* z, const unsigned int* targets, const float* lse, const float* g, int rows, int v)
//     grid = (rows, 1, 1), block = (256, 1, 1), dynamic smem = 0.
//     z: [rows, v] contiguous, overwritten in place with dz; targets, lse, g (f32 upstream gradient
//     of logp): [rows]. Block i rewrites every element of row i.
//   (Any blockDim.x that is a multiple of 32 and ≤ 1024 works; 256 is the contract.)

#include "common.cuh"

// Threads per block of the launch contract above; the Rust glue reads it from here (kernels/build.rs).
constexpr int kThreads = 256;

namespace {

using namespace oxt;


// Online softmax state: running max m and Σ exp(z − m).
struct MaxSum {
    float m;
    float s;
};

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
    const float m = fmaxf(a.m, b.m);
    if (m == -INFINITY) return {m, 0.f};
    const float sa = a.m == -INFINITY ? 0.f : a.s * expf(a.m - m);
    const float sb = b.m == -INFINITY ? 0.f : b.s * expf(b.m - m);
    return {m, sa + sb};
}

// Adds one value to a thread's state.
__device__ __forceinline__ void push(MaxSum& st, float z) {
    if (z > st.m) {
        st.s = st.m == -INFINITY ? 0.f : st.s * expf(st.m - z);
        st.m = z;
    }
    if (st.m != -INFINITY) st.s += expf(z - st.m);
}

// Adds 8 values: one rescale per group.
__device__ __forceinline__ void push8(MaxSum& st, const float f[8]) {
    float gm = f[0];
#pragma unroll
    for (int k = 1; k < 8; ++k) gm = fmaxf(gm, f[k]);
    if (gm > st.m) {
        st.s = st.m == -INFINITY ? 0.f : st.s * expf(st.m - gm);
        st.m = gm;
    }
    if (st.m != -INFINITY) {
#pragma unroll
        for (int k = 0; k < 8; ++k) st.s += expf(f[k] - st.m);
    }
}

// Merges the states of the whole block; result broadcast to every thread. Fixed order.
__device__ __forceinline__ MaxSum block_merge(MaxSum st) {
    __shared__ float sm[32], ss[32];
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    const unsigned n_warps = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        MaxSum other;
        other.m = __shfl_xor_sync(0xffffffffu, st.m, o);
        other.s = __shfl_xor_sync(0xffffffffu, st.s, o);
        st = merge(st, other);
    }
    if (lane == 0) {
        sm[warp] = st.m;
        ss[warp] = st.s;
    }
    __syncthreads();
    if (warp == 0) {
        MaxSum w = lane < n_warps ? MaxSum{sm[lane], ss[lane]} : MaxSum{-INFINITY, 0.f};
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            MaxSum other;
            other.m = __shfl_xor_sync(0xffffffffu, w.m, o);
            other.s = __shfl_xor_sync(0xffffffffu, w.s, o);
            w = merge(w, other);
        }
        if (lane == 0) {
            sm[0] = w.m;
            ss[0] = w.s;
        }
    }
    __syncthreads();
    return MaxSum{sm[0], ss[0]};
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kThreads) oxt_ce_fwd_bf16(const __nv_bfloat16* __restrict__ z, const unsigned int* __restrict__ targets,
                                           float* __restrict__ logp, float* __restrict__ lse, int rows, int v) {
    const int row = blockIdx.x;
    if (row >= rows) return;  // uniform per block
    const __nv_bfloat16* zr = z + (int64_t)row * v;
    MaxSum st{-INFINITY, 0.f};
    if (v % 8 == 0 && aligned16(zr)) {
        const uint4* z8 = reinterpret_cast<const uint4*>(zr);
        const int n8 = v / 8;
        for (int j = threadIdx.x; j < n8; j += blockDim.x) {
            const uint4 u = z8[j];
            const float f[8] = {bf_lo(u.x), bf_hi(u.x), bf_lo(u.y), bf_hi(u.y),
                                bf_lo(u.z), bf_hi(u.z), bf_lo(u.w), bf_hi(u.w)};
            push8(st, f);
        }
    } else {
        for (int j = threadIdx.x; j < v; j += blockDim.x) push(st, __bfloat162float(zr[j]));
    }
    const MaxSum tot = block_merge(st);
    if (threadIdx.x == 0) {
        const float l = logf(tot.s) + tot.m;
        lse[row] = l;
        const unsigned int t = targets[row];
        logp[row] = t < (unsigned int)v ? __bfloat162float(zr[t]) - l : __int_as_float(0x7fc00000);
    }
}

extern "C" __global__ void __launch_bounds__(kThreads) oxt_ce_bwd_bf16(__nv_bfloat16* __restrict__ z, const unsigned int* __restrict__ targets,
                                           const float* __restrict__ lse, const float* __restrict__ g, int rows, int v) {
    const int row = blockIdx.x;
    if (row >= rows) return;  // uniform per block
    __nv_bfloat16* zr = z + (int64_t)row * v;
    const float l = lse[row];
    const float gi = g[row];
    const float ng = -gi;
    const unsigned int t = targets[row];
    if (v % 8 == 0 && aligned16(zr)) {
        uint4* z8 = reinterpret_cast<uint4*>(zr);
        const int n8 = v / 8;
        for (int j = threadIdx.x; j < n8; j += blockDim.x) {
            const uint4 u = z8[j];
            float f[8] = {bf_lo(u.x), bf_hi(u.x), bf_lo(u.y), bf_hi(u.y),
                          bf_lo(u.z), bf_hi(u.z), bf_lo(u.w), bf_hi(u.w)};
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                float dz = __fmul_rn(expf(__fsub_rn(f[k], l)), ng);
                if ((unsigned int)(j * 8 + k) == t) dz = __fadd_rn(dz, gi);
                f[k] = dz;
            }
            uint4 o;
            o.x = pack2(f[0], f[1]);
            o.y = pack2(f[2], f[3]);
            o.z = pack2(f[4], f[5]);
            o.w = pack2(f[6], f[7]);
            z8[j] = o;
        }
    } else {
        for (int j = threadIdx.x; j < v; j += blockDim.x) {
            float dz = __fmul_rn(expf(__fsub_rn(__bfloat162float(zr[j]), l)), ng);
            if ((unsigned int)j == t) dz = __fadd_rn(dz, gi);
            zr[j] = __float2bfloat16_rn(dz);
        }
    }
}
