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
    // the per-unit constants: b_ih of the gates r, z, n (0–2), then b_hh's (3–5)
    UnitElements<T, 6> elements(H, B, a.valid != nullptr, [&](int k, int64_t j) {
        const T* bias = k < 3 ? a.bias_x : a.bias_h;
        return bias ? bias[k % 3 * H + j] : T(0);
    });
    forward_steps<T>(a, recurrent, [&](int64_t t, int64_t, const T* hp, auto valid,
                                       Units units) {
        const T* xt = block<const T>(a.xg, t, 3 * H, B);
        T *ht = h_block(a, t), *rt = block<T>(a.saved[1], t, H, B);
        T *zt = block<T>(a.saved[2], t, H, B), *nt = block<T>(a.saved[3], t, H, B);
        T* hnt = block<T>(a.saved[4], t, H, B);
        elements.run(units, valid, [&](int64_t j, int64_t count, auto bias, auto valid) {
            const T *x[3], *u[3];
            for (int q = 0; q < 3; ++q) {
                x[q] = xt + (q * H + j) * B;
                u[q] = a.scratch + (q * H + j) * B;
            }
            const T* hpj = hp + j * B;
            const int64_t s = j * B;
            for_columns<T, true>(count, [&](int64_t e) {
                const T r = sigmoid<T>((x[0][e] + bias(0, e)) + (u[0][e] + bias(3, e)));
                const T z = sigmoid<T>((x[1][e] + bias(1, e)) + (u[1][e] + bias(4, e)));
                const T hn = u[2][e] + bias(5, e);
                const T n = tanh_<T>((x[2][e] + bias(2, e)) + r * hn);
                const T hpe = hpj[e];
                rt[s + e] = r;
                zt[s + e] = z;
                nt[s + e] = n;
                hnt[s + e] = hn;
                ht[s + e] = valid[e] ? n + z * (hpe - n) : hpe;
            });
        });
    });
}

// products: W_hhᵀ ∂h_g (BackwardProducts; backward_chunks.h packs it once for all pieces)
template <typename T>
void gru_backward(const BackwardProducts<T>& products, const Args<T>& a) {
    const int64_t H = a.hidden, B = a.batch, ld = a.grad_stride;
    UnitElements<T, 0> elements(H, B, a.valid != nullptr);
    AlignedArray<T> dx_block(elements.flat() ? 3 * H * B : 0);  // ∂x_g's, where not in place
    backward_steps<T>(a, products, [&](int64_t, int64_t t, int64_t tp, T* dhp,
                                       auto valid, Units units, T* staging) {
        const T* hp = tp < 0 ? a.state0[0] : h_block(a, tp);
        const T *rt = block<T>(a.saved[1], t, H, B), *zt = block<T>(a.saved[2], t, H, B);
        const T *nt = block<T>(a.saved[3], t, H, B), *hnt = block<T>(a.saved[4], t, H, B);
        const T* dht = block<T>(a.dh, t, H, B);
        T *dxt = a.grads[0] + t * B, *dut = a.grads[1] + t * B;  // row r at + r·ld
        const GradRows<T> dx = elements.rows_for(dxt, ld, dx_block.data());
        const GradRows<T> du = elements.rows_for(dut, ld, staging);
        elements.run(units, valid, [&](int64_t j, int64_t count, auto, auto valid) {
            const int64_t s = j * B;
            T *dxq[3], *duq[3];
            for (int q = 0; q < 3; ++q) {
                dxq[q] = dx.row(q * H + j);
                duq[q] = du.row(q * H + j);
            }
            const T* hpj = hp + s;
            T* dhpj = dhp + s;
            for_columns<T, false>(count, [&](int64_t e) {
                const bool keep = valid[e];
                const T dh_in = dht[s + e];
                const T d = keep ? dh_in : T(0);
                const T r = rt[s + e], z = zt[s + e], n = nt[s + e];
                const T da_n = d * (T(1) - z) * tanh_grad<T>(n);
                const T da_r = da_n * hnt[s + e] * sigmoid_grad<T>(r);
                const T da_z = d * (hpj[e] - n) * sigmoid_grad<T>(z);
                dxq[0][e] = da_r;
                dxq[1][e] = da_z;
                dxq[2][e] = da_n;
                duq[0][e] = da_r;
                duq[1][e] = da_z;
                duq[2][e] = da_n * r;
                dhpj[e] += d * z + (keep ? T(0) : dh_in);
            });
        });
        elements.copy_rows(dx, dxt, ld, 3, units);
        elements.copy_rows(du, dut, ld, 3, units);
        return du;
    });
}

}  // namespace cpu_loop

RNNCORE_CPU_EXPORT(gru_cpu_forward_f32, cpu_loop::gru_forward, float)
RNNCORE_CPU_EXPORT(gru_cpu_forward_f64, cpu_loop::gru_forward, double)
RNNCORE_CPU_EXPORT_BACKWARD(gru_cpu_backward_f32, cpu_loop::gru_backward, float)
RNNCORE_CPU_EXPORT_BACKWARD(gru_cpu_backward_f64, cpu_loop::gru_backward, double)
