// nvcuda::wmma for the host emulation: m16n16k16 with bf16 A/B and f32 accumulators, the shapes
// and types our kernels use. load / store / mma are warp collectives (all 32 lanes, ordered at
// entry and exit) run once per warp by the runtime.
//
// The element-to-lane layout of a fragment is unspecified by CUDA, so here it is a seeded random
// permutation per fragment type per launch (runtime.cpp): kernel code that touches `x[i]` and
// assumes which element it holds gives wrong results. Code that discovers the layout at run time
// (as attention.cu does: load a tile of known values into a fragment) works.
#pragma once

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

namespace detail {

// Fragment kinds, each with its own layout: A row/col, B row/col, accumulator.
template <typename Use, typename Layout>
struct Kind;
template <>
struct Kind<matrix_a, row_major> {
    static constexpr int value = 0;
};
template <>
struct Kind<matrix_a, col_major> {
    static constexpr int value = 1;
};
template <>
struct Kind<matrix_b, row_major> {
    static constexpr int value = 2;
};
template <>
struct Kind<matrix_b, col_major> {
    static constexpr int value = 3;
};
template <>
struct Kind<accumulator, void> {
    static constexpr int value = 4;
};

constexpr int kElems = 8;  // 256 elements over 32 lanes

// Element (r, c) of a 16×16 tile stored at p with leading dimension ldm.
template <typename T>
inline T& at(T* p, unsigned ldm, int r, int c, bool col_major) {
    return col_major ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c];
}

struct LoadArg {
    void* frag;
    const void* ptr;
    unsigned ldm;
    bool col_major;
};

inline void check_pointer(const void* p, unsigned ldm, size_t elem, ::oxemu::Site site) {
    if ((reinterpret_cast<uintptr_t>(p) & 31u) != 0)
        ::oxemu::fail(site, "wmma load/store pointer is not 256-bit (32-byte) aligned");
    if ((ldm * elem) % 16 != 0) ::oxemu::fail(site, "wmma ldm is not a multiple of 16 bytes");
}

// Every lane of a warp collective must pass the same pointer and ldm.
inline const LoadArg* uniform(void* const* args, const ::oxemu::Site* site) {
    const LoadArg* a0 = static_cast<const LoadArg*>(args[0]);
    for (int l = 1; l < 32; ++l) {
        const LoadArg* a = static_cast<const LoadArg*>(args[l]);
        if (a->ptr != a0->ptr || a->ldm != a0->ldm || a->col_major != a0->col_major)
            ::oxemu::fail(*site, "wmma lanes of one warp passed different pointers, ldm or layouts");
    }
    return a0;
}

}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "the emulation covers m16n16k16");
    static_assert(std::is_same<Use, accumulator>::value ? std::is_same<T, float>::value
                                                        : std::is_same<T, __nv_bfloat16>::value,
                  "the emulation covers bf16 A/B and f32 accumulator fragments");
    static constexpr int num_elements = detail::kElems;
    typedef T element_type;
    T x[detail::kElems];
};

template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, const T& v) {
    for (int i = 0; i < detail::kElems; ++i) f.x[i] = v;
}
template <typename Use, int M, int N, int K, typename Layout>
inline void fill_fragment(fragment<Use, M, N, K, __nv_bfloat16, Layout>& f, float v) {
    for (int i = 0; i < detail::kElems; ++i) f.x[i] = __float2bfloat16_rn(v);
}

namespace detail {

template <typename Frag, typename T, bool Store>
inline void transfer(::oxemu::Site site, const char* what, Frag& f, T* p, unsigned ldm, bool col_major, int kind) {
    check_pointer(p, ldm, sizeof(T), site);
    struct Ctx {
        ::oxemu::Site site;
        int kind;
    } ctx{site, kind};
    LoadArg arg{const_cast<void*>(static_cast<const void*>(&f)), p, ldm, col_major};
    ::oxemu::warp_collective(site, what, 0xffffffffu, &arg, [](void* const* args, unsigned, const void* c) {
        const Ctx* cx = static_cast<const Ctx*>(c);
        const LoadArg* a0 = uniform(args, &cx->site);
        const unsigned char* layout = ::oxemu::fragment_layout(cx->kind);
        T* mem = static_cast<T*>(const_cast<void*>(a0->ptr));
        for (int l = 0; l < 32; ++l) {
            Frag* fl = static_cast<Frag*>(static_cast<const LoadArg*>(args[l])->frag);
            for (int i = 0; i < kElems; ++i) {
                const int e = layout[l * kElems + i];
                T& m = at(mem, a0->ldm, e >> 4, e & 15, a0->col_major);
                if constexpr (Store) {
                    m = fl->x[i];
                } else {
                    fl->x[i] = m;
                }
            }
        }
    }, &ctx);
}

}  // namespace detail

