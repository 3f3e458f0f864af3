// Flash-style causal attention (GQA, packed-sample segments, KV-cache offset): forward and
// backward, bf16 in/out, f32 accumulation, tensor cores through nvcuda::wmma (bf16 m16n16k16).
// CPU reference and semantics: kernels/src/attention.rs.
//
// MATH
//   q [b, hq, tq, d], k/v [b, hkv, tk, d] bf16, contiguous row-major; hq = g·hkv, query head h
//   reads kv head h / g. tq ≤ tk; query row i sits at absolute position p = tk − tq + i.
//   seg (uint32 [b, tk], may be null): query p may read key j iff j ≤ p and
//   (seg == null or seg[bi, j] == seg[bi, p]); key p itself always qualifies (no empty row).
//   Forward:  S = scale · q kᵀ (f32, masked entries excluded), m = rowmax S,
//             lse = m + ln Σ exp(S − m) (f32 [b, hq, tq]), O = softmax(S) v (bf16 [b, hq, tq, d]).
//             Online softmax over key tiles in the base-2 domain (exp2 of S·scale·log2 e).
//   Backward: delta_i = Σ_d dO_i · O_i (f32), P = exp(S − lse) (recomputed), dV = Pᵀ dO,
//             dP = dO vᵀ, dS = P ⊙ (dP − delta), dQ = scale · dS k, dK = scale · dSᵀ q.
//             One block owns one kv head × key tile and loops over the g query heads and the query
//             tiles, so dK/dV (summed over the group) live in registers and need no atomics; dQ is
//             atomically added (f32) into dq_acc, which the host zero-fills and converts to bf16.
//   No T×T matrix ever touches global memory: score/probability tiles live in shared memory.
//   Fully masked tiles are skipped: causally (key tiles past the last row of a query tile, query
//   tiles before the first key of a key tile) and by segment range (a tile whose segment-id range
//   is disjoint from the other side's is never loaded; exact for contiguously packed samples,
//   conservative and still correct for any segment layout).
//
// MEMORY TRAFFIC (bytes, e = 2 for bf16, causal, no segments; N = b·hq·tq, M = b·hkv·tk)
//   forward : q read once (N·d·e), out written once (N·d·e), lse written (4N); k and v are re-read
//             once per query tile that reaches them: ≈ b·hq · (tq/64) · (avg keys read) · 2·d·e,
//             i.e. ≈ b·hq·tk²/128 · 2·d·e for tq = tk (served mostly from L2 across the g heads).
//   backward: k, v read once (2·M·d·e), dk, dv written once (2·M·d·e); q, dout, lse, delta are
//             re-read once per key tile that reaches them: ≈ (tk/BKb)/2 · (2·N·d·e + 8N);
//             dq_acc receives (tk/BKb)/2 · N·d f32 atomic adds (reductions in L2).
//   delta   : out and dout read once (2·N·d·e), delta written once (4N).
//
// LAUNCH CONTRACT (all blocks 1-D; all shared memory is static; dynamic smem = 0 everywhere;
// every static footprint is < 48 KB, so no cuFuncSetAttribute is needed (d32 below d64): fwd d64 46976 B,
// fwd d128 33408 B, bwd d64 37632 B, bwd d128 40576 B)
//   oxt_attn_fwd_bf16_d32 / oxt_attn_fwd_bf16_d64 / oxt_attn_fwd_bf16_d128
//       (q, k, v, seg, out, lse, int b, int hq, int hkv, int tq, int tk, float scale)
//       grid = (ceil(tq / 64), hq, b), block = (128, 1, 1), dynamic smem = 0
//       writes every element of out [b, hq, tq, d] (bf16) and lse [b, hq, tq] (f32).
//   oxt_attn_bwd_delta_bf16
//       (out, dout, delta, long long rows, int d), rows = b·hq·tq, any d ≥ 1
//       grid = (ceil(rows / 8), 1, 1), block = (256, 1, 1), dynamic smem = 0
//       writes delta [rows] (f32).
//   oxt_attn_bwd_bf16_d32 / oxt_attn_bwd_bf16_d64
//       (q, k, v, seg, dout, lse, delta, dq_acc, dk, dv, int b, int hq, int hkv, int tq, int tk,
//        float scale)
//       grid = (ceil(tk / 64), hkv, b), block = (128, 1, 1), dynamic smem = 0
//   oxt_attn_bwd_bf16_d128   (same parameters)
//       grid = (ceil(tk / 32), hkv, b), block = (128, 1, 1), dynamic smem = 0
//       Both: dq_acc [b, hq, tq, d] f32 must be zero-filled by the host before the launch (the
//       kernel only adds into it); every element of dk, dv [b, hkv, tk, d] (bf16) is written.
//   Order: delta before bwd (bwd reads delta); dq_acc zero-filled before bwd. dQ is summed with
//   f32 atomics, so its low bits depend on scheduling (not bit-reproducible run to run).
//   Requirements: hq % hkv == 0, 1 ≤ tq ≤ tk, b, hq, hkv ≤ 65535 (grid y/z limits), contiguous
//   tensors. 16-byte alignment of q/k/v/dout/out/dk/dv is used for vector copies when present;
//   unaligned pointers (tensor views with odd start offsets) take a slower scalar path.
//
// TILES (constants below): forward 64 query rows × 64 keys (d = 32, 64) or × 32 keys (d = 128),
// four warps of 16 query rows each; backward 64 (d = 32, 64) or 32 (d = 128) keys per block × 32
// query rows per inner step, four warps. d = 32 serves small models (and the trainer's demo).

