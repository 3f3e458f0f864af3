// Dropout keep-mask for the LoRA input, from a counter-based hash (no RNG state).
//
// Math: for element i, z = splitmix64(seed ^ 0x9E3779B97F4A7C15 * (i + 1)); kept when the top 32 bits
// of z are below `threshold` (= keep * 2^32); out[i] = kept ? scale : 0 with scale = 1 / keep.
// Identical to kernels/src/lora_linear.rs `hash`, so CPU and GPU draw the same mask.
// Memory traffic: writes 4 bytes per element, reads nothing.
//
// LAUNCH CONTRACT
//   oxt_dropout_mask_f32(float* out, long long n, long long seed, long long threshold, float scale)
//     grid = (max(1, min(ceil(n / 256), 65535 * 32))), block = (256), dynamic smem = 0; grid-stride loop.
#include <stdint.h>

// Threads per block of the launch contract above; the Rust glue reads it from here (kernels/build.rs).
constexpr int kThreads = 256;

__device__ __forceinline__ uint32_t oxt_hash(uint64_t seed, uint64_t i) {
    uint64_t z = seed ^ (0x9E3779B97F4A7C15ull * (i + 1ull));
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (uint32_t)((z ^ (z >> 31)) >> 32);
}

extern "C" __global__ void __launch_bounds__(kThreads) oxt_dropout_mask_f32(float* out, long long n, long long seed, long long threshold,
                                                float scale) {
    const uint64_t th = (uint64_t)threshold;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        out[i] = ((uint64_t)oxt_hash((uint64_t)seed, (uint64_t)i) < th) ? scale : 0.0f;
    }
}
