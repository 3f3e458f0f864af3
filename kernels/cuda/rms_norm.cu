// RMS norm with a frozen weight, bf16 in/out, f32 math (HF Llama semantics; CPU reference:
// kernels/src/rms_norm.rs).
//
// Math, per row of d elements (x, dy, w read as bf16 and widened to f32):
//   Forward:  r = 1 / sqrt(mean(x²) + eps)      mean = Σx² · (1/d), sqrt then a correctly
//                                                rounded reciprocal, as the CPU path does
//             n = x · r
//             y = bf16( float(bf16(n)) · float(w) )   (n is cast to x's dtype before the weight)
//             rstd[row] = r  (saved for the backward)
//   Backward: gn = dy · w,  n = x · r  (r = rstd[row]),  dot = Σ(gn · n) · (1/d)
//             dx = bf16( (gn − n · dot) · r )        (the bf16 cast in the forward is treated as
//                                                     identity; w is frozen, no weight gradient)
//   Products/sums outside the reductions use __f*_rn intrinsics so nvcc does not contract them
//   into FMAs: the element-wise rounding sequence is the CPU's. The reductions sum in a fixed order
//   (per-thread strided partials, then a fixed shuffle tree), so results are run-to-run
//   deterministic, but the summation order differs from the CPU's sequential sum.
//
// Memory traffic per row (bytes): forward reads x twice (2·2d, the second pass is mostly an L1/L2
// hit) and w (2d, L2-resident across rows), writes y (2d) and rstd (4). Backward reads x, dy, w
// twice each (second pass mostly cached) and rstd, writes dx (2d).
// Fast path: 16-byte vector loads/stores (8 bf16) when d % 8 == 0 and every pointer is 16-byte
// aligned; otherwise a scalar, still coalesced, path.
//
// LAUNCH CONTRACT
//   oxt_rms_norm_fwd_bf16(const bf16* x, const bf16* w, bf16* y, float* rstd, int rows, int d, float eps)
//     grid = (rows, 1, 1), block = (256, 1, 1), dynamic smem = 0.
//     x, y: [rows, d] contiguous; w: [d]; rstd: [rows] f32. Block b owns row b: writes y[b, :] and rstd[b].
//   oxt_rms_norm_bwd_bf16(const bf16* x, const bf16* w, const bf16* dy, const float* rstd, bf16* dx, int rows, int d)
//     grid = (rows, 1, 1), block = (256, 1, 1), dynamic smem = 0.
//     x, dy, dx: [rows, d] contiguous; w: [d]; rstd: [rows] from the forward. Block b writes dx[b, :].
//   (Any blockDim.x that is a multiple of 32 and ≤ 1024 works; 256 is the contract.)

#include "common.cuh"

// Threads per block of the launch contract above; the Rust glue reads it from here (kernels/build.rs).
constexpr int kThreads = 256;

namespace {

using namespace oxt;


}  // namespace

extern "C" __global__ void __launch_bounds__(kThreads) oxt_rms_norm_fwd_bf16(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w,
                                                 __nv_bfloat16* __restrict__ y, float* __restrict__ rstd, int rows, int d,
                                                 float eps) {
    const int row = blockIdx.x;
    if (row >= rows) return;  // uniform per block
    const int64_t base = (int64_t)row * d;
    const __nv_bfloat16* xr = x + base;
    __nv_bfloat16* yr = y + base;
    const bool vec = (d % 8 == 0) && aligned16(xr) && aligned16(w) && aligned16(yr);

    float acc = 0.f;
    if (vec) {
        for (int j = threadIdx.x * 8; j < d; j += blockDim.x * 8) {
            float f[8];
            load8(xr + j, f);
#pragma unroll
            for (int k = 0; k < 8; ++k) acc += f[k] * f[k];
        }
    } else {
        for (int j = threadIdx.x; j < d; j += blockDim.x) {
            const float v = __bfloat162float(xr[j]);
            acc += v * v;
        }
    }
    const float ss = block_sum(acc);
    const float ms = __fmul_rn(ss, __frcp_rn((float)d));
    const float r = __frcp_rn(__fsqrt_rn(__fadd_rn(ms, eps)));
    if (threadIdx.x == 0) rstd[row] = r;

    if (vec) {
        for (int j = threadIdx.x * 8; j < d; j += blockDim.x * 8) {
            float f[8], g[8];
            load8(xr + j, f);
            load8(w + j, g);
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                const float n = __bfloat162float(__float2bfloat16_rn(__fmul_rn(f[k], r)));
                f[k] = __fmul_rn(n, g[k]);
            }
            store8(yr + j, f);
        }
    } else {
        for (int j = threadIdx.x; j < d; j += blockDim.x) {
            const float n = __bfloat162float(__float2bfloat16_rn(__fmul_rn(__bfloat162float(xr[j]), r)));
            yr[j] = __float2bfloat16_rn(__fmul_rn(n, __bfloat162float(w[j])));
        }
    }
}

extern "C" __global__ void __launch_bounds__(kThreads) oxt_rms_norm_bwd_bf16(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w,
                                                 const __nv_bfloat16* __restrict__ dy, const float* __restrict__ rstd,
                                                 __nv_bfloat16* __restrict__ dx, int rows, int d) {
    const int row = blockIdx.x;
    if (row >= rows) return;  // uniform per block
    const int64_t base = (int64_t)row * d;
    const __nv_bfloat16* xr = x + base;
    const __nv_bfloat16* dyr = dy + base;
    __nv_bfloat16* dxr = dx + base;
    const float r = rstd[row];
    const bool vec = (d % 8 == 0) && aligned16(xr) && aligned16(w) && aligned16(dyr) && aligned16(dxr);

    float acc = 0.f;
    if (vec) {
        for (int j = threadIdx.x * 8; j < d; j += blockDim.x * 8) {
            float xf[8], wf[8], gf[8];
            load8(xr + j, xf);
            load8(w + j, wf);
            load8(dyr + j, gf);
#pragma unroll
            for (int k = 0; k < 8; ++k) acc += __fmul_rn(gf[k], wf[k]) * __fmul_rn(xf[k], r);
        }
    } else {
        for (int j = threadIdx.x; j < d; j += blockDim.x) {
            const float gn = __fmul_rn(__bfloat162float(dyr[j]), __bfloat162float(w[j]));
            const float n = __fmul_rn(__bfloat162float(xr[j]), r);
            acc += gn * n;
        }
    }
    const float dot = __fmul_rn(block_sum(acc), __frcp_rn((float)d));

    if (vec) {
        for (int j = threadIdx.x * 8; j < d; j += blockDim.x * 8) {
            float xf[8], wf[8], gf[8];
            load8(xr + j, xf);
            load8(w + j, wf);
            load8(dyr + j, gf);
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                const float gn = __fmul_rn(gf[k], wf[k]);
                const float n = __fmul_rn(xf[k], r);
                xf[k] = __fmul_rn(__fsub_rn(gn, __fmul_rn(n, dot)), r);
            }
            store8(dxr + j, xf);
        }
    } else {
        for (int j = threadIdx.x; j < d; j += blockDim.x) {
            const float gn = __fmul_rn(__bfloat162float(dyr[j]), __bfloat162float(w[j]));
            const float n = __fmul_rn(__bfloat162float(xr[j]), r);
            dxr[j] = __float2bfloat16_rn(__fmul_rn(__fsub_rn(gn, __fmul_rn(n, dot)), r));
        }
    }
}