#include <cuda_bf16.h>
#include <mma.h>
#include <stdint.h>

#include "cp_async.cuh"

using namespace nvcuda;

namespace {

typedef __nv_bfloat16 bf16;

// ---------------------------------------------------------------- tile configuration

constexpr int kThreads = 128;  // forward and backward blocks: 4 warps
constexpr int kWarps = kThreads / 32;
constexpr int kFwdBQ = 64;       // forward query rows per block (16 per warp)
constexpr int kFwdBK_D32 = 64;   // forward keys per tile, d = 32
constexpr int kFwdBK_D64 = 64;   // forward keys per tile, d = 64
constexpr int kFwdBK_D128 = 32;  // forward keys per tile, d = 128
constexpr int kBwdBQ = 32;       // backward query rows per inner step
constexpr int kBwdBK_D32 = 64;   // backward keys per block, d = 32
constexpr int kBwdBK_D64 = 64;   // backward keys per block, d = 64
constexpr int kBwdBK_D128 = 32;  // backward keys per block, d = 128
constexpr int kDeltaRowsPerBlock = 8;  // delta kernel: one warp per row, 256 threads
// Backward register cap: 3 blocks of 128 threads per SM (≤ 168 registers). Uncapped, ptxas uses
// ~250 (2 blocks/SM); capped, it reloads a few loop-invariant addresses from L1 once per step.
constexpr int kBwdMinBlocks = 3;
constexpr int kPadH = 8;  // bf16 row padding in shared memory (16 bytes: spreads banks, keeps wmma alignment)
constexpr int kPadF = 8;  // f32 row padding of the score tile
constexpr int kScanUnroll = 8;  // independent loads per thread per step of the segment scans
constexpr int kIntMax = 0x7fffffff;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> FragA;   // A
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::col_major> FragAT;  // Aᵀ of a row-major tile
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> FragB;   // B
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> FragBT;  // Bᵀ of a row-major tile
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> FragC;

// ---------------------------------------------------------------- small device helpers

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const unsigned*>(&h);
}

__device__ __forceinline__ float2 unpack_bf16x2(unsigned u) {
    __nv_bfloat162 h;
    *reinterpret_cast<unsigned*>(&h) = u;
    return __bfloat1622float2(h);
}

// Block-cooperative copy of a ROWS × COLS bf16 tile (global rows contiguous, COLS elements apart)
// into shared memory with row stride LD. Rows ≥ rows_valid are zero-filled (tails must be finite
// zeros: they meet P = 0 or dS = 0 in the products, and 0 · garbage could be NaN).
template <int ROWS, int COLS, int LD>
__device__ __forceinline__ void load_tile(bf16* dst, const bf16* src, int rows_valid, bool vec_ok) {
    static_assert(COLS % 8 == 0 && LD % 8 == 0, "16-byte chunks");
    constexpr int CH = COLS / 8;
    for (int idx = threadIdx.x; idx < ROWS * CH; idx += kThreads) {
        const int r = idx / CH, c = (idx % CH) * 8;
        bf16* d = dst + r * LD + c;
        if (r < rows_valid) {
            const bf16* s = src + static_cast<long long>(r) * COLS + c;
            if (vec_ok) {
                cp_async16(d, s);
            } else {
#pragma unroll
                for (int e = 0; e < 8; ++e) d[e] = s[e];
            }
        } else {
            *reinterpret_cast<uint4*>(d) = make_uint4(0u, 0u, 0u, 0u);
        }
    }
}

// Block-cooperative copy of n 4-byte words; words ≥ n_valid get `fill`.
template <typename T>
__device__ __forceinline__ void load_words(T* dst, const T* src, int n_valid, int n, T fill) {
    static_assert(sizeof(T) == 4, "4-byte words");
    for (int i = threadIdx.x; i < n; i += kThreads) {
        if (i < n_valid) {
            cp_async4(dst + i, src + i);
        } else {
            dst[i] = fill;
        }
    }
}

// Which (row, col) of the 16×16 tile each accumulator element of this thread holds. The wmma
// fragment layout is unspecified, so it is read back at run time: load a tile whose entries are
// their own row·16 + col into an accumulator fragment (load, mma and store share one layout).
// Eight 8-bit codes packed into two registers.
struct FragMap {
    unsigned lo, hi;
    __device__ __forceinline__ int code(int i) const { return ((i < 4 ? lo : hi) >> (8 * (i & 3))) & 0xff; }
    __device__ __forceinline__ int row(int i) const { return code(i) >> 4; }
    __device__ __forceinline__ int col(int i) const { return code(i) & 15; }
};

