// Layer-normalised LSTM step, forward and backward. Twin of rnncore/cells/lnlstm.py.
//
// One block per batch row b; its threads stride over the row's H units (and the 4H
// pre-activations) and cooperate on the row's means and variances through block_sum
// (cooperate.cuh: fixed summation order, no atomics, so results repeat bit for bit).
//
// Forward, with LN(v) = (v - mean(v)) r,  r = 1 / sqrt(var(v) + eps) over the row:
//     a = g_ih LN(x_g) + g_hh LN(h_g) + b            (4H; LN over all 4H values)
//     i, f, o = sigmoid(a_i, a_f, a_o)   g = tanh(a_g)   c = f c_prev + i g
//     h = o tanh(y),   y = g_c LN(c) + s_c            (LN over H)
//     zoneout (zh, zc; null when off; kernels/zoneout.cuh): c = c~ + zc (c_prev - c~),
//     h = h~ + zh (h_prev - h~), after h~ = o tanh(y) is formed from the new c~
//     padded row (valid[b] false): h = h_prev, c = c_prev exactly
// Saved: gates, x^ = LN(x_g), h^ = LN(h_g), c^ = LN(c), tanh(y), and r for the three rows.
// Backward, with LN'(dv^) = r (dv^ - mean(dv^) - v^ mean(dv^ v^)):
//     dy = dh o tanh_grad(tanh_y)      dc += LN'(dy g_c)
//     da = [dc g sigmoid_grad(i), dc c_prev sigmoid_grad(f), dc i tanh_grad(g),
//           dh tanh_y sigmoid_grad(o)]
//     dx_g = LN'(da g_ih)   dh_g = LN'(da g_hh)   dc_prev = dc f (+ carried dc)
//     zoneout: dh, dc first scaled by (1 - zh), (1 - zc); the rest reaches h_prev, c_prev
#include "common.cuh"
#include "cooperate.cuh"
#include "layernorm.cuh"
#include "zoneout.cuh"

template <typename T>
__global__ void lnlstm_forward(int B, int H,
                               const T* __restrict__ xg, int ld_xg,
                               const T* __restrict__ hg, int ld_hg,
                               const T* __restrict__ h_prev, int ld_h_prev,
                               const T* __restrict__ c_prev, int ld_c_prev,
                               const T* __restrict__ g_ih, const T* __restrict__ g_hh,
                               const T* __restrict__ bias,  // null without biases
                               const T* __restrict__ g_c, const T* __restrict__ s_c, T eps,
                               const bool* __restrict__ valid,
                               const T* __restrict__ zh, int ld_zh,
                               const T* __restrict__ zc, int ld_zc,
                               T* __restrict__ h, T* __restrict__ c, T* __restrict__ gates,
                               T* __restrict__ xhat, T* __restrict__ hhat,
                               T* __restrict__ chat, T* __restrict__ tanh_y,
                               T* __restrict__ rstd) {
    T* scratch = dynamic_shared<T>();
    const int b = (int)blockIdx.x;
    if (b >= B) return;  // the whole block leaves together
    const int first = (int)block_thread_rank(), stride = (int)block_size();
    const T* x = xg + (long long)b * ld_xg;
    const T* u = hg + (long long)b * ld_hg;
    T mean_x, r_x, mean_h, r_h;
    row_moments<T>(x, 4 * H, eps, scratch, mean_x, r_x);
    row_moments<T>(u, 4 * H, eps, scratch, mean_h, r_h);
    const long long q = (long long)b * 4 * H, s = (long long)b * H;
    T c_sum = T(0);
    for (int j = first; j < H; j += stride) {
        T a[4];
        for (int k = 0; k < 4; ++k) {
            const int m = j + k * H;
            const T xn = (x[m] - mean_x) * r_x, hn = (u[m] - mean_h) * r_h;
            xhat[q + m] = xn;
            hhat[q + m] = hn;
            a[k] = g_ih[m] * xn + g_hh[m] * hn + (bias != nullptr ? bias[m] : T(0));
        }
        const T i = sigmoid<T>(a[0]), f = sigmoid<T>(a[1]);
        const T g = tanh_<T>(a[2]), o = sigmoid<T>(a[3]);
        gates[q + j] = i;
        gates[q + j + H] = f;
        gates[q + j + 2 * H] = g;
        gates[q + j + 3 * H] = o;
        const T c_new = f * c_prev[at(b, j, ld_c_prev)] + i * g;
        c[s + j] = c_new;  // the carry (padded rows) is applied once c's moments are known
        c_sum += c_new;
    }
    const T mean_c = block_sum<T>(c_sum, scratch) / T(H);
    T c_sq = T(0);
    for (int j = first; j < H; j += stride) {
        const T d = c[s + j] - mean_c;
        c_sq += d * d;
    }
    const T r_c = T(1) / sqrt_<T>(block_sum<T>(c_sq, scratch) / T(H) + eps);
    const bool keep = is_valid(valid, b);
    for (int j = first; j < H; j += stride) {
        const T c_new = c[s + j];
        const T cn = (c_new - mean_c) * r_c;
        const T ty = tanh_<T>(g_c[j] * cn + s_c[j]);
        chat[s + j] = cn;
        tanh_y[s + j] = ty;
        const T hp = h_prev[at(b, j, ld_h_prev)], cp = c_prev[at(b, j, ld_c_prev)];
        h[s + j] = keep ? zone_out<T>(zh, ld_zh, b, j, gates[q + j + 3 * H] * ty, hp) : hp;
        c[s + j] = keep ? zone_out<T>(zc, ld_zc, b, j, c_new, cp) : cp;
    }
    if (first == 0) {
        rstd[3 * b] = r_x;
        rstd[3 * b + 1] = r_h;
        rstd[3 * b + 2] = r_c;
    }
}

