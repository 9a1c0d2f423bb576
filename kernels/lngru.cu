// Layer-normalised GRU step (reset-after), forward and backward. Twin of rnncore/cells/lngru.py.
//
// One block per batch row b, as kernels/lnlstm.cu: its threads stride over the row's H
// units (and the 3H pre-activations) and cooperate on the row's moments (block_sum).
//
// Forward, with LN(v) = (v - mean(v)) r,  r = 1 / sqrt(var(v) + eps) over the row's 3H:
//     a_x = g_ih LN(x_g) + b_ih        a_h = g_hh LN(h_g) + b_hh        (b: null without biases)
//     r = sigmoid(a_x,r + a_h,r)   z = sigmoid(a_x,z + a_h,z)   n = tanh(a_x,n + r a_h,n)
//     h = n + z (h_prev - n), then zoneout (zh, null when off; kernels/zoneout.cuh)
//     padded row (valid[b] false): h = h_prev exactly
// Saved: r, z, n, a_h,n, x^ = LN(x_g), h^ = LN(h_g), and r for the two rows.
// Backward, with LN'(dv^) = r (dv^ - mean(dv^) - v^ mean(dv^ v^)):
//     d = dh (zeroed on padded rows; minus zh dh under zoneout)
//     da_n = d (1 - z) tanh_grad(n)   da_r = da_n a_h,n sigmoid_grad(r)
//     da_z = d (h_prev - n) sigmoid_grad(z)
//     da_x = [da_r, da_z, da_n]   da_h = [da_r, da_z, da_n r]
//     dx_g = LN'(da_x g_ih)   dh_g = LN'(da_h g_hh)
//     dh_direct = d z (+ carried dh, + zh dh)     (the rest of dh_prev comes through W_hh)
#include "common.cuh"
#include "cooperate.cuh"
#include "layernorm.cuh"
#include "zoneout.cuh"

template <typename T>
__global__ void lngru_forward(int B, int H,
                              const T* __restrict__ xg, int ld_xg,
                              const T* __restrict__ hg, int ld_hg,
                              const T* __restrict__ h_prev, int ld_h_prev,
                              const T* __restrict__ g_ih, const T* __restrict__ g_hh,
                              const T* __restrict__ b_ih, const T* __restrict__ b_hh,
                              T eps,
                              const bool* __restrict__ valid,
                              const T* __restrict__ zh, int ld_zh,
                              T* __restrict__ h, T* __restrict__ r_out, T* __restrict__ z_out,
                              T* __restrict__ n_out, T* __restrict__ ahn,
                              T* __restrict__ xhat, T* __restrict__ hhat,
                              T* __restrict__ rstd) {
    T* scratch = dynamic_shared<T>();
    const int b = (int)blockIdx.x;
    if (b >= B) return;  // the whole block leaves together
    const int first = (int)block_thread_rank(), stride = (int)block_size();
    const T* x = xg + (long long)b * ld_xg;
    const T* u = hg + (long long)b * ld_hg;
    T mean_x, r_x, mean_h, r_h;
    row_moments<T>(x, 3 * H, eps, scratch, mean_x, r_x);
    row_moments<T>(u, 3 * H, eps, scratch, mean_h, r_h);
    const long long q = (long long)b * 3 * H, s = (long long)b * H;
    const bool keep = is_valid(valid, b);
    for (int j = first; j < H; j += stride) {
        T ax[3], ah[3];
        for (int k = 0; k < 3; ++k) {
            const int m = j + k * H;
            const T xn = (x[m] - mean_x) * r_x, hn = (u[m] - mean_h) * r_h;
            xhat[q + m] = xn;
            hhat[q + m] = hn;
            ax[k] = g_ih[m] * xn + (b_ih != nullptr ? b_ih[m] : T(0));
            ah[k] = g_hh[m] * hn + (b_hh != nullptr ? b_hh[m] : T(0));
        }
        const T r = sigmoid<T>(ax[0] + ah[0]), z = sigmoid<T>(ax[1] + ah[1]);
        const T n = tanh_<T>(ax[2] + r * ah[2]);
        r_out[s + j] = r;
        z_out[s + j] = z;
        n_out[s + j] = n;
        ahn[s + j] = ah[2];
        const T hp = h_prev[at(b, j, ld_h_prev)];
        h[s + j] = keep ? zone_out<T>(zh, ld_zh, b, j, n + z * (hp - n), hp) : hp;
    }
    if (first == 0) {
        rstd[2 * b] = r_x;
        rstd[2 * b + 1] = r_h;
    }
}

