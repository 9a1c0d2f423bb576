// The Elman RNN's time loop for the compiled CPU driver: the same step as kernels/rnn.cu's
// rnn_forward / rnn_backward over a step's (H, B) blocks, b innermost, with the helpers of
// common.cuh. Layout and arguments: cpu_loop.h. Twin of rnncore/cells/rnn.py's
// ``cpu_forward`` / ``cpu_backward``.
//
// saved: [0] h (T,H,B)  [1] φ(a), the new value before the padding carry
// grads: [0] ∂a (H,·,B) = ∂x_g = ∂h_g
#include "backward_chunks.h"

namespace cpu_loop {

template <typename T, bool Relu> void rnn_forward(const Blas&, const Args<T>& a) {
    const int64_t H = a.hidden, B = a.batch;
    // W_hh · h_{t−1}
    const StepProduct<T> recurrent(a.w_hh, false, 1, H, H, B, a.threads);
    // the per-unit constant: the bias b_ih + b_hh
    UnitElements<T, 1> elements(H, B, a.valid != nullptr, [&](int, int64_t j) {
        return (a.bias_x ? a.bias_x[j] : T(0)) + (a.bias_h ? a.bias_h[j] : T(0));
    });
    forward_steps<T>(a, recurrent, [&](int64_t t, int64_t, const T* hp, auto valid,
                                       Units units) {
        const T* xt = block<const T>(a.xg, t, H, B);
        T *ht = h_block(a, t), *yt = block<T>(a.saved[1], t, H, B);
        elements.run(units, valid, [&](int64_t j, int64_t count, auto bias, auto valid) {
            const int64_t s = j * B;
            for_columns<T, true>(count, [&](int64_t e) {
                const T pre = xt[s + e] + a.scratch[s + e] + bias(0, e);
                const T y = Relu ? relu<T>(pre) : tanh_<T>(pre);
                yt[s + e] = y;
                ht[s + e] = valid[e] ? y : hp[s + e];
            });
        });
    });
}

// products: W_hhᵀ ∂a_t and, where the loop computes ∂x, W_ihᵀ ∂a_t (BackwardProducts;
// backward_chunks.h packs them once for all pieces)
template <typename T, bool Relu>
void rnn_backward(const BackwardProducts<T>& products, const Args<T>& a) {
    const int64_t H = a.hidden, B = a.batch;
    UnitElements<T, 0> elements(H, B, a.valid != nullptr);
    backward_steps<T>(a, products, [&](int64_t, int64_t t, int64_t, T* dhp,
                                       auto valid, Units units, T* staging) {
        const T *yt = block<T>(a.saved[1], t, H, B), *dht = block<T>(a.dh, t, H, B);
        T* dat = a.grads[0] + t * B;  // row j at dat + j·grad_stride
        const GradRows<T> da = elements.rows_for(dat, a.grad_stride, staging);
        elements.run(units, valid, [&](int64_t j, int64_t count, auto, auto valid) {
            const int64_t s = j * B;
            T* daj = da.row(j);
            for_columns<T, std::is_same_v<decltype(valid), AllValid>>(count, [&](int64_t e) {
                const bool keep = valid[e];
                const T dh_in = dht[s + e], y = yt[s + e];
                const T slope = Relu ? relu_grad<T>(y) : tanh_grad<T>(y);
                daj[e] = keep ? dh_in * slope : T(0);
                dhp[s + e] += keep ? T(0) : dh_in;
            });
        });
        elements.copy_rows(da, dat, a.grad_stride, 1, units);
        return da;
    });
}

}  // namespace cpu_loop

#define RNN_EXPORTS(act, relu)                                                              \
    extern "C" void rnn_##act##_cpu_forward_f32(const cpu_loop::Blas* b,                   \
                                                const cpu_loop::Args<float>* a) {          \
        cpu_loop::rnn_forward<float, relu>(*b, *a);                                        \
    }                                                                                       \
    extern "C" void rnn_##act##_cpu_forward_f64(const cpu_loop::Blas* b,                   \
                                                const cpu_loop::Args<double>* a) {         \
        cpu_loop::rnn_forward<double, relu>(*b, *a);                                       \
    }                                                                                       \
    extern "C" void rnn_##act##_cpu_backward_f32(const cpu_loop::Blas* b,                  \
                                                 const cpu_loop::Args<float>* a,           \
                                                 const cpu_loop::ChunkedArgs<float>* c) {  \
        cpu_loop::backward_chunks<float>(*b, *a, *c, cpu_loop::rnn_backward<float, relu>); \
    }                                                                                       \
    extern "C" void rnn_##act##_cpu_backward_f64(const cpu_loop::Blas* b,                  \
                                                 const cpu_loop::Args<double>* a,          \
                                                 const cpu_loop::ChunkedArgs<double>* c) { \
        cpu_loop::backward_chunks<double>(*b, *a, *c,                                      \
                                          cpu_loop::rnn_backward<double, relu>);           \
    }
RNN_EXPORTS(tanh, false)
RNN_EXPORTS(relu, true)
