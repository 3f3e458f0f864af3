// Stand-in for CUDA's <mma.h> under the host emulation: everything lives in oxemu.h.
#pragma once
#include "../oxemu.h"
