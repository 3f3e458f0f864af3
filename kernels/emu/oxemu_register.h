// Registration of `extern "C" __global__` entry points with the host emulation. The build step
// (kernels/emu/prepare.rs) appends one `oxemu_module_<file>` function per .cu file that adds each
// entry point; a variadic template over the kernel's own parameter types unpacks the argument
// array exactly as cuLaunchKernel does, and records the parameter kinds so that the runtime can
// check an argument list against them.
#pragma once

#include <utility>

#include "oxemu_api.h"

namespace oxemu {

typedef void (*Trampoline)(void* fn, void* const* values);

struct Registry {
    void (*add)(const char* name, void* fn, Trampoline t, const uint32_t* kinds, int n, int max_threads,
                const char* params);
};

template <typename T>
constexpr uint32_t arg_kind() {
    if constexpr (std::is_pointer<T>::value) {
        return OXEMU_ARG_PTR;
    } else if constexpr (std::is_same<T, int>::value) {
        return OXEMU_ARG_I32;
    } else if constexpr (std::is_same<T, long long>::value) {
        return OXEMU_ARG_I64;
    } else if constexpr (std::is_same<T, float>::value) {
        return OXEMU_ARG_F32;
    } else {
        static_assert(sizeof(T) == 0, "kernel parameter type not supported by the emulation");
        return 0;
    }
}

template <typename... A, size_t... I>
inline void invoke(void* fn, void* const* values, std::index_sequence<I...>) {
    reinterpret_cast<void (*)(A...)>(fn)(*static_cast<A*>(values[I])...);
}

template <typename... A>
void trampoline(void* fn, void* const* values) {
    invoke<A...>(fn, values, std::index_sequence_for<A...>{});
}

template <typename... A>
void add_kernel(Registry& r, const char* name, void (*fn)(A...), int max_threads, const char* params) {
    static const uint32_t kinds[] = {arg_kind<A>()..., 0u};
    r.add(name, reinterpret_cast<void*>(fn), &trampoline<A...>, kinds, (int)sizeof...(A), max_threads, params);
}

}  // namespace oxemu