template <typename T>
__global__ void lnlstm_backward(int B, int H,
                                const T* __restrict__ dh, int ld_dh,
                                const T* __restrict__ dc, int ld_dc,
                                const T* __restrict__ gates,
                                const T* __restrict__ c_prev, int ld_c_prev,
                                const T* __restrict__ xhat, const T* __restrict__ hhat,
                                const T* __restrict__ chat, const T* __restrict__ tanh_y,
                                const T* __restrict__ rstd,
                                const T* __restrict__ g_ih, const T* __restrict__ g_hh,
                                const T* __restrict__ g_c,
                                const bool* __restrict__ valid,
                                const T* __restrict__ zh, int ld_zh,
                                const T* __restrict__ zc, int ld_zc,
                                T* __restrict__ dxg, T* __restrict__ dhg, T* __restrict__ da,
                                T* __restrict__ dy,
                                T* __restrict__ dh_carried,  // null when valid and zh are null
                                T* __restrict__ dc_prev) {
    T* scratch = dynamic_shared<T>();
    const int b = (int)blockIdx.x;
    if (b >= B) return;
    const int first = (int)block_thread_rank(), stride = (int)block_size();
    const long long q = (long long)b * 4 * H, s = (long long)b * H;
    const bool keep = is_valid(valid, b);
    // 1. dy, and the row sums LN' of the cell normalisation needs
    T sum_d = T(0), sum_dc = T(0);
    for (int j = first; j < H; j += stride) {
        const T d_v = keep ? dh[at(b, j, ld_dh)] : T(0);
        const T d_h = zh != nullptr ? d_v - zone_through<T>(zh, ld_zh, b, j, d_v) : d_v;
        const T ty = tanh_y[s + j];
        const T d_y = d_h * gates[q + j + 3 * H] * tanh_grad<T>(ty);
        dy[s + j] = d_y;
        const T d_n = d_y * g_c[j];
        sum_d += d_n;
        sum_dc += d_n * chat[s + j];
    }
    const T mean_d = block_sum<T>(sum_d, scratch) / T(H);
    const T mean_dc = block_sum<T>(sum_dc, scratch) / T(H);
    const T r_x = rstd[3 * b], r_h = rstd[3 * b + 1], r_c = rstd[3 * b + 2];
    // 2. the gate gradients da, dc_prev, and the row sums of the two input normalisations
    T sx = T(0), sxx = T(0), sh = T(0), shh = T(0);
    for (int j = first; j < H; j += stride) {
        const T dh_in = dh[at(b, j, ld_dh)], dc_in = dc[at(b, j, ld_dc)];
        const T dh_v = keep ? dh_in : T(0), dc_v = keep ? dc_in : T(0);
        const T dh_through = zone_through<T>(zh, ld_zh, b, j, dh_v);
        const T dc_through = zone_through<T>(zc, ld_zc, b, j, dc_v);
        const T d_h = zh != nullptr ? dh_v - dh_through : dh_v;
        const T d_c = zc != nullptr ? dc_v - dc_through : dc_v;
        const T d_n = dy[s + j] * g_c[j];
        const T dcell = d_c + r_c * (d_n - mean_d - chat[s + j] * mean_dc);
        const T i = gates[q + j], f = gates[q + j + H], g = gates[q + j + 2 * H];
        const T o = gates[q + j + 3 * H];
        T d_a[4];
        d_a[0] = dcell * g * sigmoid_grad<T>(i);
        d_a[1] = dcell * c_prev[at(b, j, ld_c_prev)] * sigmoid_grad<T>(f);
        d_a[2] = dcell * i * tanh_grad<T>(g);
        d_a[3] = d_h * tanh_y[s + j] * sigmoid_grad<T>(o);
        for (int k = 0; k < 4; ++k) {
            const int m = j + k * H;
            da[q + m] = d_a[k];
            const T dx_n = d_a[k] * g_ih[m], dh_n = d_a[k] * g_hh[m];
            sx += dx_n;
            sxx += dx_n * xhat[q + m];
            sh += dh_n;
            shh += dh_n * hhat[q + m];
        }
        const T carried_c = keep ? T(0) : dc_in, carried_h = keep ? T(0) : dh_in;
        dc_prev[s + j] = dcell * f + (zc == nullptr ? carried_c
                                      : (valid == nullptr ? dc_through : carried_c + dc_through));
        if (dh_carried != nullptr)
            dh_carried[s + j] = zh == nullptr ? carried_h
                                : (valid == nullptr ? dh_through : carried_h + dh_through);
    }
    const T n4 = T(4 * H);
    const T mean_x = block_sum<T>(sx, scratch) / n4, mean_xx = block_sum<T>(sxx, scratch) / n4;
    const T mean_h = block_sum<T>(sh, scratch) / n4, mean_hh = block_sum<T>(shh, scratch) / n4;
    // 3. the gradients of the two projections, through their normalisations
    for (int m = first; m < 4 * H; m += stride) {
        const T d_a = da[q + m];
        dxg[q + m] = r_x * (d_a * g_ih[m] - mean_x - xhat[q + m] * mean_xx);
        dhg[q + m] = r_h * (d_a * g_hh[m] - mean_h - hhat[q + m] * mean_hh);
    }
}