// All threads of the block must call this; `scratch` is 256 floats of shared memory (free before
// and after the call).
__device__ __forceinline__ FragMap make_frag_map(float* scratch) {
    static_assert(FragC::num_elements == 8, "m16n16k16 f32 accumulator holds 8 elements per thread");
    for (int i = threadIdx.x; i < 256; i += blockDim.x) scratch[i] = static_cast<float>(i);
    __syncthreads();
    FragC c;
    wmma::load_matrix_sync(c, scratch, 16, wmma::mem_row_major);
    FragMap m{0u, 0u};
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const unsigned v = static_cast<unsigned>(c.x[i]) & 0xffu;
        if (i < 4) {
            m.lo |= v << (8 * i);
        } else {
            m.hi |= v << (8 * (i - 4));
        }
    }
    __syncthreads();
    return m;
}

// Multiply every row of N accumulator tiles (16 rows each, same rows) by factor[row].
template <int N>
__device__ __forceinline__ void scale_rows(FragC (&acc)[N], const float* factor, const FragMap& map) {
    float f[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) f[i] = factor[map.row(i)];
#pragma unroll
    for (int n = 0; n < N; ++n) {
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[n].x[i] *= f[i];
    }
}

// Write one 16×16 f32 accumulator tile as bf16 to global memory (row stride ld), rows <
// rows_valid only, through a 256-float per-warp shared scratch (coalesced 16-byte stores).
__device__ __forceinline__ void store_tile_bf16(const FragC& c, float* scratch, bf16* dst, long long ld,
                                                int rows_valid, bool vec_ok) {
    const int lane = threadIdx.x & 31;
    wmma::store_matrix_sync(scratch, c, 16, wmma::mem_row_major);
    __syncwarp();
    const int r = lane >> 1, c0 = (lane & 1) * 8;
    if (r < rows_valid) {
        const float* s = scratch + r * 16 + c0;
        bf16* d = dst + r * ld + c0;
        if (vec_ok) {
            *reinterpret_cast<uint4*>(d) = make_uint4(pack_bf16x2(s[0], s[1]), pack_bf16x2(s[2], s[3]),
                                                      pack_bf16x2(s[4], s[5]), pack_bf16x2(s[6], s[7]));
        } else {
#pragma unroll
            for (int e = 0; e < 8; ++e) d[e] = __float2bfloat16(s[e]);
        }
    }
    __syncwarp();
}

// Block-wide min (of int) through one shared word; all threads get the result.
__device__ __forceinline__ int block_min(int v, int* red) {
    if (threadIdx.x == 0) *red = kIntMax;
    __syncthreads();
    v = __reduce_min_sync(0xffffffffu, v);
    if ((threadIdx.x & 31) == 0) atomicMin(red, v);
    __syncthreads();
    const int r = *red;
    __syncthreads();
    return r;
}

// Segment-id range [lo, hi] over seg[0 .. n) (n ≥ 1, n ≤ kThreads), block-wide.
__device__ __forceinline__ void seg_range(const unsigned* seg, int n, unsigned* red2, unsigned& lo,
                                          unsigned& hi) {
    if (threadIdx.x == 0) {
        red2[0] = 0xffffffffu;
        red2[1] = 0u;
    }
    __syncthreads();
    if (static_cast<int>(threadIdx.x) < n) {
        const unsigned s = seg[threadIdx.x];
        atomicMin(&red2[0], s);
        atomicMax(&red2[1], s);
    }
    __syncthreads();
    lo = red2[0];
    hi = red2[1];
    __syncthreads();
}

// First (FROM_END = false) or last (FROM_END = true) index j in [beg, end) with
// lo ≤ seg[j] ≤ hi; returns end (first) or beg − 1 (last) when there is none. Block-wide; scans
// in steps of kScanUnroll·kThreads independent loads and stops at the first step with a hit, so a
// contiguously packed layout costs a few steps.
template <bool FROM_END>
__device__ __forceinline__ int scan_segments(const unsigned* seg, int beg, int end, unsigned lo, unsigned hi,
                                             int* red) {
    constexpr int STEP = kScanUnroll * kThreads;
    int best = kIntMax;  // kept as "min" of j (first) or of −j (last)
    for (int s = 0; s < end - beg; s += STEP) {
        unsigned v[kScanUnroll];
#pragma unroll
        for (int u = 0; u < kScanUnroll; ++u) {
            const int o = s + u * kThreads + static_cast<int>(threadIdx.x);
            const int j = FROM_END ? end - 1 - o : beg + o;
            v[u] = (o < end - beg) ? __ldg(seg + j) : 0u;
        }
#pragma unroll
        for (int u = 0; u < kScanUnroll; ++u) {
            const int o = s + u * kThreads + static_cast<int>(threadIdx.x);
            const int j = FROM_END ? end - 1 - o : beg + o;
            if (o < end - beg && v[u] >= lo && v[u] <= hi) best = min(best, FROM_END ? -j : j);
        }
        if (__syncthreads_or(best != kIntMax)) break;
    }
    const int r = block_min(best, red);
    if (r == kIntMax) return FROM_END ? beg - 1 : end;
    return FROM_END ? -r : r;
}

// ---------------------------------------------------------------- forward

