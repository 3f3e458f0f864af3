// Stand-in for CUDA's <cuda_fp16.h> under the host emulation: everything lives in oxemu.h.
#pragma once
#include "../oxemu.h"
