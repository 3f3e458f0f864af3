// Host emulation of CUDA for oxtune's own kernels: the device-side shim.
//
// `kernels/cuda/*.cu` are compiled unchanged as C++ by the system compiler with this header
// force-included (`-include oxemu.h`) and `kernels/emu/include` on the include path (stand-ins for
// <cuda_bf16.h>, <cuda_fp16.h>, <mma.h>). The build step (kernels/emu/prepare.rs) rewrites the
// `__shared__` declarations into arena lookups (one instance per block) and registers every
// `extern "C" __global__` entry point with the runtime (runtime.cpp), which runs each CUDA thread
// as a fiber: barriers, warp collectives and shuffles behave as on a GPU.
//
// Everything here is the CUDA device API the kernels use, nothing more; a kernel that needs a
// new intrinsic fails to compile under emulation until it is added here (with its exact CUDA
// semantics). Rounding: the `_rn` intrinsics are plain IEEE operations; the build passes
// -ffp-contract=off so they are never fused, exactly as nvcc treats them.
#pragma once

#define OXTUNE_HOST_EMULATION 1

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

// ---------------------------------------------------------------- qualifiers

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __restrict__ __restrict

// ---------------------------------------------------------------- vector types

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};
struct alignas(16) uint4 {
    unsigned int x, y, z, w;
};
struct alignas(8) uint2 {
    unsigned int x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) float2 {
    float x, y;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline float2 make_float2(float x, float y) { return float2{x, y}; }

// ---------------------------------------------------------------- runtime interface (runtime.cpp)

namespace oxemu {

// A call site, for messages and for matching barriers: every thread of a block must wait at the
// same __syncthreads, every lane of a warp at the same collective.
struct Site {
    const char* file;
    int line;
};
#define OXEMU_SITE (::oxemu::Site{__FILE__, __LINE__})

const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();

// Block barrier; returns the OR / AND / count of `pred` over the block (ignored by plain syncs).
enum class BarrierOp { Plain, Or, And, Count };
int barrier(Site site, BarrierOp op, int pred);

// A warp collective: every lane in `mask` arrives with `arg`; the last to arrive runs
// `op(args, mask, ctx)` once for the whole warp (args[lane] = each lane's arg), then all go on.
// The lanes' shared-memory accesses before it are ordered before it, those after it after it.
typedef void (*CollectiveOp)(void* const* args, unsigned mask, const void* ctx);
void warp_collective(Site site, const char* what, unsigned mask, void* arg, CollectiveOp op, const void* ctx);

// Static `__shared__` storage: one instance per (declaration, type) per block. Dynamic
// (`extern __shared__`) storage: the launch's dynamic shared-memory bytes.
void* shared_static(const void* key, size_t bytes, size_t align, const char* name);
void* shared_dynamic(size_t align);

// Atomics on global or shared memory (checked and recorded like other accesses).
float atomic_add(float* p, float v);
int atomic_add(int* p, int v);
unsigned atomic_add(unsigned* p, unsigned v);
int atomic_min(int* p, int v);
unsigned atomic_min(unsigned* p, unsigned v);
int atomic_max(int* p, int v);
unsigned atomic_max(unsigned* p, unsigned v);

// cp.async: a copy is queued at issue and lands when its group completes (wait_group).
void cp_async(void* dst_shared, const void* src_global, int bytes);
void cp_async_commit();
void cp_async_wait(int newest_pending);

// The element order of a wmma fragment of `kind` in this launch: slot lane*8+i holds element
// layout[lane*8+i] = row*16+col of the 16×16 tile (a seeded random permutation per launch).
const unsigned char* fragment_layout(int kind);

// Fails the launch with a message naming the kernel, block and thread.
[[noreturn]] void fail(Site site, const char* what);

}  // namespace oxemu

// ---------------------------------------------------------------- thread identity

#define threadIdx (::oxemu::thread_idx())
#define blockIdx (::oxemu::block_idx())
#define blockDim (::oxemu::block_dim())
#define gridDim (::oxemu::grid_dim())
static constexpr int warpSize = 32;

// ---------------------------------------------------------------- synchronisation

#define __syncthreads() ((void)::oxemu::barrier(OXEMU_SITE, ::oxemu::BarrierOp::Plain, 0))
#define __syncthreads_or(p) (::oxemu::barrier(OXEMU_SITE, ::oxemu::BarrierOp::Or, (p) ? 1 : 0))
#define __syncthreads_and(p) (::oxemu::barrier(OXEMU_SITE, ::oxemu::BarrierOp::And, (p) ? 1 : 0))
#define __syncthreads_count(p) (::oxemu::barrier(OXEMU_SITE, ::oxemu::BarrierOp::Count, (p) ? 1 : 0))
#define __syncwarp(...) (::oxemu::syncwarp(OXEMU_SITE __VA_OPT__(, ) __VA_ARGS__))

namespace oxemu {

inline void syncwarp(Site site, unsigned mask = 0xffffffffu) {
    warp_collective(site, "__syncwarp", mask, nullptr, [](void* const*, unsigned, const void*) {}, nullptr);
}

inline unsigned lane_id() { return (thread_idx().x + thread_idx().y * block_dim().x +
                                    thread_idx().z * block_dim().x * block_dim().y) & 31u; }

// Shuffles: each lane publishes its value and the lane it reads; the collective hands out values.
enum class Shfl { Idx, Xor, Down, Up };
struct ShflSlot {
    uint64_t value;
    int src;  // lane read, or -1: keep own value (out of the segment for up/down)
    uint64_t result;
};
template <typename T>
inline T shuffle(Site site, const char* what, unsigned mask, T v, Shfl kind, int arg, int width) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a 1..8-byte value");
    if (width <= 0 || width > 32 || (width & (width - 1)) != 0) fail(site, "shuffle width must be a power of two <= 32");
    const int lane = (int)lane_id();
    const int seg = lane & ~(width - 1);
    int src = lane;
    switch (kind) {
        case Shfl::Idx: src = seg + (arg & (width - 1)); break;
        case Shfl::Xor: src = lane ^ arg; if (src >= seg + width || src < seg) src = lane; break;
        case Shfl::Down: src = lane + arg; if (src >= seg + width) src = -1; break;
        case Shfl::Up: src = lane - arg; if (src < seg) src = -1; break;
    }
    ShflSlot slot{0, src, 0};
    memcpy(&slot.value, &v, sizeof(T));
    warp_collective(site, what, mask, &slot, [](void* const* args, unsigned m, const void* ctx) {
        for (int l = 0; l < 32; ++l) {
            if (!(m >> l & 1u)) continue;
            ShflSlot* s = static_cast<ShflSlot*>(args[l]);
            if (s->src < 0) {
                s->result = s->value;
            } else if (!(m >> s->src & 1u)) {
                fail(*static_cast<const Site*>(ctx), "shuffle reads a lane that is not in its mask");
            } else {
                s->result = static_cast<ShflSlot*>(args[s->src])->value;
            }
        }
    }, &site);
    T out;
    memcpy(&out, &slot.result, sizeof(T));
    return out;
}

enum class Reduce { Min, Max, Add };
template <typename T>
inline T warp_reduce(Site site, const char* what, unsigned mask, T v, Reduce op) {
    static_assert(std::is_integral<T>::value && sizeof(T) == 4, "__reduce_*_sync takes int or unsigned");
    struct Slot {
        T v;
        Reduce op;
        T result;
    } slot{v, op, v};
    warp_collective(site, what, mask, &slot, [](void* const* args, unsigned m, const void*) {
        bool first = true;
        T acc{};
        for (int l = 0; l < 32; ++l) {
            if (!(m >> l & 1u)) continue;
            const Slot* s = static_cast<const Slot*>(args[l]);
            if (first) {
                acc = s->v;
                first = false;
            } else if (s->op == Reduce::Min) {
                acc = s->v < acc ? s->v : acc;
            } else if (s->op == Reduce::Max) {
                acc = s->v > acc ? s->v : acc;
            } else {
                acc = (T)((uint32_t)acc + (uint32_t)s->v);
            }
        }
        for (int l = 0; l < 32; ++l)
            if (m >> l & 1u) static_cast<Slot*>(args[l])->result = acc;
    }, nullptr);
    return slot.result;
}

}  // namespace oxemu