template <int D, int BK>
struct FwdSmem {
    static constexpr int LDH = D + kPadH;   // q / k / v rows (bf16)
    static constexpr int LDS = BK + kPadF;  // score rows (f32)
    static constexpr int LDP = BK + kPadH;  // probability rows (bf16)
    union Stage {
        struct {
            bf16 k[BK * LDH];
            bf16 v[BK * LDH];
        } kv;
        bf16 q[kFwdBQ * LDH];  // q tile, only until it is in registers
    };
    alignas(128) Stage st;
    alignas(32) float s[kFwdBQ * LDS];  // per warp: its 16 score rows; also 256-float scratch
    alignas(32) bf16 p[kFwdBQ * LDP];   // per warp: its 16 probability rows
    float row[kFwdBQ];                  // per-row factor: online-softmax rescale, then 1 / l
    unsigned seg_k[2][BK];              // key segment ids, double-buffered with the k tile
    unsigned red2[2];
    int red;
};

template <int D, int BK>
__device__ __forceinline__ void attn_fwd(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                         const bf16* __restrict__ v, const unsigned* __restrict__ seg,
                                         bf16* __restrict__ out, float* __restrict__ lse, int hq, int hkv, int tq,
                                         int tk, float scale) {
    typedef FwdSmem<D, BK> Smem;
    constexpr int BQ = kFwdBQ, LDH = Smem::LDH, LDS = Smem::LDS, LDP = Smem::LDP;
    constexpr int ND = D / 16, NK = BK / 16;
    static_assert(BQ == 16 * kWarps, "one warp per 16 query rows");
    static_assert(BQ <= 2 * BK, "q staging must fit in the k/v buffers");
    static_assert(256 <= 16 * LDS, "per-warp scratch fits in its score rows");
    __shared__ Smem sm;

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int qt = gridDim.x - 1 - blockIdx.x;  // longest (latest) query tiles start first
    const int h = blockIdx.y, bi = blockIdx.z;
    const int hk = h / (hq / hkv);
    const int q0 = qt * BQ;
    const int rows = min(BQ, tq - q0);
    const int off = tk - tq;  // absolute position of query row 0
    const long long bh = static_cast<long long>(bi) * hq + h;
    const long long kv_base = (static_cast<long long>(bi) * hkv + hk) * tk * D;
    const bf16* qg = q + (bh * tq + q0) * D;
    const bf16* kg = k + kv_base;
    const bf16* vg = v + kv_base;
    const unsigned* segb = seg ? seg + static_cast<long long>(bi) * tk : nullptr;
    const bool vec_ok = aligned16(q) && aligned16(k) && aligned16(v) && aligned16(out);

    // Stage 0: fragment layout map; q tile → shared → registers (16 rows × D per warp).
    const FragMap map = make_frag_map(sm.s);
    load_tile<BQ, D, LDH>(sm.st.q, qg, rows, vec_ok);
    cp_async_commit();

    // Stage 1: key range. Causal: keys < off + q0 + rows. Segments: no key before the first one
    // whose id falls in the tile's query-id range can be read by any row of the tile.
    int key_lo = 0;
    const int key_hi = off + q0 + rows;
    if (segb) {
        unsigned lo, hi;
        seg_range(segb + off + q0, rows, sm.red2, lo, hi);
        key_lo = scan_segments<false>(segb, 0, key_hi, lo, hi, &sm.red);
    }
    const int kt_beg = key_lo / BK, kt_end = (key_hi + BK - 1) / BK;

    cp_async_wait<0>();
    __syncthreads();
    FragA qf[ND];
#pragma unroll
    for (int kk = 0; kk < ND; ++kk) wmma::load_matrix_sync(qf[kk], sm.st.q + warp * 16 * LDH + kk * 16, LDH);
    __syncthreads();  // the staging area becomes the k / v buffers

    // Per-lane online-softmax state: lanes 2r and 2r+1 share row r of the warp's 16 rows.
    const int r = lane >> 1, half = lane & 1;
    const int qi = q0 + warp * 16 + r;
    const bool row_ok = qi < tq;
    const unsigned seg_q = (segb && row_ok) ? segb[off + qi] : 0u;
    const float cs = scale * kLog2e;
    float m_run = neg_inf(), l_run = 0.f;
    float* s_w = sm.s + warp * 16 * LDS;  // this warp's score rows
    bf16* p_w = sm.p + warp * 16 * LDP;   // this warp's probability rows
    float* row_w = sm.row + warp * 16;

    FragC o[ND];
#pragma unroll
    for (int n = 0; n < ND; ++n) wmma::fill_fragment(o[n], 0.f);

    // k tile kt (+ its segment ids) → shared, asynchronously.
    auto issue_k = [&](int kt) {
        const int k0 = kt * BK, kn = min(BK, tk - k0);
        load_tile<BK, D, LDH>(sm.st.kv.k, kg + static_cast<long long>(k0) * D, kn, vec_ok);
        if (segb) load_words<unsigned>(sm.seg_k[kt & 1], segb + k0, kn, BK, 0u);
    };
    issue_k(kt_beg);
    cp_async_commit();

    // Pipeline per key tile: v(kt) loads during S and softmax; k(kt+1) loads during softmax and P·v.
    for (int kt = kt_beg; kt < kt_end; ++kt) {
        const int k0 = kt * BK;
        cp_async_wait<0>();  // k(kt)
        __syncthreads();     // ... visible to all; every warp is done with v(kt − 1)
        load_tile<BK, D, LDH>(sm.st.kv.v, vg + static_cast<long long>(k0) * D, min(BK, tk - k0), vec_ok);
        cp_async_commit();

        // Stage 2: S = q kᵀ for the warp's 16 rows × BK keys → shared (f32).
#pragma unroll
        for (int n = 0; n < NK; ++n) {
            FragC acc;
            wmma::fill_fragment(acc, 0.f);
#pragma unroll
            for (int kk = 0; kk < ND; ++kk) {
                FragBT kb;
                wmma::load_matrix_sync(kb, sm.st.kv.k + n * 16 * LDH + kk * 16, LDH);
                wmma::mma_sync(acc, qf[kk], kb, acc);
            }
            wmma::store_matrix_sync(s_w + n * 16, acc, LDS, wmma::mem_row_major);
        }
        __syncthreads();  // every warp is done with k(kt)
        if (kt + 1 < kt_end) issue_k(kt + 1);
        cp_async_commit();  // (possibly empty group: keeps the wait counts uniform)

        // Stage 3: mask, online softmax, P (bf16) → shared. Lane (r, half) reads float4 chunks
        // 2c + half of row r (bank-conflict-free with the 8-float padding).
        {
            const float* srow = s_w + r * LDS;
            bf16* prow = p_w + r * LDP;
            const unsigned* sk = sm.seg_k[kt & 1];
            float x[BK / 2];
            float mt = neg_inf();
#pragma unroll
            for (int c = 0; c < BK / 8; ++c) {
                const int col = (2 * c + half) * 4;
                const float4 s4 = *reinterpret_cast<const float4*>(srow + col);
                const float sv[4] = {s4.x, s4.y, s4.z, s4.w};
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int j = k0 + col + e;
                    const bool ok = row_ok && j <= off + qi && (!segb || sk[col + e] == seg_q);
                    x[4 * c + e] = ok ? sv[e] * cs : neg_inf();
                    mt = fmaxf(mt, x[4 * c + e]);
                }
            }
            mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
            const float m_new = fmaxf(m_run, mt);
            const float m_use = (m_new == neg_inf()) ? 0.f : m_new;  // all masked so far: P = 0
            const float alpha = exp2f(m_run - m_use);
            float rs = 0.f;
#pragma unroll
            for (int c = 0; c < BK / 8; ++c) {
                const int col = (2 * c + half) * 4;
                float pv[4];
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    pv[e] = exp2f(x[4 * c + e] - m_use);
                    rs += pv[e];
                }
                *reinterpret_cast<uint2*>(prow + col) = make_uint2(pack_bf16x2(pv[0], pv[1]), pack_bf16x2(pv[2], pv[3]));
            }
            rs += __shfl_xor_sync(0xffffffffu, rs, 1);
            l_run = l_run * alpha + rs;
            m_run = m_new;
            if (half == 0) row_w[r] = alpha;
        }
        __syncwarp();
        scale_rows(o, row_w, map);  // O ← diag(alpha) O

        // Stage 4: O += P v.
        cp_async_wait<1>();  // v(kt) (k(kt+1) may still be in flight)
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < NK; ++kk) {
            FragA pa;
            wmma::load_matrix_sync(pa, p_w + kk * 16, LDP);
#pragma unroll
            for (int n = 0; n < ND; ++n) {
                FragB vb;
                wmma::load_matrix_sync(vb, sm.st.kv.v + kk * 16 * LDH + n * 16, LDH);
                wmma::mma_sync(o[n], pa, vb, o[n]);
            }
        }
    }
    cp_async_wait<0>();  // only empty groups can be pending

    // Stage 5: O / l → out (bf16), lse = (m + log2 l) · ln 2.
    if (half == 0) {
        row_w[r] = l_run > 0.f ? 1.f / l_run : 0.f;
        if (row_ok) lse[bh * tq + qi] = (m_run + log2f(l_run)) * kLn2;
    }
    __syncwarp();
    scale_rows(o, row_w, map);
    bf16* og = out + (bh * tq + q0 + warp * 16) * D;
