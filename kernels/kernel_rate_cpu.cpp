// The packed step kernel's own rate (cpu_gemm.h), for the bench's roofline: on a machine
// where it outruns BLAS (an Intel Xeon: about 165 GFLOP/s against OpenBLAS's 105–145 at one
// thread), BLAS's large GEMM is not the machine's peak, and a row's share of it could
// exceed 100 %. The shape is a step of LSTM 3×512 (B 64): C (2048 × 64) = A (2048 × 512) · X,
// A packed once, the threads splitting its rows in blocks as the loops do.
#include "cpu_loop.h"

namespace cpu_loop {

template <typename T> struct KernelRateArgs {
    int64_t rows, depth, batch, repeats, threads;
    double* seconds;  // out: the fastest of `repeats` products
};

template <typename T> void kernel_rate(const Blas&, const KernelRateArgs<T>& a) {
    std::vector<T> w(a.rows * a.depth);
    AlignedArray<T> x(a.depth * a.batch), c(a.rows * a.batch);
    for (size_t i = 0; i < w.size(); ++i) w[i] = T((i * 7919 % 1000) / 1000.0 - 0.5);
    for (int64_t i = 0; i < x.size(); ++i) x.data()[i] = T((i * 104729 % 1000) / 1000.0 - 0.5);
    PackedA<T> packed(1, a.rows, a.depth, pick_mr(a.rows, a.depth, a.batch, sizeof(T)));
    packed.fill(0, a.depth, w.data(), a.depth, 1);
    const Rows<T> segs[1] = {{x.data(), a.depth, a.batch}};
    double best = 1e300;
    for (int64_t r = 0; r <= a.repeats; ++r) {  // the first: a warm-up
        const double start = omp_get_wtime();
#pragma omp parallel num_threads(int(a.threads))
        gemm_packed<T>(packed, segs, 1, a.batch, c.data(), false, my_units(a.rows, packed.mr));
        if (r > 0) best = std::min(best, omp_get_wtime() - start);
    }
    *a.seconds = best;
}

}  // namespace cpu_loop

RNNCORE_CPU_EXPORT_WITH(cpu_kernel_rate_f32, cpu_loop::kernel_rate, float, KernelRateArgs)
RNNCORE_CPU_EXPORT_WITH(cpu_kernel_rate_f64, cpu_loop::kernel_rate, double, KernelRateArgs)