namespace oxemu {
template <typename T>
inline T shfl_idx(Site s, unsigned mask, T v, int src, int width = 32) { return shuffle(s, "__shfl_sync", mask, v, Shfl::Idx, src, width); }
template <typename T>
inline T shfl_xor(Site s, unsigned mask, T v, int lm, int width = 32) { return shuffle(s, "__shfl_xor_sync", mask, v, Shfl::Xor, lm, width); }
template <typename T>
inline T shfl_down(Site s, unsigned mask, T v, unsigned d, int width = 32) { return shuffle(s, "__shfl_down_sync", mask, v, Shfl::Down, (int)d, width); }
template <typename T>
inline T shfl_up(Site s, unsigned mask, T v, unsigned d, int width = 32) { return shuffle(s, "__shfl_up_sync", mask, v, Shfl::Up, (int)d, width); }
}  // namespace oxemu
#define __shfl_sync(...) (::oxemu::shfl_idx(OXEMU_SITE, __VA_ARGS__))
#define __shfl_xor_sync(...) (::oxemu::shfl_xor(OXEMU_SITE, __VA_ARGS__))
#define __shfl_down_sync(...) (::oxemu::shfl_down(OXEMU_SITE, __VA_ARGS__))
#define __shfl_up_sync(...) (::oxemu::shfl_up(OXEMU_SITE, __VA_ARGS__))
#define __reduce_min_sync(mask, v) (::oxemu::warp_reduce(OXEMU_SITE, "__reduce_min_sync", (mask), (v), ::oxemu::Reduce::Min))
#define __reduce_max_sync(mask, v) (::oxemu::warp_reduce(OXEMU_SITE, "__reduce_max_sync", (mask), (v), ::oxemu::Reduce::Max))
#define __reduce_add_sync(mask, v) (::oxemu::warp_reduce(OXEMU_SITE, "__reduce_add_sync", (mask), (v), ::oxemu::Reduce::Add))