#pragma unroll
    for (int n = 0; n < ND; ++n) store_tile_bf16(o[n], s_w, og + n * 16, D, rows - warp * 16, vec_ok);
}

// ---------------------------------------------------------------- backward

template <int D, int BK>
struct BwdSmem {
    static constexpr int LDH = D + kPadH;   // k / v / q / dout rows (bf16)
    static constexpr int LDP = BK + kPadH;  // P / dS rows (bf16)
    alignas(128) bf16 k[BK * LDH];
    alignas(32) bf16 v[BK * LDH];
    union QD {
        struct {
            bf16 q[kBwdBQ * LDH];
            bf16 dout[kBwdBQ * LDH];
        } t;
        float scratch[kWarps * 256];  // epilogue: per-warp 16×16 f32 staging
    };
    alignas(32) QD qd;
    union PD {
        struct {
            bf16 p[kBwdBQ * LDP];
            bf16 ds[kBwdBQ * LDP];
        } t;
        float map[256];  // prologue: fragment-map scratch
    };
    alignas(32) PD pd;
    float lse[kBwdBQ];
    float delta[kBwdBQ];
    unsigned seg_q[kBwdBQ];
    unsigned seg_k[BK];
    unsigned red2[2];
    int red;
};

template <int D, int BK>
__device__ __forceinline__ void attn_bwd(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                         const bf16* __restrict__ v, const unsigned* __restrict__ seg,
                                         const bf16* __restrict__ dout, const float* __restrict__ lse,
                                         const float* __restrict__ delta, float* __restrict__ dq_acc,
                                         bf16* __restrict__ dk, bf16* __restrict__ dv, int hq, int hkv, int tq,
                                         int tk, float scale) {
    typedef BwdSmem<D, BK> Smem;
    constexpr int BQ = kBwdBQ, LDH = Smem::LDH, LDP = Smem::LDP;
    constexpr int ND = D / 16, NK = BK / 16, NQ = BQ / 16;
    // Work split over the 4 warps (16×16 output tiles, consecutive tiles share their A rows).
    constexpr int FPW_S = NQ * NK / kWarps;  // S / dP tiles per warp       [BQ × BK]
    constexpr int FPW_O = NK * ND / kWarps;  // dK / dV tiles per warp      [BK × D]
    constexpr int FPW_Q = NQ * ND / kWarps;  // dQ tiles per warp           [BQ × D]
    static_assert(FPW_S >= 1 && (NQ * NK) % kWarps == 0 && NK % FPW_S == 0, "S split");
    static_assert(FPW_O >= 1 && (NK * ND) % kWarps == 0 && ND % FPW_O == 0, "dK/dV split");
    static_assert(FPW_Q >= 1 && (NQ * ND) % kWarps == 0 && ND % FPW_Q == 0, "dQ split");
    __shared__ Smem sm;

    const int tid = threadIdx.x, warp = tid >> 5;
    const int kt = blockIdx.x, hk = blockIdx.y, bi = blockIdx.z;
    const int g = hq / hkv;
    const int k0 = kt * BK, kn = min(BK, tk - k0);
    const int off = tk - tq;
    const long long kv_base = (static_cast<long long>(bi) * hkv + hk) * tk * D;
    const unsigned* segb = seg ? seg + static_cast<long long>(bi) * tk : nullptr;
    const bool vec_ok = aligned16(q) && aligned16(k) && aligned16(v) && aligned16(dout) && aligned16(dk) &&
                        aligned16(dv);
    const float cs = scale * kLog2e;

    // Stage 0: fragment map; k, v tile (+ key segment ids) → shared.
    const FragMap map = make_frag_map(sm.pd.map);
    load_tile<BK, D, LDH>(sm.k, k + kv_base + static_cast<long long>(k0) * D, kn, vec_ok);
    load_tile<BK, D, LDH>(sm.v, v + kv_base + static_cast<long long>(k0) * D, kn, vec_ok);
    if (segb) load_words<unsigned>(sm.seg_k, segb + k0, kn, BK, 0u);
    cp_async_commit();

    // Stage 1: query range. Causal: rows i ≥ k0 − off. Segments: rows whose id falls in the key
    // tile's id range, between the first and the last such row.
    int i_beg = max(0, k0 - off), i_end = tq;
    if (segb) {
        unsigned lo, hi;
        seg_range(segb + k0, kn, sm.red2, lo, hi);
        i_beg = scan_segments<false>(segb + off, i_beg, tq, lo, hi, &sm.red);
        i_end = i_beg < tq ? scan_segments<true>(segb + off, i_beg, tq, lo, hi, &sm.red) + 1 : i_beg;
    }
    const int it_beg = i_beg / BQ;
    const int n_it = i_end > i_beg ? (i_end + BQ - 1) / BQ - it_beg : 0;
    const int steps = g * n_it;  // (query head, query tile) pairs

    // This warp's output tiles: dK/dV rows rk·16 (keys), columns (cb + t)·16; dQ rows rq·16,
    // columns (cq + t)·16; S/dP rows fr·16, key columns (fc + t)·16.
    const int rk = warp * FPW_O / ND, cb = warp * FPW_O % ND;
    const int rq = warp * FPW_Q / ND, cq = warp * FPW_Q % ND;
    const int fr = warp * FPW_S / NK, fc = warp * FPW_S % NK;

    FragC acc_dk[FPW_O], acc_dv[FPW_O];
#pragma unroll
    for (int t = 0; t < FPW_O; ++t) {
        wmma::fill_fragment(acc_dk[t], 0.f);
        wmma::fill_fragment(acc_dv[t], 0.f);
    }

    // q, dout, lse, delta, query segment ids of one step → shared, asynchronously.
    auto issue_step = [&](int step) {
        const int h = hk * g + step / n_it;
        const int q0 = (it_beg + step % n_it) * BQ;
        const int qn = min(BQ, tq - q0);
        const long long row0 = (static_cast<long long>(bi) * hq + h) * tq + q0;
        load_tile<BQ, D, LDH>(sm.qd.t.q, q + row0 * D, qn, vec_ok);
        load_tile<BQ, D, LDH>(sm.qd.t.dout, dout + row0 * D, qn, vec_ok);
        load_words<float>(sm.lse, lse + row0, qn, BQ, 0.f);
        load_words<float>(sm.delta, delta + row0, qn, BQ, 0.f);
        if (segb) load_words<unsigned>(sm.seg_q, segb + off + q0, qn, BQ, 0u);
    };
    if (steps > 0) issue_step(0);
    cp_async_commit();

    for (int step = 0; step < steps; ++step) {
        const int h = hk * g + step / n_it;
        const int q0 = (it_beg + step % n_it) * BQ;
        const long long row0 = (static_cast<long long>(bi) * hq + h) * tq + q0;
        cp_async_wait<0>();
        __syncthreads();  // this step's q/dout visible; every warp is done with the last dS

        // Stage 2: S = q kᵀ and dP = dout vᵀ (16 query rows × FPW_S·16 keys per warp), then
        // P = exp(S − lse) (masked → 0) and dS = P ⊙ (dP − delta) → shared as bf16.
        {
            FragC s[FPW_S], dp[FPW_S];
#pragma unroll
            for (int t = 0; t < FPW_S; ++t) {
                wmma::fill_fragment(s[t], 0.f);
                wmma::fill_fragment(dp[t], 0.f);
            }
#pragma unroll
            for (int kk = 0; kk < ND; ++kk) {
                FragA qa, da;
                wmma::load_matrix_sync(qa, sm.qd.t.q + fr * 16 * LDH + kk * 16, LDH);
                wmma::load_matrix_sync(da, sm.qd.t.dout + fr * 16 * LDH + kk * 16, LDH);
#pragma unroll
                for (int t = 0; t < FPW_S; ++t) {
                    FragBT kb, vb;
                    wmma::load_matrix_sync(kb, sm.k + (fc + t) * 16 * LDH + kk * 16, LDH);
                    wmma::load_matrix_sync(vb, sm.v + (fc + t) * 16 * LDH + kk * 16, LDH);
                    wmma::mma_sync(s[t], qa, kb, s[t]);
                    wmma::mma_sync(dp[t], da, vb, dp[t]);
                }
            }
#pragma unroll
            for (int t = 0; t < FPW_S; ++t) {
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    const int lr = fr * 16 + map.row(i), lc = (fc + t) * 16 + map.col(i);
                    const int qi = q0 + lr, kj = k0 + lc;
                    const bool ok = qi < tq && kj <= off + qi && (!segb || sm.seg_q[lr] == sm.seg_k[lc]);
                    const float p = ok ? exp2f(s[t].x[i] * cs - sm.lse[lr] * kLog2e) : 0.f;
                    const float ds = p * (dp[t].x[i] - sm.delta[lr]);
                    sm.pd.t.p[lr * LDP + lc] = __float2bfloat16(p);
                    sm.pd.t.ds[lr * LDP + lc] = __float2bfloat16(ds);
                }
            }
        }
        __syncthreads();

        // Stage 3: dV += Pᵀ dout, dK += dSᵀ q (this warp's 16 keys × FPW_O·16 columns).
#pragma unroll
        for (int kk = 0; kk < NQ; ++kk) {
            FragAT pa, sa;
            wmma::load_matrix_sync(pa, sm.pd.t.p + kk * 16 * LDP + rk * 16, LDP);
            wmma::load_matrix_sync(sa, sm.pd.t.ds + kk * 16 * LDP + rk * 16, LDP);
#pragma unroll
            for (int t = 0; t < FPW_O; ++t) {
                FragB ob, qb;
                wmma::load_matrix_sync(ob, sm.qd.t.dout + kk * 16 * LDH + (cb + t) * 16, LDH);
                wmma::load_matrix_sync(qb, sm.qd.t.q + kk * 16 * LDH + (cb + t) * 16, LDH);
                wmma::mma_sync(acc_dv[t], pa, ob, acc_dv[t]);
                wmma::mma_sync(acc_dk[t], sa, qb, acc_dk[t]);
            }
        }
        __syncthreads();  // q, dout, lse, delta, seg_q are free: prefetch the next step
        if (step + 1 < steps) issue_step(step + 1);
        cp_async_commit();

        // Stage 4: dQ += scale · dS k (this warp's 16 query rows × FPW_Q·16 columns), f32 atomics.
        {
            FragC dq[FPW_Q];
#pragma unroll
            for (int t = 0; t < FPW_Q; ++t) wmma::fill_fragment(dq[t], 0.f);
#pragma unroll
            for (int kk = 0; kk < NK; ++kk) {
                FragA sa;
                wmma::load_matrix_sync(sa, sm.pd.t.ds + rq * 16 * LDP + kk * 16, LDP);
#pragma unroll
                for (int t = 0; t < FPW_Q; ++t) {
                    FragB kb;
                    wmma::load_matrix_sync(kb, sm.k + kk * 16 * LDH + (cq + t) * 16, LDH);
                    wmma::mma_sync(dq[t], sa, kb, dq[t]);
                }
            }
            float* dq_rows = dq_acc + row0 * D;
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const int lr = rq * 16 + map.row(i);
                if (q0 + lr < tq) {
#pragma unroll
                    for (int t = 0; t < FPW_Q; ++t)
                        atomicAdd(dq_rows + static_cast<long long>(lr) * D + (cq + t) * 16 + map.col(i),
                                  scale * dq[t].x[i]);
                }
            }
        }
    }
    cp_async_wait<0>();
    __syncthreads();  // q/dout area becomes the epilogue scratch

    // Stage 5: dK = scale · acc_dk, dV = acc_dv → bf16 (keys < tk only). Written even when no
    // query reaches this tile (zeros).
    float* scratch = sm.qd.scratch + warp * 256;
    const long long key_row0 = kv_base + static_cast<long long>(k0 + rk * 16) * D;
