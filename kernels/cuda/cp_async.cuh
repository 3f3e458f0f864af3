// Asynchronous global → shared copies (sm_80 cp.async), grouped with commit / wait.
// PTX rules: a copy is queued at issue, commit_group closes a group, wait_group<N> returns once
// every group but the newest N has landed; a read of the destination before that may see old data.
#pragma once

#ifdef OXTUNE_HOST_EMULATION
// The host emulation (kernels/emu/oxemu.h) implements the same rules on the CPU.
__device__ __forceinline__ void cp_async16(void* dst, const void* src) { ::oxemu::cp_async(dst, src, 16); }
__device__ __forceinline__ void cp_async4(void* dst, const void* src) { ::oxemu::cp_async(dst, src, 4); }
__device__ __forceinline__ void cp_async_commit() { ::oxemu::cp_async_commit(); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    ::oxemu::cp_async_wait(N);
}
#else
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(__cvta_generic_to_global(src))
                 : "memory");
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(__cvta_generic_to_global(src))
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#endif
