// The LSTM's element steps alone, for scripts/numba-element-step (this compiled step
// against the same step in numba): a library of its own, built with the loops' flags
// (rnncore/drivers/compiled_cpu.py, element_steps_library). Compiled into the loops'
// library, these second callers of the element steps changed GCC's inlining in the loops.
#include "lstm_cpu.cpp"

namespace cpu_loop {

// On one thread, all units, every step valid: what the loops run between the step products.
// Forward: `steps` steps from the pre-activations in scratch (the step's product, the input
// joined to it; one block for every step), writing the gates, h_t and c_t. Backward: from
// the last step down, ∂z_t and ∂c_{t−1} from dh and dstate, ∂z into a chunk of
// grad_stride / B steps' columns (as the loop's), step t at t mod that.
template <typename T> void lstm_elements_forward(const Blas&, const Args<T>& a) {
    const int64_t H = a.hidden, B = a.batch;
    UnitElements<T, 4> elements = lstm_constants(a);
    for (int64_t t = 0; t < a.steps; ++t) {
        const T* hp = t == 0 ? a.state0[0] : h_block(a, t - 1);
        const T* cp = t == 0 ? a.state0[1] : block<T>(a.saved[1], t - 1, H, B);
        lstm_step_elements<T, true, false>(a, elements, t, hp, cp, AllValid{}, Units{0, H});
    }
}

template <typename T> void lstm_elements_backward(const Blas&, const Args<T>& a) {
    const int64_t H = a.hidden, B = a.batch;
    UnitElements<T, 0> elements(H, B, false);
    AlignedArray<T> staging(elements.flat() ? 4 * H * B : 0);
    for (int64_t t = a.steps - 1; t >= 0; --t) {
        const T* cp = t == 0 ? a.state0[1] : block<T>(a.saved[1], t - 1, H, B);
        T* dhp = t == 0 ? a.dh0 : block<T>(a.dh, t - 1, H, B);
        const T* dc = a.dstate[(a.steps - 1 - t) % 2];
        T* dc_prev = a.dstate[(a.steps - t) % 2];
        T* dzt = a.grads[0] + t % (a.grad_stride / B) * B;
        const GradRows<T> dz = elements.rows_for(dzt, a.grad_stride, staging.data());
        lstm_backward_elements<T, false>(a, elements, t, cp, dc, dc_prev, dhp, dz, AllValid{},
                                         Units{0, H});
        elements.copy_rows(dz, dzt, a.grad_stride, 4, Units{0, H});
    }
}

}  // namespace cpu_loop

RNNCORE_CPU_EXPORT(lstm_cpu_elements_forward_f32, cpu_loop::lstm_elements_forward, float)
RNNCORE_CPU_EXPORT(lstm_cpu_elements_backward_f32, cpu_loop::lstm_elements_backward, float)
