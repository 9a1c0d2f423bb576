// The GRU's (reset-after) time loop for the compiled CPU driver: the same step as
// kernels/gru.cu's gru_forward / gru_backward over a step's (H, B) blocks, b innermost,
// with the helpers of common.cuh. Layout and arguments: cpu_loop.h. Twin of
// rnncore/cells/gru.py's ``cpu_forward`` / ``cpu_backward``.
//
// saved: [0] h (T,H,B)  [1] r  [2] z  [3] n  [4] h_n = the recurrent n-block with b_hn
// grads: [0] ∂x_g (3H,·,B)  [1] ∂h_g (3H,·,B)
#include "backward_chunks.h"

namespace cpu_loop {

template <typename T> void gru_forward(const Blas&, const Args<T>& a) {
    const int64_t H = a.hidden, B = a.batch;
    // W_hh · h_{t−1}
    const StepProduct<T> recurrent(a.w_hh, false, 3, H, H, B, a.threads);
    forward_steps<T>(a, recurrent, [&](int64_t t, int64_t, const T* hp, auto valid,
                                       Units units) {
        const T* xt = block<const T>(a.xg, t, 3 * H, B);
        T *ht = h_block(a, t), *rt = block<T>(a.saved[1], t, H, B);
        T *zt = block<T>(a.saved[2], t, H, B), *nt = block<T>(a.saved[3], t, H, B);
        T* hnt = block<T>(a.saved[4], t, H, B);
        for (int64_t j = units.lo; j < units.hi; ++j) {
            const T *x[3], *u[3];
            T bx[3], bh[3];
            for (int q = 0; q < 3; ++q) {
                const int64_t row = q * H + j;
                x[q] = xt + row * B;
                u[q] = a.scratch + row * B;
                bx[q] = a.bias_x ? a.bias_x[row] : T(0);
                bh[q] = a.bias_h ? a.bias_h[row] : T(0);
            }
            const T* hpj = hp + j * B;
            const int64_t s = j * B;
            for_columns<T, true>(B, [&](int64_t b) {
                const T r = sigmoid<T>((x[0][b] + bx[0]) + (u[0][b] + bh[0]));
                const T z = sigmoid<T>((x[1][b] + bx[1]) + (u[1][b] + bh[1]));
                const T hn = u[2][b] + bh[2];
                const T n = tanh_<T>((x[2][b] + bx[2]) + r * hn);
                const T hpb = hpj[b];
                rt[s + b] = r;
                zt[s + b] = z;
                nt[s + b] = n;
                hnt[s + b] = hn;
                ht[s + b] = valid[b] ? n + z * (hpb - n) : hpb;
            });
        }
    });
}

// recurrent_t: W_hhᵀ ∂h_g (backward_chunks.h packs it once for all pieces)
template <typename T>
void gru_backward(const StepProduct<T>& recurrent_t, const Args<T>& a) {
    const int64_t H = a.hidden, B = a.batch, ld = a.grad_stride;
    backward_steps<T>(a, recurrent_t, [&](int64_t, int64_t t, int64_t tp, T* dhp,
                                          auto valid, Units units) {
        const T* hp = tp < 0 ? a.state0[0] : h_block(a, tp);
        const T *rt = block<T>(a.saved[1], t, H, B), *zt = block<T>(a.saved[2], t, H, B);
        const T *nt = block<T>(a.saved[3], t, H, B), *hnt = block<T>(a.saved[4], t, H, B);
        const T* dht = block<T>(a.dh, t, H, B);
        T *dxt = a.grads[0] + t * B, *dut = a.grads[1] + t * B;  // row r at + r·ld
        for (int64_t j = units.lo; j < units.hi; ++j) {
            const int64_t s = j * B;
            T *dx[3], *du[3];
            for (int q = 0; q < 3; ++q) {
                dx[q] = dxt + (q * H + j) * ld;
                du[q] = dut + (q * H + j) * ld;
            }
            const T* hpj = hp + s;
            T* dhpj = dhp + s;
            for_columns<T, false>(B, [&](int64_t b) {
                const bool keep = valid[b];
                const T dh_in = dht[s + b];
                const T d = keep ? dh_in : T(0);
                const T r = rt[s + b], z = zt[s + b], n = nt[s + b];
                const T da_n = d * (T(1) - z) * tanh_grad<T>(n);
                const T da_r = da_n * hnt[s + b] * sigmoid_grad<T>(r);
                const T da_z = d * (hpj[b] - n) * sigmoid_grad<T>(z);
                dx[0][b] = da_r;
                dx[1][b] = da_z;
                dx[2][b] = da_n;
                du[0][b] = da_r;
                du[1][b] = da_z;
                du[2][b] = da_n * r;
                dhpj[b] += d * z + (keep ? T(0) : dh_in);
            });
        }
        return static_cast<const T*>(dut);
    });
}

}  // namespace cpu_loop

RNNCORE_CPU_EXPORT(gru_cpu_forward_f32, cpu_loop::gru_forward, float)
RNNCORE_CPU_EXPORT(gru_cpu_forward_f64, cpu_loop::gru_forward, double)
RNNCORE_CPU_EXPORT_BACKWARD(gru_cpu_backward_f32, cpu_loop::gru_backward, float)
RNNCORE_CPU_EXPORT_BACKWARD(gru_cpu_backward_f64, cpu_loop::gru_backward, double)
