// CUDA's spelling for a host C++17 compiler: the qualifiers become nothing (or `inline`),
// and threadIdx / blockIdx / blockDim / gridDim become ordinary variables. Included by the
// emulation (host_shim.h) and by the compiled CPU loops (cpu_loop.h), so the kernels'
// device helpers compile unchanged on the host.
#pragma once

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __restrict__ __restrict

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

static dim3 threadIdx, blockIdx, blockDim, gridDim;
