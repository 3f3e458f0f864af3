// NF4 (bitsandbytes 4-bit NormalFloat) dequantisation of a contiguous element range of a packed
// weight into bf16; the host then multiplies that dense block with cuBLAS
// (CPU reference: kernels/src/nf4_linear.rs, `Nf4Packed::dequant_elems` / `absmax_range`).
//
// Math, for i in [0, n_elems), e = first_elem + i (index into the row-major W):
//   byte = packed[e / 2]; nibble = (e even) ? byte >> 4 : byte & 15      (HIGH nibble first)
//   blk  = e / blocksize
//   a    = absmax[blk]                                         when absmax != nullptr, else
//   a    = (dq_map[absmax_q[blk]] · nested[blk / nested_blocksize]) + offset   (double quantisation;
//          f32, the product rounded before the sum: __f*_rn stops FMA contraction, as on the CPU)
//   val  = code[nibble] · a                                    (f32)
//   val  = round(val) to the storage dtype: store_dtype 0 = f32 (none), 1 = bf16 (RNE),
//          2 = f16 (RNE, subnormals/overflow as IEEE), then back to f32
//   out[i] = bf16(val)                                         (RNE; exact for store_dtype 1)
//   This is bit-identical to the CPU path's dequantize_rows(.., BF16) (f32 → storage dtype → f32 →
//   bf16, every conversion round-to-nearest-even). An unknown store_dtype is treated as f32.
//
// Memory traffic: reads n/2 bytes of packed codes, the absmax entries of the touched blocks (4 bytes
// per `blocksize` elements, or 1 byte + the nested f32 per block with double quantisation; cached),
// code[16] and dq_map[256] once per block into shared memory; writes 2 bytes per element.
//
// LAUNCH CONTRACT
//   oxt_nf4_dequant_bf16(const unsigned char* packed, const float* absmax, const unsigned char* absmax_q,
//                        const float* nested, const float* dq_map, float offset, int nested_blocksize,
//                        const float* code, int blocksize, long long first_elem, long long n_elems,
//                        int store_dtype, bf16* out)
//     grid = (max(1, min(ceil(n_elems / 256), 65535·32)), 1, 1), block = (256, 1, 1), dynamic smem = 0
//     (1088 bytes of static shared memory: code[16] + dq_map[256]).
//     packed: the whole weight's packed bytes (byte 0 = elements 0 and 1); absmax: f32 [n_blocks] or
//     null — when null, absmax_q (u8 [n_blocks]), nested (f32 [ceil(n_blocks / nested_blocksize)]),
//     dq_map (f32 [256]) and offset are used instead (otherwise those may be null/ignored);
//     code: f32 [16]; out: bf16 [n_elems]. Grid-stride loop: any grid ≥ 1 writes every out[i].
//     blockDim.x must be ≥ 16 (it loads the tables); 256 is the contract.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

// Threads per block of the launch contract above; the Rust glue reads it from here (kernels/build.rs).
constexpr int kThreads = 256;

namespace {

// I: index type (uint32_t when every element index fits, so the divisions are 32-bit).
template <typename I>
__device__ __forceinline__ void nf4_body(const unsigned char* __restrict__ packed, const float* __restrict__ absmax,
                                         const unsigned char* __restrict__ absmax_q, const float* __restrict__ nested,
                                         const float* s_map, float offset, I nested_blocksize, const float* s_code,
                                         I blocksize, I first_elem, I n_elems, int store_dtype,
                                         __nv_bfloat16* __restrict__ out) {
    const I stride = (I)gridDim.x * (I)blockDim.x;
    for (I i = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; i < n_elems; i += stride) {
        const I e = first_elem + i;
        const unsigned int byte = packed[e >> 1];
        const unsigned int nib = (e & 1) ? (byte & 15u) : (byte >> 4);
        const I blk = e / blocksize;
        float a;
        if (absmax != nullptr) {
            a = absmax[blk];
        } else {
            a = __fadd_rn(__fmul_rn(s_map[absmax_q[blk]], nested[blk / nested_blocksize]), offset);
        }
        float val = __fmul_rn(s_code[nib], a);
        if (store_dtype == 1) {
            val = __bfloat162float(__float2bfloat16_rn(val));
        } else if (store_dtype == 2) {
            val = __half2float(__float2half_rn(val));
        }
        out[i] = __float2bfloat16_rn(val);
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kThreads) oxt_nf4_dequant_bf16(const unsigned char* __restrict__ packed, const float* __restrict__ absmax,
                                                const unsigned char* __restrict__ absmax_q, const float* __restrict__ nested,
                                                const float* __restrict__ dq_map, float offset, int nested_blocksize,
                                                const float* __restrict__ code, int blocksize, long long first_elem,
                                                long long n_elems, int store_dtype, __nv_bfloat16* __restrict__ out) {
    __shared__ float s_code[16];
    __shared__ float s_map[256];
    const bool dq = absmax == nullptr;
    for (unsigned j = threadIdx.x; j < 16u; j += blockDim.x) s_code[j] = code[j];
    if (dq) {
        for (unsigned j = threadIdx.x; j < 256u; j += blockDim.x) s_map[j] = dq_map[j];
    }
    __syncthreads();
    if (n_elems <= 0 || blocksize <= 0 || (dq && nested_blocksize <= 0)) return;

    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    if ((uint64_t)first_elem + (uint64_t)n_elems + stride < 0xffffffffull) {
        nf4_body<uint32_t>(packed, absmax, absmax_q, nested, s_map, offset, (uint32_t)nested_blocksize, s_code,
                           (uint32_t)blocksize, (uint32_t)first_elem, (uint32_t)n_elems, store_dtype, out);
    } else {
        nf4_body<uint64_t>(packed, absmax, absmax_q, nested, s_map, offset, (uint64_t)nested_blocksize, s_code,
                           (uint64_t)blocksize, (uint64_t)first_elem, (uint64_t)n_elems, store_dtype, out);
    }
}