#pragma unroll
    for (int t = 0; t < FPW_O; ++t) {
#pragma unroll
        for (int i = 0; i < 8; ++i) acc_dk[t].x[i] *= scale;
        store_tile_bf16(acc_dk[t], scratch, dk + key_row0 + (cb + t) * 16, D, kn - rk * 16, vec_ok);
        store_tile_bf16(acc_dv[t], scratch, dv + key_row0 + (cb + t) * 16, D, kn - rk * 16, vec_ok);
    }
}

}  // namespace

// ---------------------------------------------------------------- entry points

extern "C" __global__ void __launch_bounds__(kThreads)
    oxt_attn_fwd_bf16_d32(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                          const unsigned int* seg, __nv_bfloat16* out, float* lse, int b, int hq, int hkv, int tq,
                          int tk, float scale) {
    (void)b;  // = gridDim.z
    attn_fwd<32, kFwdBK_D32>(q, k, v, seg, out, lse, hq, hkv, tq, tk, scale);
}

extern "C" __global__ void __launch_bounds__(kThreads)
    oxt_attn_fwd_bf16_d64(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                          const unsigned int* seg, __nv_bfloat16* out, float* lse, int b, int hq, int hkv, int tq,
                          int tk, float scale) {
    (void)b;  // = gridDim.z
    attn_fwd<64, kFwdBK_D64>(q, k, v, seg, out, lse, hq, hkv, tq, tk, scale);
}

