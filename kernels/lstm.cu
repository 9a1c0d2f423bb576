// LSTM pointwise step, forward and backward (gate order i, f, g, o as in PyTorch).
// The twin of rnncore/cells/lstm.py: pointwise_forward / pointwise_backward.
//
// Forward, with z = x_g + h_g (both biases already in), blocks of H:
//     i = sigmoid(z_i)  f = sigmoid(z_f)  g = tanh(z_g)  o = sigmoid(z_o)
//     c = f c_prev + i g      h = o tanh(c)
//     zoneout (zh, zc; null when off): c = c~ + zc (c_prev - c~), h = h~ + zh (h_prev - h~),
//     with h~ = o tanh(c~) formed from the new c~ (kernels/zoneout.cuh)
//     padded row (valid[b] false): h = h_prev, c = c_prev exactly
// Backward, from dh, dc and the saved activations (gates, c_prev, tanh(c)):
//     dh, dc zeroed on padded rows, their values carried to the previous step instead
//     dc += dh o tanh_grad(tanh_c)
//     dz = [dc g sigmoid_grad(i), dc c_prev sigmoid_grad(f), dc i tanh_grad(g),
//           dh tanh_c sigmoid_grad(o)]
//     zoneout: dh, dc scaled by (1 - zh), (1 - zc), the rest reaching h_prev, c_prev directly
//     dc_prev = dc f (+ carried dc)      dh_carried = carried dh (+ zoned-out dh; written when
//     valid or zh is given)
#include "common.cuh"
#include "zoneout.cuh"

template <typename T>
__global__ void lstm_forward(int B, int H,
                             const T* __restrict__ xg, int ld_xg,
                             const T* __restrict__ hg, int ld_hg,
                             const T* __restrict__ h_prev, int ld_h_prev,  // null: no carry
                             const T* __restrict__ c_prev, int ld_c_prev,
                             const bool* __restrict__ valid,
                             const T* __restrict__ zh, int ld_zh,
                             const T* __restrict__ zc, int ld_zc,
                             T* __restrict__ h, T* __restrict__ c,
                             T* __restrict__ gates, T* __restrict__ tanh_c) {
    int b, j;
    if (!element_index(B, H, b, j)) return;
    const long long x = at(b, j, ld_xg), r = at(b, j, ld_hg), s = at(b, j, H);
    const T i = sigmoid<T>(xg[x] + hg[r]);
    const T f = sigmoid<T>(xg[x + H] + hg[r + H]);
    const T g = tanh_<T>(xg[x + 2 * H] + hg[r + 2 * H]);
    const T o = sigmoid<T>(xg[x + 3 * H] + hg[r + 3 * H]);
    const T cp = c_prev[at(b, j, ld_c_prev)];
    const T c_new = f * cp + i * g;
    const T tc = tanh_<T>(c_new);
    const long long q = at(b, j, 4 * H);
    gates[q] = i;
    gates[q + H] = f;
    gates[q + 2 * H] = g;
    gates[q + 3 * H] = o;
    tanh_c[s] = tc;
    const bool keep = is_valid(valid, b);
    const T h_new = o * tc;
    const T hp = h_prev != nullptr ? h_prev[at(b, j, ld_h_prev)] : T(0);
    h[s] = keep ? zone_out<T>(zh, ld_zh, b, j, h_new, hp) : hp;
    c[s] = keep ? zone_out<T>(zc, ld_zc, b, j, c_new, cp) : cp;
}

template <typename T>
__global__ void lstm_backward(int B, int H,
                              const T* __restrict__ dh, int ld_dh,
                              const T* __restrict__ dc, int ld_dc,
                              const T* __restrict__ gates,
                              const T* __restrict__ c_prev, int ld_c_prev,
                              const T* __restrict__ tanh_c,
                              const bool* __restrict__ valid,
                              const T* __restrict__ zh, int ld_zh,
                              const T* __restrict__ zc, int ld_zc,
                              T* __restrict__ dz,
                              T* __restrict__ dh_carried,  // null when valid and zh are null
                              T* __restrict__ dc_prev) {
    int b, j;
    if (!element_index(B, H, b, j)) return;
    const long long q = at(b, j, 4 * H), s = at(b, j, H);
    const bool keep = is_valid(valid, b);
    const T dh_in = dh[at(b, j, ld_dh)], dc_in = dc[at(b, j, ld_dc)];
    const T dh_v = keep ? dh_in : T(0), dc_v = keep ? dc_in : T(0);
    const T dh_through = zone_through<T>(zh, ld_zh, b, j, dh_v);
    const T dc_through = zone_through<T>(zc, ld_zc, b, j, dc_v);
    const T dh_new = zh != nullptr ? dh_v - dh_through : dh_v;
    const T dc_new = zc != nullptr ? dc_v - dc_through : dc_v;
    const T i = gates[q], f = gates[q + H], g = gates[q + 2 * H], o = gates[q + 3 * H];
    const T tc = tanh_c[s];
    const T dcell = dc_new + dh_new * o * tanh_grad<T>(tc);
    dz[q] = dcell * g * sigmoid_grad<T>(i);
    dz[q + H] = dcell * c_prev[at(b, j, ld_c_prev)] * sigmoid_grad<T>(f);
    dz[q + 2 * H] = dcell * i * tanh_grad<T>(g);
    dz[q + 3 * H] = dh_new * tc * sigmoid_grad<T>(o);
    const T carried_c = keep ? T(0) : dc_in;
    dc_prev[s] = dcell * f + (zc == nullptr ? carried_c
                              : (valid == nullptr ? dc_through : carried_c + dc_through));
    if (dh_carried != nullptr) {
        const T carried = keep ? T(0) : dh_in;
        dh_carried[s] = valid == nullptr ? dh_through : (zh == nullptr ? carried : carried + dh_through);
    }
}
