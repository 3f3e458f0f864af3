// The host emulation's C interface, called from Rust (kernels/src/gpu/emulated.rs) and by the
// generated per-module registration code (kernels/emu/prepare.rs).
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// A kernel argument, in the kernel's parameter order (as cuLaunchKernel takes them).
enum {
    OXEMU_ARG_PTR = 0,  // value: host address or 0 (null); len: bytes the kernel may touch from it;
                        // align_offset: byte offset of the address within its allocation
    OXEMU_ARG_I32 = 1,  // value: the int, sign-extended
    OXEMU_ARG_I64 = 2,  // value: the long long
    OXEMU_ARG_F32 = 3,  // value: the float's bits
};
typedef struct {
    uint32_t kind;
    uint32_t reserved;
    uint64_t value;
    uint64_t len;
    uint64_t align_offset;
} oxemu_arg;

typedef struct {
    uint64_t seed;              // thread order between barriers and wmma fragment layouts
    uint32_t arch;              // 80, 86, 89 or 90: the launch limits enforced
    uint32_t max_dynamic_smem;  // the kernel's raised max-dynamic-shared-memory attribute (0: not raised)
    uint32_t threads;           // OS threads running blocks (0: one per core)
    uint32_t reserved;
} oxemu_options;

// Runs one launch to completion. Returns 0, or 1 with a message in err (kernel, block, thread,
// what went wrong, the seed).
__attribute__((visibility("default"))) int oxemu_launch(const char* kernel, const uint32_t grid[3],
                                                        const uint32_t block[3], uint32_t dynamic_smem,
                                                        const oxemu_arg* args, uint32_t nargs,
                                                        const oxemu_options* opts, char* err, size_t err_len);

// The registered `extern "C" __global__` entry points.
__attribute__((visibility("default"))) uint32_t oxemu_kernel_count(void);
__attribute__((visibility("default"))) const char* oxemu_kernel_name(uint32_t i);

#ifdef __cplusplus
}
#endif
