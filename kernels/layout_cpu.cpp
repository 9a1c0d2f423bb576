// The layout changes between NumPy's batch-major (T, B, W) arrays and the loops'
// feature-major (T, W, B) ones (cpu_loop.h), on the loops' threads:
//
//     dst[t][c][r] = src[t][r][c]      for t < steps, r < rows, c < cols
//
// and, when `copy` is given, copy[t] = src[t] in the same pass (the compiled driver keeps
// its own batch-major copy of a layer's input, for the weight gradients).
//
// (transpose_rect, cpu_loop.h: tiles transposed in registers; NumPy's strided copy of a
// transposed view walks either its reads or its writes across cache lines).
#include "cpu_loop.h"

namespace cpu_loop {

template <typename T> struct TransposeArgs {
    int64_t steps, rows, cols, threads;
    const T* src;  // (steps, rows, cols)
    T* dst;        // (steps, cols, rows)
    T* copy;       // (steps, rows, cols) or null
};

template <typename T> void transpose_steps(const Blas&, const TransposeArgs<T>& a) {
    const int64_t R = a.rows, C = a.cols;
#pragma omp parallel for num_threads(int(a.threads)) schedule(static)
    for (int64_t t = 0; t < a.steps; ++t) {
        transpose_rect(a.src + t * R * C, C, a.dst + t * R * C, R, R, C);
        if (a.copy) std::memcpy(a.copy + t * R * C, a.src + t * R * C, sizeof(T) * R * C);
    }
}

}  // namespace cpu_loop

RNNCORE_CPU_EXPORT_WITH(cpu_transpose_steps_f32, cpu_loop::transpose_steps, float, TransposeArgs)
RNNCORE_CPU_EXPORT_WITH(cpu_transpose_steps_f64, cpu_loop::transpose_steps, double, TransposeArgs)