// ---------------------------------------------------------------- atomics and loads

inline float atomicAdd(float* p, float v) { return ::oxemu::atomic_add(p, v); }
inline int atomicAdd(int* p, int v) { return ::oxemu::atomic_add(p, v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return ::oxemu::atomic_add(p, v); }
inline int atomicMin(int* p, int v) { return ::oxemu::atomic_min(p, v); }
inline unsigned atomicMin(unsigned* p, unsigned v) { return ::oxemu::atomic_min(p, v); }
inline int atomicMax(int* p, int v) { return ::oxemu::atomic_max(p, v); }
inline unsigned atomicMax(unsigned* p, unsigned v) { return ::oxemu::atomic_max(p, v); }

template <typename T>
inline T __ldg(const T* p) { return *p; }

inline size_t __cvta_generic_to_shared(const void* p) { return reinterpret_cast<size_t>(p); }
inline size_t __cvta_generic_to_global(const void* p) { return reinterpret_cast<size_t>(p); }

// ---------------------------------------------------------------- integer min / max (CUDA's overloads)

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }

// ---------------------------------------------------------------- float intrinsics

inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
// The fast intrinsics are less accurate on a GPU than these; tolerances stay the GPU's.
inline float __expf(float a) { return expf(a); }
inline float __logf(float a) { return logf(a); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float a) { return 1.0f / sqrtf(a); }

// ---------------------------------------------------------------- bf16 and f16

// Round to nearest even, as cvt.rn.bf16.f32 does; NaN becomes the canonical 0x7fff.
inline unsigned short oxemu_f32_to_bf16_bits(float f) {
    const unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

struct __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : __x(oxemu_f32_to_bf16_bits(f)) {}
    operator float() const { return __uint_as_float((unsigned)__x << 16); }
};
struct alignas(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
typedef __nv_bfloat16 nv_bfloat16;

inline float __bfloat162float(__nv_bfloat16 h) { return __uint_as_float((unsigned)h.__x << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { __nv_bfloat16 h; h.__x = oxemu_f32_to_bf16_bits(f); return h; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { __nv_bfloat16 h; h.__x = u; return h; }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) { return __nv_bfloat162{__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)}; }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return float2{__bfloat162float(h.x), __bfloat162float(h.y)}; }

struct __half {
    unsigned short __x;
};
// GCC's _Float16 conversions round to nearest even with subnormals and overflow to inf, as
// cvt.rn.f16.f32 does.
inline __half __float2half_rn(float f) { _Float16 h = (_Float16)f; __half r; memcpy(&r.__x, &h, 2); return r; }
inline float __half2float(__half h) { _Float16 v; memcpy(&v, &h.__x, 2); return (float)v; }

// ---------------------------------------------------------------- __shared__

// The build step rewrites `__shared__ T name[dims];` into
// `auto& name = OXEMU_SHARED(T[dims], id);` and `extern __shared__ T name[];` into
// `T* const name = OXEMU_SHARED_DYNAMIC(T);`.
namespace oxemu {
template <typename T, int Id>
inline T& shared_var(const char* name) {
    static const char key = 0;  // one address per (declaration, type)
    return *static_cast<T*>(shared_static(&key, sizeof(T), alignof(T), name));
}
}  // namespace oxemu
#define OXEMU_SHARED(T, id, name) (::oxemu::shared_var<T, id>(name))
#define OXEMU_SHARED_DYNAMIC(T) (static_cast<T*>(::oxemu::shared_dynamic(alignof(T) < 16 ? 16 : alignof(T))))

#include "oxemu_wmma.h"
