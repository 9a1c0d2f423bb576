// The GRU's (reset-after) time loop for the compiled CPU driver: the same step as
// kernels/gru.cu's gru_forward / gru_backward over a step's (H, B) slices, b innermost,
// with the helpers of common.cuh. Layout and arguments: cpu_loop.h. Twin of
// rnncore/cells/gru.py's ``cpu_forward`` / ``cpu_backward``.
//
// saved: [0] h (H,T,B)  [1] r  [2] z  [3] n  [4] h_n = the recurrent n-block with b_hn
// grads: [0] ∂x_g (3H,T,B)  [1] ∂h_g (3H,T,B)
#include "cpu_loop.h"

namespace cpu_loop {

template <typename T> void gru_forward(const Blas& blas, const Args<T>& a) {
    const int64_t H = a.hidden, B = a.batch, TB = a.steps * a.batch;
    const Order order{a.steps, a.reverse != 0};
    T *h = a.saved[0], *r_out = a.saved[1], *z_out = a.saved[2], *n_out = a.saved[3];
    T* hn_out = a.saved[4];
    for (int64_t k = 0; k < a.steps; ++k) {
        const int64_t t = order.step(k);
        const Slice<const T> hp = k == 0 ? Slice<const T>{a.state0[0], B}
                                         : Slice<const T>{h + order.step(k - 1) * B, TB};
        gemm<T>(blas, false, false, 3 * H, B, H, a.w_hh, H, hp.p, hp.ld, T(0), a.scratch, B);
        const uint8_t* valid = a.valid ? a.valid + t * B : nullptr;
        for (int64_t j = 0; j < H; ++j) {
            const T* x[3];
            const T* u[3];
            T bx[3], bh[3];
            for (int q = 0; q < 3; ++q) {
                const int64_t row = q * H + j;
                x[q] = a.xg + row * TB + t * B;
                u[q] = a.scratch + row * B;
                bx[q] = a.bias_x ? a.bias_x[row] : T(0);
                bh[q] = a.bias_h ? a.bias_h[row] : T(0);
            }
            const T* hpj = hp.p + j * hp.ld;
            const int64_t s = j * TB + t * B;
#pragma GCC ivdep
            for (int64_t b = 0; b < B; ++b) {
                const T r = sigmoid<T>((x[0][b] + bx[0]) + (u[0][b] + bh[0]));
                const T z = sigmoid<T>((x[1][b] + bx[1]) + (u[1][b] + bh[1]));
                const T hn = u[2][b] + bh[2];
                const T n = tanh_<T>((x[2][b] + bx[2]) + r * hn);
                const T hpb = hpj[b];
                r_out[s + b] = r;
                z_out[s + b] = z;
                n_out[s + b] = n;
                hn_out[s + b] = hn;
                h[s + b] = (valid == nullptr || valid[b]) ? n + z * (hpb - n) : hpb;
            }
        }
    }
}

template <typename T> void gru_backward(const Blas& blas, const Args<T>& a) {
    const int64_t H = a.hidden, B = a.batch, TB = a.steps * a.batch;
    const Order order{a.steps, a.reverse != 0};
    const T *h = a.saved[0], *r_in = a.saved[1], *z_in = a.saved[2], *n_in = a.saved[3];
    const T* hn_in = a.saved[4];
    T *dxg = a.grads[0], *dhg = a.grads[1];
    for (int64_t k = a.steps - 1; k >= 0; --k) {
        const int64_t t = order.step(k);
        const Slice<const T> hp = k == 0 ? Slice<const T>{a.state0[0], B}
                                         : Slice<const T>{h + order.step(k - 1) * B, TB};
        const Slice<T> dhp = k == 0 ? Slice<T>{a.dh0, B}
                                    : Slice<T>{a.dh + order.step(k - 1) * B, TB};
        const uint8_t* valid = a.valid ? a.valid + t * B : nullptr;
        for (int64_t j = 0; j < H; ++j) {
            const int64_t s = j * TB + t * B;
            T* dx[3];
            T* du[3];
            for (int q = 0; q < 3; ++q) {
                dx[q] = dxg + (q * H + j) * TB + t * B;
                du[q] = dhg + (q * H + j) * TB + t * B;
            }
            const T* hpj = hp.p + j * hp.ld;
            T* dhpj = dhp.p + j * dhp.ld;
#pragma GCC ivdep
            for (int64_t b = 0; b < B; ++b) {
                const bool keep = valid == nullptr || valid[b];
                const T dh_in = a.dh[s + b];
                const T d = keep ? dh_in : T(0);
                const T r = r_in[s + b], z = z_in[s + b], n = n_in[s + b];
                const T da_n = d * (T(1) - z) * tanh_grad<T>(n);
                const T da_r = da_n * hn_in[s + b] * sigmoid_grad<T>(r);
                const T da_z = d * (hpj[b] - n) * sigmoid_grad<T>(z);
                dx[0][b] = da_r;
                dx[1][b] = da_z;
                dx[2][b] = da_n;
                du[0][b] = da_r;
                du[1][b] = da_z;
                du[2][b] = da_n * r;
                dhpj[b] += d * z + (keep ? T(0) : dh_in);
            }
        }
        gemm<T>(blas, true, false, H, B, 3 * H, a.w_hh, H, dhg + t * B, TB, T(1), dhp.p, dhp.ld);
    }
}

}  // namespace cpu_loop

RNNCORE_CPU_EXPORT(gru_cpu_forward_f32, cpu_loop::gru_forward, float)
RNNCORE_CPU_EXPORT(gru_cpu_forward_f64, cpu_loop::gru_forward, double)
RNNCORE_CPU_EXPORT(gru_cpu_backward_f32, cpu_loop::gru_backward, float)
RNNCORE_CPU_EXPORT(gru_cpu_backward_f64, cpu_loop::gru_backward, double)
