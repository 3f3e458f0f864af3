// Device helpers shared by the kernels in this folder (header only; each .cu includes it).
#pragma once

#include <cuda_bf16.h>
#include <stdint.h>

namespace oxt {

// bf16 halves of a packed 32-bit word, widened exactly to f32.
__device__ __forceinline__ float bf_lo(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf_hi(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }

// Two f32 values rounded to nearest-even bf16, packed low first.
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    return (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(lo)) |
           ((uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(hi)) << 16);
}

// Eight bf16 at a 16-byte aligned address, as f32 (and back).
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float f[8]) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    f[0] = bf_lo(u.x); f[1] = bf_hi(u.x);
    f[2] = bf_lo(u.y); f[3] = bf_hi(u.y);
    f[4] = bf_lo(u.z); f[5] = bf_hi(u.z);
    f[6] = bf_lo(u.w); f[7] = bf_hi(u.w);
}

__device__ __forceinline__ void store8(__nv_bfloat16* p, const float f[8]) {
    uint4 u;
    u.x = pack2(f[0], f[1]);
    u.y = pack2(f[2], f[3]);
    u.z = pack2(f[4], f[5]);
    u.w = pack2(f[6], f[7]);
    *reinterpret_cast<uint4*>(p) = u;
}

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Sum over the block, result broadcast to every thread. Fixed reduction order (deterministic).
// Every thread of the block must call it; blockDim.x must be a multiple of 32 and ≤ 1024.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[32];
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    const unsigned n_warps = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float t = lane < n_warps ? partial[lane] : 0.f;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
        if (lane == 0) partial[0] = t;
    }
    __syncthreads();
    const float total = partial[0];
    __syncthreads();  // partial[] may be reused by a later call
    return total;
}

}  // namespace oxt
