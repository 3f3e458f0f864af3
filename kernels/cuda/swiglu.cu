// SwiGLU activation, bf16 in/out, f32 math (CPU reference: kernels/src/swiglu.rs).
//
// Math, element-wise over n elements (g = gate, u = up, both bf16 widened to f32):
//   s = sigmoid(g) = 1 / (1 + exp(−g))    (exp overflows to +inf for very negative g: s = 1/inf = 0,
//                                          never NaN; expf and IEEE division, no fast-math)
//   Forward:  y  = bf16( (g·s)·u )
//   Backward: dg = bf16( (dy·u) · ((g·(1 − s) + 1) · s) )      = dy·u·s·(1 + g·(1 − s))
//             du = bf16( dy · (g·s) )
//   The grouping and rounding order is the CPU path's (each product/sum rounded to f32; __f*_rn
//   intrinsics stop FMA contraction).
//
// Memory traffic: forward reads g, u, writes y (6 bytes/elem); backward reads g, u, dy, writes
// dg, du (10 bytes/elem). Bandwidth bound; one element per thread per grid-stride step, so each
// warp access is a contiguous 64-byte span.
//
// LAUNCH CONTRACT (both entry points)
//   oxt_swiglu_fwd_bf16(const bf16* g, const bf16* u, bf16* y, long long n)
//   oxt_swiglu_bwd_bf16(const bf16* g, const bf16* u, const bf16* dy, bf16* dg, bf16* du, long long n)
//     grid = (max(1, min(ceil(n / 256), 65535·32)), 1, 1), block = (256, 1, 1), dynamic smem = 0.
//     All buffers hold n contiguous elements. Grid-stride loop: any grid ≥ 1 covers all n elements;
//     every output element i < n is written.

#include <cuda_bf16.h>
#include <stdint.h>

// Threads per block of the launch contract above; the Rust glue reads it from here (kernels/build.rs).
constexpr int kThreads = 256;

namespace {

__device__ __forceinline__ float sigmoid_f32(float g) {
    return __fdiv_rn(1.0f, __fadd_rn(expf(-g), 1.0f));
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kThreads) oxt_swiglu_fwd_bf16(const __nv_bfloat16* __restrict__ g, const __nv_bfloat16* __restrict__ u,
                                               __nv_bfloat16* __restrict__ y, long long n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float gf = __bfloat162float(g[i]);
        const float s = sigmoid_f32(gf);
        y[i] = __float2bfloat16_rn(__fmul_rn(__fmul_rn(gf, s), __bfloat162float(u[i])));
    }
}

extern "C" __global__ void __launch_bounds__(kThreads) oxt_swiglu_bwd_bf16(const __nv_bfloat16* __restrict__ g, const __nv_bfloat16* __restrict__ u,
                                               const __nv_bfloat16* __restrict__ dy, __nv_bfloat16* __restrict__ dg,
                                               __nv_bfloat16* __restrict__ du, long long n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float gf = __bfloat162float(g[i]);
        const float uf = __bfloat162float(u[i]);
        const float d = __bfloat162float(dy[i]);
        const float s = sigmoid_f32(gf);
        const float dsilu = __fmul_rn(__fadd_rn(__fmul_rn(gf, __fsub_rn(1.0f, s)), 1.0f), s);
        dg[i] = __float2bfloat16_rn(__fmul_rn(__fmul_rn(d, uf), dsilu));
        du[i] = __float2bfloat16_rn(__fmul_rn(d, __fmul_rn(gf, s)));
    }
}
