// grid_sync(): every thread of the whole grid waits here (one spelling, CUDA and host).
//
// On CUDA it is cooperative_groups::this_grid().sync(): the kernel must be launched
// cooperatively (cuLaunchCooperativeKernel; CuPy: enable_cooperative_groups=True) with no
// more blocks than can be resident at once. NVRTC has no built-in <cooperative_groups.h>:
// it needs -I to the CUDA headers, i.e. the CUDA toolkit's include/ or, from pip, the
// include/ folders of nvidia-cuda-runtime-cu12 (cooperative_groups.h) and
// nvidia-cuda-cccl-cu12 (<nv/target>, <cuda/std/...>, which it includes); a CUDA 13 toolkit
// keeps those in include/cccl/. The headers must be of NVRTC's major version. -rdc is not
// needed (CUDA >= 11). Checked with NVRTC 12.9 for compute_80.
//
// On the host (RNNCORE_HOST) it is the emulation's grid barrier: export the kernel with
// RNNCORE_HOST_EXPORT_COOPERATIVE; every block stays alive across it.
#pragma once

#ifdef RNNCORE_HOST
__device__ __forceinline__ void grid_sync() { rnncore_host::grid_barrier(); }
#else
#include <cooperative_groups.h>
__device__ __forceinline__ void grid_sync() { cooperative_groups::this_grid().sync(); }
#endif
