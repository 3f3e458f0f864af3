// Multi-tensor fused AdamW (torch.optim.AdamW + torch.nn.utils.clip_grad_norm_) over all LoRA
// parameters at once, f32 parameters/gradients/moments, no host synchronisation
// (CPU reference: kernels/src/adamw.rs `reference`; trainer/src/optim.rs drives it).
//
// Math (t = step, bc1 = 1 − β1ᵗ, bc2 = 1 − β2ᵗ computed on the host):
//   sumsq = Σ over all tensors Σ g²                                   (oxt_grad_sumsq_f32)
//   norm = √sumsq; c = max_norm/(norm + 1e-6) if max_norm > 0 and that is < 1, else 1
//                                                                      (oxt_clip_scale_f32)
//   per element (oxt_adamw_f32), in the CPU path's operation order, each step rounded to f32:
//     g' = g·c
//     m  = m·β1 + g'·(1 − β1)
//     v  = v·β2 + (g'·g')·(1 − β2)
//     p  = p·(1 − lr·wd) − ((m·(1/bc1)) / (√(v·(1/bc2)) + ε))·lr      (decay applied to the old p)
//   Division by a host scalar is a multiply by its reciprocal, as candle's `Tensor / f64` is; the
//   scalar factors (1 − β1), (1 − β2), (1 − lr·wd), 1/bc1, 1/bc2 are formed in f64 on the host from
//   the f64 settings and rounded to f32 once, as the CPU path rounds them (forming 1 − β2 from an
//   f32 β2 in the kernel was off by 1.3e-5 relative: 0.999f is 0.99900001287…). __f*_rn intrinsics keep nvcc from contracting into FMAs.
//   The Σg² is accumulated with one float atomicAdd per block, so its last bits may vary from run
//   to run (the order of the atomics is not fixed); everything else is deterministic.
//
// Tensor table (device memory, one entry per parameter, written by the host as 5 × i64):
//   struct OxtAdamwTensor { float* p; const float* g; float* m; float* v; long long n; };  // 40 bytes
//
// Memory traffic: sumsq reads g (4 bytes/elem); the update reads p, g, m, v and writes p, m, v
// (28 bytes/elem). Fast path: float4 accesses when all of a tensor's buffers are 16-byte aligned
// (the < 4-element tail and unaligned tensors take a scalar path).
//
// LAUNCH CONTRACT
//   oxt_grad_sumsq_f32(const OxtAdamwTensor* ts, int n_tensors, float* sumsq)
//     grid = (GX, n_tensors, 1), block = (256, 1, 1), dynamic smem = 0,
//     GX = min(1024, max(1, ceil(max_n / 256))), max_n = the largest tensor's n.
//     Block (x, y) grid-strides over tensor y's elements using x. sumsq[0] must be zeroed by the
//     host; each block adds its partial sum with one atomicAdd.
//   oxt_clip_scale_f32(const float* sumsq, float max_norm, float* out)
//     grid = (1, 1, 1), block = (1, 1, 1), dynamic smem = 0. Writes out[0] = norm, out[1] = c.
//   oxt_adamw_f32(const OxtAdamwTensor* ts, int n_tensors, const float* clip, float lr, float beta1,
//                 float one_minus_beta1, float beta2, float one_minus_beta2, float eps, float decay,
//                 float inv_bc1, float inv_bc2)
//     decay = 1 − lr·wd, inv_bcN = 1 / bcN; every scalar rounded to f32 from f64 on the host.
//     grid = (GX, n_tensors, 1), block = (256, 1, 1), dynamic smem = 0 (GX as for sumsq).
//     clip = the out buffer of oxt_clip_scale_f32 (reads clip[1]). Updates p, m, v in place for
//     every element of every tensor; p, m, v must not alias each other.
//   (The grid-stride loops are correct for any GX ≥ 1 and any blockDim.x that is a multiple of 32
//   and ≤ 1024; 256 is the contract.)

#include "common.cuh"

// Threads per block of the launch contract above; the Rust glue reads it from here (kernels/build.rs).
constexpr int kThreads = 256;

struct OxtAdamwTensor {
    float* p;
    const float* g;
    float* m;
    float* v;
    long long n;
};
static_assert(sizeof(OxtAdamwTensor) == 40, "OxtAdamwTensor must be 5 x 8 bytes");