template <typename T>
__global__ void lngru_backward(int B, int H,
                               const T* __restrict__ dh, int ld_dh,
                               const T* __restrict__ h_prev, int ld_h_prev,
                               const T* __restrict__ r_in, const T* __restrict__ z_in,
                               const T* __restrict__ n_in, const T* __restrict__ ahn,
                               const T* __restrict__ xhat, const T* __restrict__ hhat,
                               const T* __restrict__ rstd,
                               const T* __restrict__ g_ih, const T* __restrict__ g_hh,
                               const bool* __restrict__ valid,
                               const T* __restrict__ zh, int ld_zh,
                               T* __restrict__ dxg, T* __restrict__ dhg,
                               T* __restrict__ dax, T* __restrict__ dah,
                               T* __restrict__ dh_direct) {
    T* scratch = dynamic_shared<T>();
    const int b = (int)blockIdx.x;
    if (b >= B) return;
    const int first = (int)block_thread_rank(), stride = (int)block_size();
    const long long q = (long long)b * 3 * H, s = (long long)b * H;
    const bool keep = is_valid(valid, b);
    // 1. the gate gradients, the direct part of dh_prev, and the normalisations' row sums
    T sx = T(0), sxx = T(0), sh = T(0), shh = T(0);
    for (int j = first; j < H; j += stride) {
        const T dh_in = dh[at(b, j, ld_dh)];
        const T d_v = keep ? dh_in : T(0);
        const T through = zone_through<T>(zh, ld_zh, b, j, d_v);
        const T d = zh != nullptr ? d_v - through : d_v;
        const T r = r_in[s + j], z = z_in[s + j], n = n_in[s + j];
        const T da_n = d * (T(1) - z) * tanh_grad<T>(n);
        const T da_r = da_n * ahn[s + j] * sigmoid_grad<T>(r);
        const T da_z = d * (h_prev[at(b, j, ld_h_prev)] - n) * sigmoid_grad<T>(z);
        const T d_x[3] = {da_r, da_z, da_n};
        const T d_h[3] = {da_r, da_z, da_n * r};
        for (int k = 0; k < 3; ++k) {
            const int m = j + k * H;
            dax[q + m] = d_x[k];
            dah[q + m] = d_h[k];
            const T dx_n = d_x[k] * g_ih[m], dh_n = d_h[k] * g_hh[m];
            sx += dx_n;
            sxx += dx_n * xhat[q + m];
            sh += dh_n;
            shh += dh_n * hhat[q + m];
        }
        const T carried = keep ? T(0) : dh_in;
        dh_direct[s + j] = d * z + (zh == nullptr ? carried
                                    : (valid == nullptr ? through : carried + through));
    }
    const T n3 = T(3 * H);
    const T mean_x = block_sum<T>(sx, scratch) / n3, mean_xx = block_sum<T>(sxx, scratch) / n3;
    const T mean_h = block_sum<T>(sh, scratch) / n3, mean_hh = block_sum<T>(shh, scratch) / n3;
    const T r_x = rstd[2 * b], r_h = rstd[2 * b + 1];
    // 2. the gradients of the two projections, through their normalisations
    for (int m = first; m < 3 * H; m += stride) {
        dxg[q + m] = r_x * (dax[q + m] * g_ih[m] - mean_x - xhat[q + m] * mean_xx);
        dhg[q + m] = r_h * (dah[q + m] * g_hh[m] - mean_h - hhat[q + m] * mean_hh);
    }
}