extern "C" __global__ void __launch_bounds__(kThreads)
    oxt_attn_fwd_bf16_d128(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                           const unsigned int* seg, __nv_bfloat16* out, float* lse, int b, int hq, int hkv, int tq,
                           int tk, float scale) {
    (void)b;  // = gridDim.z
    attn_fwd<128, kFwdBK_D128>(q, k, v, seg, out, lse, hq, hkv, tq, tk, scale);
}

// delta[row] = Σ_c out[row, c] · dout[row, c] (f32), one warp per row.
extern "C" __global__ void __launch_bounds__(32 * kDeltaRowsPerBlock)
    oxt_attn_bwd_delta_bf16(const __nv_bfloat16* out, const __nv_bfloat16* dout, float* delta, long long rows,
                            int d) {
    const long long row = static_cast<long long>(blockIdx.x) * kDeltaRowsPerBlock + (threadIdx.x >> 5);
    if (row >= rows) return;  // whole warp
    const int lane = threadIdx.x & 31;
    const bf16* o = out + row * d;
    const bf16* g = dout + row * d;
    float acc = 0.f;
    if ((d & 7) == 0 && aligned16(o) && aligned16(g)) {
        for (int c = lane * 8; c < d; c += 256) {
            const uint4 a = *reinterpret_cast<const uint4*>(o + c);
            const uint4 b = *reinterpret_cast<const uint4*>(g + c);
            const unsigned av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float2 x = unpack_bf16x2(av[e]), y = unpack_bf16x2(bv[e]);
                acc = fmaf(x.x, y.x, acc);
                acc = fmaf(x.y, y.y, acc);
            }
        }
    } else {
        for (int c = lane; c < d; c += 32) acc = fmaf(__bfloat162float(o[c]), __bfloat162float(g[c]), acc);
    }
