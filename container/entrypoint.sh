#!/bin/sh
# Entrypoint of the oxtune training image (exec form: ENTRYPOINT ["/usr/local/bin/oxtune-entrypoint"]).
#
# 1. CUDA forward compatibility: the image's CUDA 13 needs an r580+ driver. A SageMaker host may run an
#    older data-center driver (r535, r550, r570); NVIDIA's compat package in the base image carries a
#    newer user-mode libcuda for that case, but it must be loaded ahead of the driver's own, and only
#    when the driver really is older (a compat libcuda older than the driver breaks CUDA). The NVIDIA
#    container toolkit stopped mounting these libraries itself in 1.17.4, so the image does it here.
# 3. `exec` train with every argument unchanged (SageMaker passes `train`, which train accepts), so
#    train replaces this shell as PID 1 and gets SIGTERM from `docker stop` / StopTrainingJob itself.
set -eu

# Version of the host's kernel driver, e.g. 535.183.01; empty when no GPU is visible.
# The first dotted number on the NVRM line, which both the proprietary ("Kernel Module  535.183.01")
# and the open module ("Open Kernel Module for x86_64  580.82.07") put right after their name.
driver=$(awk '/^NVRM version:/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+\.[0-9]+(\.[0-9]+)?$/) { print $i; exit } }' \
    /proc/driver/nvidia/version 2>/dev/null || true)

# The compat libcuda is named for the driver it comes from: libcuda.so.580.82.07 -> 580.82.07.
compat_dir=""
compat=""
for lib in /usr/local/cuda/compat/libcuda.so.*.* /usr/local/cuda-*/compat/libcuda.so.*.*; do
    if [ -f "$lib" ]; then
        compat_dir=${lib%/*}
        compat=${lib##*/libcuda.so.}
        break
    fi
done

# True when version $1 sorts strictly before version $2.
older() {
    [ "$1" != "$2" ] && [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n 1)" = "$1" ]
}

if [ -n "$driver" ] && [ -n "$compat" ] && older "$driver" "$compat"; then
    echo "oxtune-entrypoint: host NVIDIA driver $driver is older than this image's CUDA driver $compat:" \
        "using the forward-compatibility libraries in $compat_dir" >&2
    export LD_LIBRARY_PATH="$compat_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

# 2. No NVIDIA driver at all (a CPU-only host, or a container started without GPUs): train, the CUDA
#    build, links libcuda.so.1 and could not even start. The image carries a stand-in libcuda.so.1
#    (container/Dockerfile, stage driver-stub: every driver function train calls answers
#    CUDA_ERROR_STUB_LIBRARY); with it on the path train starts, finds no GPU and trains on the CPU,
#    saying why. OXTUNE_NO_NVIDIA_DRIVER tells train so, for OXTUNE_DEVICE=cuda's message.
has_driver() {
    ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 ' && return 0
    old_ifs=$IFS
    IFS=:
    for d in ${LD_LIBRARY_PATH:-}; do
        if [ -e "$d/libcuda.so.1" ]; then
            IFS=$old_ifs
            return 0
        fi
    done
    IFS=$old_ifs
    return 1
}
no_driver=/usr/local/lib/oxtune/no-driver
if [ -e "$no_driver/libcuda.so.1" ] && ! has_driver; then
    export LD_LIBRARY_PATH="$no_driver${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export OXTUNE_NO_NVIDIA_DRIVER=1
fi

exec /usr/local/bin/train "$@"
