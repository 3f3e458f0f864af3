// Rotary position embedding, HF "rotate_half" convention, bf16 in/out, f32 math (CPU reference:
// kernels/src/rope.rs `rotate`). One kernel serves both directions.
//
// Math: x, y [b, h, t, d] contiguous, half = d/2, x1 = x[..., :half], x2 = x[..., half:];
//       cos, sin [cos_batch, t, half] bf16 with cos_batch ∈ {1, b} (1 = shared by every batch row).
//       For each pair (bi, hi, ti, i < half), c = cos[cb, ti, i], s' = dir · sin[cb, ti, i]
//       (cb = 0 when cos_batch == 1, else bi):
//         y1 = x1·c − x2·s'          y2 = x2·c + x1·s'
//       dir = +1: forward rotation; dir = −1: the transposed rotation (the backward, applied to dy).
//       Rounding order is the CPU's: s' = s·dir first, each product rounded, then the sum/difference
//       (__f*_rn intrinsics keep nvcc from contracting into FMAs), then bf16 round-to-nearest-even.
//
// Memory traffic: reads x (2 bytes/elem), cos and sin (2 bytes per pair each, re-read per head,
// served from L2), writes y (2 bytes/elem). Purely bandwidth bound.
//
// LAUNCH CONTRACT
//   oxt_rope_bf16(const bf16* x, const bf16* cos, const bf16* sin, bf16* y,
//                 int b, int h, int t, int d, int cos_batch, float dir)
//     grid = (max(1, min(ceil(b·h·t·(d/2) / 256), 2^31 − 1)), 1, 1), block = (256, 1, 1), dynamic smem = 0.
//     One thread per (b, h, t, i < d/2) pair; the kernel grid-strides, so the grid cap 2^31 − 1
//     (the largest grid.x) is always safe and any grid ≥ 1 is correct. Each pair writes
//     y[..., i] and y[..., half + i]; every element of y is written (d must be even).

#include <cuda_bf16.h>
#include <stdint.h>

// Threads per block of the launch contract above; the Rust glue reads it from here (kernels/build.rs).
constexpr int kThreads = 256;

namespace {

// I: index type (uint32_t when the pair count fits, so the divisions are 32-bit).
template <typename I>
__device__ __forceinline__ void rope_body(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ cos,
                                          const __nv_bfloat16* __restrict__ sin, __nv_bfloat16* __restrict__ y, I h, I t,
                                          I d, bool shared_table, float dir, I total) {
    const I half = d / 2;
    const I stride = (I)gridDim.x * (I)blockDim.x;
    for (I p = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; p < total; p += stride) {
        const I i = p % half;
        const I row = p / half;  // (bi, hi, ti) flattened
        const I ti = row % t;
        const I bi = row / (h * t);
        const I tab = ((shared_table ? (I)0 : bi) * t + ti) * half + i;
        const I xo = row * d + i;
        const float c = __bfloat162float(cos[tab]);
        const float s = __fmul_rn(__bfloat162float(sin[tab]), dir);
        const float x1 = __bfloat162float(x[xo]);
        const float x2 = __bfloat162float(x[xo + half]);
        y[xo] = __float2bfloat16_rn(__fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s)));
        y[xo + half] = __float2bfloat16_rn(__fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kThreads) oxt_rope_bf16(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ cos,
                                         const __nv_bfloat16* __restrict__ sin, __nv_bfloat16* __restrict__ y, int b, int h,
                                         int t, int d, int cos_batch, float dir) {
    const int half = d / 2;
    if (b <= 0 || h <= 0 || t <= 0 || half <= 0) return;
    const uint64_t total = (uint64_t)b * (uint64_t)h * (uint64_t)t * (uint64_t)half;
    const bool shared_table = cos_batch == 1;
    // 32-bit indexing when every index (elements of x, grid-stride overshoot included) fits.
    const uint64_t elems = (uint64_t)b * (uint64_t)h * (uint64_t)t * (uint64_t)d;
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    if (elems + stride < 0xffffffffull) {
        rope_body<uint32_t>(x, cos, sin, y, (uint32_t)h, (uint32_t)t, (uint32_t)d, shared_table, dir, (uint32_t)total);
    } else {
        rope_body<uint64_t>(x, cos, sin, y, (uint64_t)h, (uint64_t)t, (uint64_t)d, shared_table, dir, total);
    }
}
