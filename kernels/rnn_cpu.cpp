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
    forward_steps<T>(a, recurrent, [&](int64_t t, int64_t, const T* hp, auto valid,
                                       Units units) {
        const T* xt = block<const T>(a.xg, t, H, B);
        T *ht = h_block(a, t), *yt = block<T>(a.saved[1], t, H, B);
        for (int64_t j = units.lo; j < units.hi; ++j) {
            const T bias = (a.bias_x ? a.bias_x[j] : T(0)) + (a.bias_h ? a.bias_h[j] : T(0));
            const int64_t s = j * B;
            for_columns<T, true>(B, [&](int64_t b) {
                const T pre = xt[s + b] + a.scratch[s + b] + bias;
                const T y = Relu ? relu<T>(pre) : tanh_<T>(pre);
                yt[s + b] = y;
                ht[s + b] = valid[b] ? y : hp[s + b];
            });
        }
    });
}

// recurrent_t: W_hhᵀ ∂a_t (backward_chunks.h packs it once for all pieces)
template <typename T, bool Relu>
void rnn_backward(const StepProduct<T>& recurrent_t, const Args<T>& a) {
    const int64_t H = a.hidden, B = a.batch, ld = a.grad_stride;
    backward_steps<T>(a, recurrent_t, [&](int64_t, int64_t t, int64_t, T* dhp,
                                          auto valid, Units units) {
        const T *yt = block<T>(a.saved[1], t, H, B), *dht = block<T>(a.dh, t, H, B);
        T* dat = a.grads[0] + t * B;  // row j at dat + j·ld
        for (int64_t j = units.lo; j < units.hi; ++j) {
            const int64_t s = j * B;
            for_columns<T, std::is_same_v<decltype(valid), AllValid>>(B, [&](int64_t b) {
                const bool keep = valid[b];
                const T dh_in = dht[s + b], y = yt[s + b];
                const T slope = Relu ? relu_grad<T>(y) : tanh_grad<T>(y);
                dat[j * ld + b] = keep ? dh_in * slope : T(0);
                dhp[s + b] += keep ? T(0) : dh_in;
            });
        }
        return static_cast<const T*>(dat);
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
