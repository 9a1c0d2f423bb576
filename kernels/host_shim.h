// Lets a host C++17 compiler build the CUDA kernels in this folder unchanged.
//
// CUDA's qualifiers become nothing (or `inline`), threadIdx / blockIdx / blockDim / gridDim
// become ordinary variables, and RNNCORE_HOST_EXPORT(name, kernel<...>) defines
//
//     extern "C" void name(const unsigned grid[3], const unsigned block[3], void** args)
//
// which runs the kernel once for every (block, thread) index of the launch, in order, with
// its arguments passed as cuLaunchKernel takes them: an array of pointers to each value.
// rnncore/fused.py builds that array from the same argument tuple it hands to CuPy.
// One host thread runs the whole grid, so results are deterministic. That plain loop is only
// right for kernels whose threads never cooperate; kernels that use __shared__ memory and
// barriers are exported with RNNCORE_HOST_EXPORT_COOPERATIVE instead (host_cooperative.h,
// included at the end), and written against the portable spellings of cooperate.cuh.
// RNNCORE_HOST tells those headers that they are being compiled for the host.
#pragma once
#define RNNCORE_HOST 1
#include <math.h>

#include <cstddef>
#include <tuple>
#include <utility>

#include "cuda_on_host.h"

namespace rnncore_host {

template <typename Kernel> struct Signature;

template <typename... Args> struct Signature<void (*)(Args...)> {
    // The kernel's argument values, read from cuLaunchKernel's array of pointers.
    template <std::size_t... I>
    static std::tuple<Args...> unpack(void** args, std::index_sequence<I...>) {
        return std::tuple<Args...>(*static_cast<Args*>(args[I])...);
    }
    static std::tuple<Args...> unpack(void** args) {
        return unpack(args, std::index_sequence_for<Args...>{});
    }
};

template <auto Kernel>
void launch(const unsigned* grid, const unsigned* block, void** args) {
    const auto values = Signature<decltype(Kernel)>::unpack(args);
    gridDim = dim3{grid[0], grid[1], grid[2]};
    blockDim = dim3{block[0], block[1], block[2]};
    for (unsigned bz = 0; bz < grid[2]; ++bz)
        for (unsigned by = 0; by < grid[1]; ++by)
            for (unsigned bx = 0; bx < grid[0]; ++bx) {
                blockIdx = dim3{bx, by, bz};
                for (unsigned tz = 0; tz < block[2]; ++tz)
                    for (unsigned ty = 0; ty < block[1]; ++ty)
                        for (unsigned tx = 0; tx < block[0]; ++tx) {
                            threadIdx = dim3{tx, ty, tz};
                            std::apply(Kernel, values);
                        }
            }
}

}  // namespace rnncore_host

#define RNNCORE_HOST_EXPORT(name, ...)                                                   \
    extern "C" void name(const unsigned* grid, const unsigned* block, void** args) {     \
        rnncore_host::launch<&__VA_ARGS__>(grid, block, args);                            \
    }

#include "host_cooperative.h"
