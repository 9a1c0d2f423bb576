// The Elman RNN's time loop for the compiled CPU driver: the same step as kernels/rnn.cu's
// rnn_forward / rnn_backward over a step's (H, B) slices, b innermost, with the helpers of
// common.cuh. Layout and arguments: cpu_loop.h. Twin of rnncore/cells/rnn.py's
// ``cpu_forward`` / ``cpu_backward``.
//
// saved: [0] h (H,T,B)  [1] φ(a), the new value before the padding carry
// grads: [0] ∂a (H,T,B) = ∂x_g = ∂h_g
#include "cpu_loop.h"

namespace cpu_loop {

template <typename T, bool Relu> void rnn_forward(const Blas& blas, const Args<T>& a) {
    const int64_t H = a.hidden, B = a.batch, TB = a.steps * a.batch;
    const Order order{a.steps, a.reverse != 0};
    T *h = a.saved[0], *h_new = a.saved[1];
    for (int64_t k = 0; k < a.steps; ++k) {
        const int64_t t = order.step(k);
        const Slice<const T> hp = k == 0 ? Slice<const T>{a.state0[0], B}
                                         : Slice<const T>{h + order.step(k - 1) * B, TB};
        gemm<T>(blas, false, false, H, B, H, a.w_hh, H, hp.p, hp.ld, T(0), a.scratch, B);
        const uint8_t* valid = a.valid ? a.valid + t * B : nullptr;
        for (int64_t j = 0; j < H; ++j) {
            const T bias = (a.bias_x ? a.bias_x[j] : T(0)) + (a.bias_h ? a.bias_h[j] : T(0));
            const T* x = a.xg + j * TB + t * B;
            const T* u = a.scratch + j * B;
            const T* hpj = hp.p + j * hp.ld;
            const int64_t s = j * TB + t * B;
#pragma GCC ivdep
            for (int64_t b = 0; b < B; ++b) {
                const T pre = x[b] + u[b] + bias;
                const T y = Relu ? relu<T>(pre) : tanh_<T>(pre);
                h_new[s + b] = y;
                h[s + b] = (valid == nullptr || valid[b]) ? y : hpj[b];
            }
        }
    }
}

template <typename T, bool Relu> void rnn_backward(const Blas& blas, const Args<T>& a) {
    const int64_t H = a.hidden, B = a.batch, TB = a.steps * a.batch;
    const Order order{a.steps, a.reverse != 0};
    const T* h_new = a.saved[1];
    T* da = a.grads[0];
    for (int64_t k = a.steps - 1; k >= 0; --k) {
        const int64_t t = order.step(k);
        const Slice<T> dhp = k == 0 ? Slice<T>{a.dh0, B}
                                    : Slice<T>{a.dh + order.step(k - 1) * B, TB};
        const uint8_t* valid = a.valid ? a.valid + t * B : nullptr;
        for (int64_t j = 0; j < H; ++j) {
            const int64_t s = j * TB + t * B;
            T* dhpj = dhp.p + j * dhp.ld;
#pragma GCC ivdep
            for (int64_t b = 0; b < B; ++b) {
                const bool keep = valid == nullptr || valid[b];
                const T dh_in = a.dh[s + b], y = h_new[s + b];
                const T slope = Relu ? relu_grad<T>(y) : tanh_grad<T>(y);
                da[s + b] = keep ? dh_in * slope : T(0);
                dhpj[b] += keep ? T(0) : dh_in;
            }
        }
        gemm<T>(blas, true, false, H, B, H, a.w_hh, H, da + t * B, TB, T(1), dhp.p, dhp.ld);
    }
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
                                                 const cpu_loop::Args<float>* a) {         \
        cpu_loop::rnn_backward<float, relu>(*b, *a);                                       \
    }                                                                                       \
    extern "C" void rnn_##act##_cpu_backward_f64(const cpu_loop::Blas* b,                  \
                                                 const cpu_loop::Args<double>* a) {        \
        cpu_loop::rnn_backward<double, relu>(*b, *a);                                      \
    }
RNN_EXPORTS(tanh, false)
RNN_EXPORTS(relu, true)