#pragma unroll
    for (int s = 16; s > 0; s >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, s);
    if (lane == 0) delta[row] = acc;
}

extern "C" __global__ void __launch_bounds__(kThreads, kBwdMinBlocks)
    oxt_attn_bwd_bf16_d32(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                          const unsigned int* seg, const __nv_bfloat16* dout, const float* lse, const float* delta,
                          float* dq_acc, __nv_bfloat16* dk, __nv_bfloat16* dv, int b, int hq, int hkv, int tq, int tk,
                          float scale) {
    (void)b;  // = gridDim.z
    attn_bwd<32, kBwdBK_D32>(q, k, v, seg, dout, lse, delta, dq_acc, dk, dv, hq, hkv, tq, tk, scale);
}

extern "C" __global__ void __launch_bounds__(kThreads, kBwdMinBlocks)
    oxt_attn_bwd_bf16_d64(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                          const unsigned int* seg, const __nv_bfloat16* dout, const float* lse, const float* delta,
                          float* dq_acc, __nv_bfloat16* dk, __nv_bfloat16* dv, int b, int hq, int hkv, int tq, int tk,
                          float scale) {
    (void)b;  // = gridDim.z
    attn_bwd<64, kBwdBK_D64>(q, k, v, seg, dout, lse, delta, dq_acc, dk, dv, hq, hkv, tq, tk, scale);
}

extern "C" __global__ void __launch_bounds__(kThreads, kBwdMinBlocks)
    oxt_attn_bwd_bf16_d128(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                           const unsigned int* seg, const __nv_bfloat16* dout, const float* lse, const float* delta,
                           float* dq_acc, __nv_bfloat16* dk, __nv_bfloat16* dv, int b, int hq, int hkv, int tq,
                           int tk, float scale) {
    (void)b;  // = gridDim.z
    attn_bwd<128, kBwdBK_D128>(q, k, v, seg, dout, lse, delta, dq_acc, dk, dv, hq, hkv, tq, tk, scale);
}