namespace {

using namespace oxt;


struct AdamScalars {
    float c;       // clip factor
    float b1, omb1;  // β1, 1 − β1
    float b2, omb2;  // β2, 1 − β2
    float inv_bc1, inv_bc2;
    float eps;
    float decay;   // 1 − lr·wd
    float lr;
};

__device__ __forceinline__ void adam_elem(const AdamScalars& k, float& p, float g, float& m, float& v) {
    const float gc = __fmul_rn(g, k.c);
    m = __fadd_rn(__fmul_rn(m, k.b1), __fmul_rn(gc, k.omb1));
    v = __fadd_rn(__fmul_rn(v, k.b2), __fmul_rn(__fmul_rn(gc, gc), k.omb2));
    const float denom = __fadd_rn(__fsqrt_rn(__fmul_rn(v, k.inv_bc2)), k.eps);
    const float update = __fdiv_rn(__fmul_rn(m, k.inv_bc1), denom);
    p = __fsub_rn(__fmul_rn(p, k.decay), __fmul_rn(update, k.lr));
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kThreads) oxt_grad_sumsq_f32(const OxtAdamwTensor* __restrict__ ts, int n_tensors, float* __restrict__ sumsq) {
    const int ti = blockIdx.y;
    if (ti >= n_tensors) return;  // uniform per block
    const float* __restrict__ g = ts[ti].g;
    const int64_t n = ts[ti].n;
    const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    float acc = 0.f;
    int64_t tail = 0;
    if (aligned16(g)) {
        const int64_t n4 = n / 4;
        const float4* g4 = reinterpret_cast<const float4*>(g);
        for (int64_t i = tid; i < n4; i += stride) {
            const float4 q = g4[i];
            acc += q.x * q.x;
            acc += q.y * q.y;
            acc += q.z * q.z;
            acc += q.w * q.w;
        }
        tail = n4 * 4;
    }
    for (int64_t i = tail + tid; i < n; i += stride) acc += g[i] * g[i];
    const float total = block_sum(acc);
    if (threadIdx.x == 0 && total != 0.f) atomicAdd(sumsq, total);
}

extern "C" __global__ void __launch_bounds__(1) oxt_clip_scale_f32(const float* __restrict__ sumsq, float max_norm, float* __restrict__ out) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    const float norm = __fsqrt_rn(sumsq[0]);
    const float c = __fdiv_rn(max_norm, __fadd_rn(norm, 1e-6f));
    out[0] = norm;
    out[1] = (max_norm > 0.f && c < 1.f) ? c : 1.f;
}

extern "C" __global__ void __launch_bounds__(kThreads) oxt_adamw_f32(const OxtAdamwTensor* __restrict__ ts, int n_tensors, const float* __restrict__ clip,
                                         float lr, float beta1, float one_minus_beta1, float beta2,
                                         float one_minus_beta2, float eps, float decay, float inv_bc1, float inv_bc2) {
    const int ti = blockIdx.y;
    if (ti >= n_tensors) return;  // uniform per block
    const OxtAdamwTensor t = ts[ti];
    AdamScalars k;
    k.c = clip[1];
    k.b1 = beta1;
    k.omb1 = one_minus_beta1;
    k.b2 = beta2;
    k.omb2 = one_minus_beta2;
    k.inv_bc1 = inv_bc1;
    k.inv_bc2 = inv_bc2;
    k.eps = eps;
    k.decay = decay;
    k.lr = lr;

    const int64_t n = t.n;
    const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t tail = 0;
    if (aligned16(t.p) && aligned16(t.g) && aligned16(t.m) && aligned16(t.v)) {
        const int64_t n4 = n / 4;
        float4* p4 = reinterpret_cast<float4*>(t.p);
        const float4* g4 = reinterpret_cast<const float4*>(t.g);
        float4* m4 = reinterpret_cast<float4*>(t.m);
        float4* v4 = reinterpret_cast<float4*>(t.v);
        for (int64_t i = tid; i < n4; i += stride) {
            float4 p = p4[i], m = m4[i], v = v4[i];
            const float4 g = g4[i];
            adam_elem(k, p.x, g.x, m.x, v.x);
            adam_elem(k, p.y, g.y, m.y, v.y);
            adam_elem(k, p.z, g.z, m.z, v.z);
            adam_elem(k, p.w, g.w, m.w, v.w);
            p4[i] = p;
            m4[i] = m;
            v4[i] = v;
        }
        tail = n4 * 4;
    }
    for (int64_t i = tail + tid; i < n; i += stride) {
        float p = t.p[i], m = t.m[i], v = t.v[i];
        adam_elem(k, p, t.g[i], m, v);
        t.p[i] = p;
        t.m[i] = m;
        t.v[i] = v;
    }
}
