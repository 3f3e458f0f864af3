// Probe kernels for the host emulation's own tests (kernels/tests/it/emulator.rs): each one shows
// one CUDA semantic (shuffles, barrier reductions, atomics, bf16/f16 rounding, wmma) or commits
// one error the emulation must report (races, divergence, bounds, early cp.async reads). They are
// compiled for the host only, never for a GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <stdint.h>

using namespace nvcuda;

// out[t*5 + k]: idx(3), xor(1), down(2), up(2), reduce_min, with segments of `width` lanes.
extern "C" __global__ void probe_shuffle(int* out, int width) {
    const int v = (int)threadIdx.x * 10;
    int* o = out + threadIdx.x * 5;
    o[0] = __shfl_sync(0xffffffffu, v, 3, width);
    o[1] = __shfl_xor_sync(0xffffffffu, v, 1, width);
    o[2] = __shfl_down_sync(0xffffffffu, v, 2, width);
    o[3] = __shfl_up_sync(0xffffffffu, v, 2, width);
    o[4] = __reduce_min_sync(0xffffffffu, 1000 - (int)threadIdx.x);
}

extern "C" __global__ void probe_barrier_reductions(int* out) {
    const int c = __syncthreads_count(threadIdx.x % 3 == 0);
    const int o = __syncthreads_or(threadIdx.x == 5);
    const int a = __syncthreads_and(threadIdx.x != 7);
    if (threadIdx.x == 0) {
        out[0] = c;
        out[1] = o;
        out[2] = a;
    }
}

extern "C" __global__ void probe_atomics(float* f, int* i, unsigned* u) {
    atomicAdd(f, 0.5f);
    atomicAdd(i, 1);
    atomicMax(i + 1, (int)(blockIdx.x * blockDim.x + threadIdx.x));
    atomicMin(u, 1000u + blockIdx.x);
    __shared__ int block_total;
    if (threadIdx.x == 0) block_total = 0;
    __syncthreads();
    atomicAdd(&block_total, 2);
    __syncthreads();
    if (threadIdx.x == 0) atomicAdd(i + 2, block_total);
}

extern "C" __global__ void probe_round(const float* in, unsigned short* bf, unsigned short* hf, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        bf[i] = __bfloat16_as_ushort(__float2bfloat16_rn(in[i]));
        const __half h = __float2half_rn(in[i]);
        hf[i] = *reinterpret_cast<const unsigned short*>(&h);
    }
}

// Lane l's accumulator element i holds tile element out[l*8 + i] (a tile of its own indices).
extern "C" __global__ void probe_wmma_layout(float* out) {
    __shared__ float tile[256];
    for (int i = threadIdx.x; i < 256; i += 32) tile[i] = (float)i;
    __syncwarp();
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
    wmma::load_matrix_sync(c, tile, 16, wmma::mem_row_major);
    for (int i = 0; i < c.num_elements; ++i) out[threadIdx.x * 8 + i] = c.x[i];
}

// c = a·b (+ the 16×16 f32 c in), a row-major, b col-major (as b's transpose is stored).
extern "C" __global__ void probe_mma(const __nv_bfloat16* a, const __nv_bfloat16* bt, float* c) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
    wmma::load_matrix_sync(fa, a, 16);
    wmma::load_matrix_sync(fb, bt, 16);
    wmma::load_matrix_sync(fc, c, 16, wmma::mem_row_major);
    wmma::mma_sync(fc, fa, fb, fc);
    wmma::store_matrix_sync(c, fc, 16, wmma::mem_row_major);
}

// Threads read what another warp wrote, with (sync = 1) or without a barrier between.
extern "C" __global__ void probe_block_exchange(float* out, int sync) {
    __shared__ float s[64];
    s[threadIdx.x] = (float)threadIdx.x;
    if (sync) __syncthreads();
    out[threadIdx.x] = s[(threadIdx.x + 32) % 64];
}

// Lanes read their neighbour's write, with (sync = 1) or without __syncwarp between.
extern "C" __global__ void probe_warp_exchange(float* out, int sync) {
    __shared__ float s[32];
    s[threadIdx.x] = (float)threadIdx.x;
    if (sync) __syncwarp();
    out[threadIdx.x] = s[(threadIdx.x + 1) % 32];
}

extern "C" __global__ void probe_divergent_barrier(int* out) {
    if (threadIdx.x < 16) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1;
}

extern "C" __global__ void probe_exit_before_barrier(int* out) {
    if (threadIdx.x == 0) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}

extern "C" __global__ void probe_shared_bounds(float* out, int n) {
    __shared__ float a[8];
    __shared__ float b[8];
    if ((int)threadIdx.x < n) a[threadIdx.x] = 1.f;
    __syncthreads();
    out[0] = a[0] + b[0] * 0.f;
}

extern "C" __global__ void probe_global_read(const float* in, float* out, int shift) {
    out[threadIdx.x] = in[(int)threadIdx.x + shift];
}

// Copies in[0..32) through shared memory with cp.async; waits before reading when `wait` is set.
extern "C" __global__ void probe_cp_async(const float* in, float* out, int wait) {
    __shared__ float s[32];
    ::oxemu::cp_async(&s[threadIdx.x], &in[threadIdx.x], 4);
    ::oxemu::cp_async_commit();
    if (wait) ::oxemu::cp_async_wait(0);
    out[threadIdx.x] = s[threadIdx.x];
}

extern "C" __global__ void __launch_bounds__(64) probe_bounded(int* out) { out[threadIdx.x] = 1; }

extern "C" __global__ void probe_big_static(float* out) {
    __shared__ float big[13000];  // 52000 bytes: more than the 48 KiB of static shared memory
    big[threadIdx.x] = 1.f;
    out[0] = big[0];
}

extern "C" __global__ void probe_takes(const float* p, int i, long long l, float f) {
    (void)p;
    (void)i;
    (void)l;
    (void)f;
}
