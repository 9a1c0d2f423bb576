// The LSTM's time loop for the compiled CPU driver: the same step as kernels/lstm.cu
// (lstm_forward / lstm_backward), written over a step's (H, B) blocks, b innermost, with
// the same helpers (sigmoid, tanh_, sigmoid_grad, tanh_grad from common.cuh). Layout and
// arguments: cpu_loop.h. Twin of rnncore/cells/lstm.py's declared ``cpu_loop``.
//
// saved: [0] h (T,H,B), or a ring of 2 (Args::h_ring; the backward reads h batch-major)
//        [1] c  [2] gates (T,4H,B) i,f,g,o  [3] tanh(c), or null: not kept (the backward
//        recomputes tanh(c_t) from c_t; where a padded step kept c_{t−1}, the value differs
//        but is multiplied by that step's zero ∂h, as before)
// grads: [0] dz (4H,·,B): ∂L/∂ of the pre-activations, = ∂x_g = ∂h_g
//        [3] (T,H,B) or null: ∂L/∂c_t as each step starts (for the gradient-flow recorder)
// dstate: [0] ∂L/∂c, in: ∂L/∂c_T, out: ∂L/∂c_0   [1] scratch (H, B)
#include "backward_chunks.h"

namespace cpu_loop {

// Step t's element loop over units [lo, hi): reading the pre-activations (+ x_g unless the
// input joined the product, Joined), writing the gates, h_t, c_t and (KeepTanh) tanh(c_t).
// The constants (lstm_constants): each gate's bias, b_ih + b_hh.
template <typename T, bool Joined, bool KeepTanh, typename Valid>
void lstm_step_elements(const Args<T>& a, UnitElements<T, 4>& elements, int64_t t,
                        const T* hp, const T* cp, Valid valid, Units units) {
    const int64_t H = a.hidden, B = a.batch;
    const T* xt = Joined ? nullptr : block<const T>(a.xg, t, 4 * H, B);
    T* gt = block<T>(a.saved[2], t, 4 * H, B);
    T* ht = h_block(a, t);
    T* ct = block<T>(a.saved[1], t, H, B);
    T* tct = KeepTanh ? block<T>(a.saved[3], t, H, B) : nullptr;
    elements.run(units, valid, [&](int64_t j, int64_t count, auto bias, auto valid) {
        const T *x[4], *r[4];
        T* g_out[4];
        for (int q = 0; q < 4; ++q) {
            const int64_t row = q * H + j;
            x[q] = Joined ? nullptr : xt + row * B;
            r[q] = a.scratch + row * B;
            g_out[q] = gt + row * B;
        }
        const T *hpj = hp + j * B, *cpj = cp + j * B;
        T *hj = ht + j * B, *cj = ct + j * B, *tcj = KeepTanh ? tct + j * B : nullptr;
        // the gates, then the cell from them (read back from L1): as one loop the forward
        // took 1–1.5 % longer (Intel Xeon, LSTM 1×128, 3×512 and the seed row, one thread,
        // interleaved); the gates as four loops, or all units' gates before any cell, slower
        for_columns<T, true>(count, [&](int64_t e) {
            g_out[0][e] = sigmoid<T>((Joined ? T(0) : x[0][e]) + r[0][e] + bias(0, e));
            g_out[1][e] = sigmoid<T>((Joined ? T(0) : x[1][e]) + r[1][e] + bias(1, e));
            g_out[2][e] = tanh_<T>((Joined ? T(0) : x[2][e]) + r[2][e] + bias(2, e));
            g_out[3][e] = sigmoid<T>((Joined ? T(0) : x[3][e]) + r[3][e] + bias(3, e));
        });
        for_columns<T, true>(count, [&](int64_t e) {
            const T i = g_out[0][e], f = g_out[1][e], g = g_out[2][e], o = g_out[3][e];
            const T c_new = f * cpj[e] + i * g;
            const T tc = tanh_<T>(c_new);
            if (KeepTanh) tcj[e] = tc;
            const bool keep = valid[e];
            hj[e] = keep ? o * tc : hpj[e];
            cj[e] = keep ? c_new : cpj[e];
        });
    });
}

// The LSTM's per-unit constants: gate q's bias b_ih + b_hh (either may be absent)
template <typename T> UnitElements<T, 4> lstm_constants(const Args<T>& a) {
    return UnitElements<T, 4>(a.hidden, a.batch, a.valid != nullptr, [&](int q, int64_t j) {
        const int64_t row = q * a.hidden + j;
        return (a.bias_x ? a.bias_x[row] : T(0)) + (a.bias_h ? a.bias_h[row] : T(0));
    });
}

template <typename T> void lstm_forward(const Blas&, const Args<T>& a) {
    const int64_t H = a.hidden, B = a.batch;
    // z = W_hh h_{t−1} (+ W_ih x_t when the input projection joins the step's product; then
    // there is no xg)
    const StepProduct<T> recurrent =
        a.x ? StepProduct<T>(a.w_hh, a.w_ih, 4, H, H, a.input, B, a.threads)
            : StepProduct<T>(a.w_hh, false, 4, H, H, B, a.threads);
    UnitElements<T, 4> elements = lstm_constants(a);
    forward_steps<T>(a, recurrent, [&](int64_t t, int64_t tp, const T* hp,
                                       auto valid, Units units) {
        const T* cp = tp < 0 ? a.state0[1] : block<T>(a.saved[1], tp, H, B);
        if (a.x && a.saved[3])
            lstm_step_elements<T, true, true>(a, elements, t, hp, cp, valid, units);
        if (a.x && !a.saved[3])
            lstm_step_elements<T, true, false>(a, elements, t, hp, cp, valid, units);
        if (!a.x && a.saved[3])
            lstm_step_elements<T, false, true>(a, elements, t, hp, cp, valid, units);
        if (!a.x && !a.saved[3])
            lstm_step_elements<T, false, false>(a, elements, t, hp, cp, valid, units);
    });
}

// Step t's backward element loop over units [lo, hi): from ∂h_t, ∂c_t and the kept gates,
// ∂z_t (GradRows), ∂c_{t−1}, and ∂h_{t−1} for padded steps. tanh(c_t) is read (KeepTanh) or
// recomputed from c_t in the same loop (once a pass of its own into a scratch block the
// loop read back: as fast, interleaved on an Intel Xeon, one thread).
template <typename T, bool KeepTanh, typename Valid>
void lstm_backward_elements(const Args<T>& a, UnitElements<T, 0>& elements, int64_t t,
                            const T* cp, const T* dc, T* dc_prev, T* dhp, GradRows<T> dz,
                            Valid valid, Units units) {
    const int64_t H = a.hidden, B = a.batch;
    const T* gt = block<T>(a.saved[2], t, 4 * H, B);
    const T* tct = KeepTanh ? block<T>(a.saved[3], t, H, B) : block<T>(a.saved[1], t, H, B);
    const T* dht = block<T>(a.dh, t, H, B);
    elements.run(units, valid, [&](int64_t j, int64_t count, auto, auto valid) {
        const T* gq[4];
        T* dzq[4];
        for (int q = 0; q < 4; ++q) {
            gq[q] = gt + (q * H + j) * B;
            dzq[q] = dz.row(q * H + j);
        }
        const T *dhj = dht + j * B, *tcj = tct + j * B, *cpj = cp + j * B;
        const T* dcj = dc + j * B;
        T *dcpj = dc_prev + j * B, *dhpj = dhp + j * B;
        for_columns<T, std::is_same_v<Valid, AllValid>>(count, [&](int64_t e) {
            const bool keep = valid[e];
            const T dh_in = dhj[e], dc_in = dcj[e];
            const T dh_new = keep ? dh_in : T(0), dc_new = keep ? dc_in : T(0);
            const T i = gq[0][e], f = gq[1][e], g = gq[2][e], o = gq[3][e];
            const T tc = KeepTanh ? tcj[e] : tanh_<T>(tcj[e]);  // tcj: tanh(c_t) or c_t
            const T dcell = dc_new + dh_new * o * tanh_grad<T>(tc);
            dzq[0][e] = dcell * g * sigmoid_grad<T>(i);
            dzq[1][e] = dcell * cpj[e] * sigmoid_grad<T>(f);
            dzq[2][e] = dcell * i * tanh_grad<T>(g);
            dzq[3][e] = dh_new * tc * sigmoid_grad<T>(o);
            dcpj[e] = dcell * f + (keep ? T(0) : dc_in);
            dhpj[e] += keep ? T(0) : dh_in;
        });
    });
}

// products: W_hhᵀ ∂z_t and, where the loop computes ∂x, W_ihᵀ ∂z_t (BackwardProducts;
// backward_chunks.h packs them once for all pieces)
template <typename T>
void lstm_backward(const BackwardProducts<T>& products, const Args<T>& a) {
    const int64_t H = a.hidden, B = a.batch;
    UnitElements<T, 0> elements(H, B, a.valid != nullptr);
    // ∂L/∂c of the step being processed and of the one before it: the two dstate buffers,
    // swapped at every step (loop position k)
    auto dc_of = [&](int64_t k) { return a.dstate[(a.steps - 1 - k) % 2]; };
    backward_steps<T>(a, products, [&](int64_t k, int64_t t, int64_t tp, T* dhp,
                                       auto valid, Units units, T* staging) {
        const int64_t lo = units.lo * B, n = (units.hi - units.lo) * B;  // its part of a block
        const T* dc = dc_of(k);
        T* dc_prev = dc_of(k - 1);
        const T* cp = tp < 0 ? a.state0[1] : block<T>(a.saved[1], tp, H, B);
        T* dzt = a.grads[0] + t * B;  // row r at dzt + r·grad_stride
        const GradRows<T> dz = elements.rows_for(dzt, a.grad_stride, staging);
        if (a.grads[3] != nullptr)
            std::memcpy(block<T>(a.grads[3], t, H, B) + lo, dc + lo, sizeof(T) * n);
        if (a.saved[3])
            lstm_backward_elements<T, true>(a, elements, t, cp, dc, dc_prev, dhp, dz, valid,
                                            units);
        else
            lstm_backward_elements<T, false>(a, elements, t, cp, dc, dc_prev, dhp, dz, valid,
                                             units);
        elements.copy_rows(dz, dzt, a.grad_stride, 4, units);
        return dz;
    });
    if (a.steps % 2) std::memcpy(a.dstate[0], a.dstate[1], sizeof(T) * H * B);  // ∂L/∂c_0
}

}  // namespace cpu_loop

RNNCORE_CPU_EXPORT(lstm_cpu_forward_f32, cpu_loop::lstm_forward, float)
RNNCORE_CPU_EXPORT(lstm_cpu_forward_f64, cpu_loop::lstm_forward, double)
RNNCORE_CPU_EXPORT_BACKWARD(lstm_cpu_backward_f32, cpu_loop::lstm_backward, float)
RNNCORE_CPU_EXPORT_BACKWARD(lstm_cpu_backward_f64, cpu_loop::lstm_backward, double)