template <typename Use, typename Layout>
inline void load_matrix_sync_impl(::oxemu::Site site, fragment<Use, 16, 16, 16, __nv_bfloat16, Layout>& f,
                                  const __nv_bfloat16* p, unsigned ldm) {
    detail::transfer<fragment<Use, 16, 16, 16, __nv_bfloat16, Layout>, const __nv_bfloat16, false>(
        site, "wmma::load_matrix_sync", f, p, ldm, std::is_same<Layout, col_major>::value,
        detail::Kind<Use, Layout>::value);
}

inline void load_matrix_sync_impl(::oxemu::Site site, fragment<accumulator, 16, 16, 16, float>& f, const float* p,
                                  unsigned ldm, layout_t layout) {
    detail::transfer<fragment<accumulator, 16, 16, 16, float>, const float, false>(
        site, "wmma::load_matrix_sync", f, p, ldm, layout == mem_col_major, detail::Kind<accumulator, void>::value);
}

inline void store_matrix_sync_impl(::oxemu::Site site, float* p, const fragment<accumulator, 16, 16, 16, float>& f,
                                   unsigned ldm, layout_t layout) {
    detail::transfer<const fragment<accumulator, 16, 16, 16, float>, float, true>(
        site, "wmma::store_matrix_sync", f, p, ldm, layout == mem_col_major, detail::Kind<accumulator, void>::value);
}

// D = A·B + C: bf16 products are exact in f32; the sum runs in f32 over k in order.
template <typename LA, typename LB>
inline void mma_sync_impl(::oxemu::Site site, fragment<accumulator, 16, 16, 16, float>& d,
                          const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA>& a,
                          const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB>& b,
                          const fragment<accumulator, 16, 16, 16, float>& c) {
    struct Arg {
        fragment<accumulator, 16, 16, 16, float>* d;
        const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA>* a;
        const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB>* b;
        const fragment<accumulator, 16, 16, 16, float>* c;
    } arg{&d, &a, &b, &c};
    ::oxemu::warp_collective(site, "wmma::mma_sync", 0xffffffffu, &arg, [](void* const* args, unsigned, const void*) {
        const unsigned char* la = ::oxemu::fragment_layout(detail::Kind<matrix_a, LA>::value);
        const unsigned char* lb = ::oxemu::fragment_layout(detail::Kind<matrix_b, LB>::value);
        const unsigned char* lc = ::oxemu::fragment_layout(detail::Kind<accumulator, void>::value);
        float A[256], B[256], C[256];
        for (int l = 0; l < 32; ++l) {
            const Arg* g = static_cast<const Arg*>(args[l]);
            for (int i = 0; i < detail::kElems; ++i) {
                A[la[l * detail::kElems + i]] = __bfloat162float(g->a->x[i]);
                B[lb[l * detail::kElems + i]] = __bfloat162float(g->b->x[i]);
                C[lc[l * detail::kElems + i]] = g->c->x[i];
            }
        }
        for (int l = 0; l < 32; ++l) {
            const Arg* g = static_cast<const Arg*>(args[l]);
            for (int i = 0; i < detail::kElems; ++i) {
                const int e = lc[l * detail::kElems + i], r = e >> 4, col = e & 15;
                float acc = C[e];
                for (int k = 0; k < 16; ++k) acc += A[r * 16 + k] * B[k * 16 + col];
                g->d->x[i] = acc;
            }
        }
    }, nullptr);
}

}  // namespace wmma
}  // namespace nvcuda

#define load_matrix_sync(...) load_matrix_sync_impl(OXEMU_SITE, __VA_ARGS__)
#define store_matrix_sync(...) store_matrix_sync_impl(OXEMU_SITE, __VA_ARGS__)
#define mma_sync(...) mma_sync_impl(OXEMU_SITE, __VA_ARGS__)
