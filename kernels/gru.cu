// GRU pointwise steps (gate order r, z, n as in PyTorch). Twin of rnncore/cells/gru.py.
//
// Reset-after (PyTorch, cuDNN), x_g and h_g (B, 3H) with biases in:
//     r = sigmoid(x_r + h_r)   z = sigmoid(x_z + h_z)   n = tanh(x_n + r h_n)
//     h = n + z (h_prev - n)                            (= (1 - z) n + z h_prev)
// Backward (gru_backward), dh zeroed on padded rows and carried past them instead:
//     da_n = dh (1 - z) tanh_grad(n)
//     dx_g = [da_n h_n sigmoid_grad(r), dh (h_prev - n) sigmoid_grad(z), da_n]
//     dh_g = [same r block, same z block, da_n r]
//     dh_prev = dh z (+ carried dh)
// Original (Cho et al. 2014), in two halves around the second recurrent GEMM:
//     gru_gates_forward:      r, z = sigmoid(x_rz + h_rz),  rh = r h_prev
//     gru_candidate_forward:  n = tanh(x_n + (r h_prev) W_hn^T + b_hn),  h = n + z (h_prev - n)
// and backward around the GEMM d(rh) = da_n W_hn:
//     gru_candidate_backward: da_n = dh (1 - z) tanh_grad(n)
//     gru_gates_backward:     dx_r = d(rh) h_prev r (1 - r),  dx_z = dh (h_prev - n) z (1 - z),
//                             dh_prev += dh z + d(rh) r  (+ carried dh)
// (the products are written out in the reference's order, so the CPU build is bitwise equal)
// Zoneout (zh, null when off; kernels/zoneout.cuh): h = h~ + zh (h_prev - h~) after the
// formulas above, and backward dh~ = dh - zh dh, with zh dh reaching dh_prev directly.
// Padded rows keep h_prev exactly.
#include "common.cuh"
#include "zoneout.cuh"

template <typename T>
__global__ void gru_forward(int B, int H,
                            const T* __restrict__ xg, int ld_xg,
                            const T* __restrict__ hg, int ld_hg,
                            const T* __restrict__ h_prev, int ld_h_prev,
                            const bool* __restrict__ valid,
                            const T* __restrict__ zh, int ld_zh,
                            T* __restrict__ h, T* __restrict__ r_out,
                            T* __restrict__ z_out, T* __restrict__ n_out) {
    int b, j;
    if (!element_index(B, H, b, j)) return;
    const long long x = at(b, j, ld_xg), q = at(b, j, ld_hg), s = at(b, j, H);
    const T r = sigmoid<T>(xg[x] + hg[q]);
    const T z = sigmoid<T>(xg[x + H] + hg[q + H]);
    const T n = tanh_<T>(xg[x + 2 * H] + r * hg[q + 2 * H]);
    const T hp = h_prev[at(b, j, ld_h_prev)];
    r_out[s] = r;
    z_out[s] = z;
    n_out[s] = n;
    h[s] = is_valid(valid, b) ? zone_out<T>(zh, ld_zh, b, j, n + z * (hp - n), hp) : hp;
}

template <typename T>
__global__ void gru_backward(int B, int H,
                             const T* __restrict__ dh, int ld_dh,
                             const T* __restrict__ h_prev, int ld_h_prev,
                             const T* __restrict__ r_in, const T* __restrict__ z_in,
                             const T* __restrict__ n_in,
                             const T* __restrict__ hn, int ld_hn,
                             const bool* __restrict__ valid,
                             const T* __restrict__ zh, int ld_zh,
                             T* __restrict__ dxg, T* __restrict__ dhg,
                             T* __restrict__ dh_prev) {
    int b, j;
    if (!element_index(B, H, b, j)) return;
    const long long s = at(b, j, H), q = at(b, j, 3 * H);
    const bool keep = is_valid(valid, b);
    const T dh_in = dh[at(b, j, ld_dh)];
    const T d_v = keep ? dh_in : T(0);
    const T through = zone_through<T>(zh, ld_zh, b, j, d_v);
    const T d = zh != nullptr ? d_v - through : d_v;
    const T r = r_in[s], z = z_in[s], n = n_in[s];
    const T da_n = d * (T(1) - z) * tanh_grad<T>(n);
    const T da_r = da_n * hn[at(b, j, ld_hn)] * sigmoid_grad<T>(r);
    const T da_z = d * (h_prev[at(b, j, ld_h_prev)] - n) * sigmoid_grad<T>(z);
    dxg[q] = da_r;
    dxg[q + H] = da_z;
    dxg[q + 2 * H] = da_n;
    dhg[q] = da_r;
    dhg[q + H] = da_z;
    dhg[q + 2 * H] = da_n * r;
    const T carried = keep ? T(0) : dh_in;
    dh_prev[s] = d * z + (zh == nullptr ? carried
                          : (valid == nullptr ? through : carried + through));
}

template <typename T>
__global__ void gru_gates_forward(int B, int H,
                                  const T* __restrict__ xg_rz, int ld_xg,
                                  const T* __restrict__ hg_rz, int ld_hg,
                                  const T* __restrict__ h_prev, int ld_h_prev,
                                  T* __restrict__ r_out, T* __restrict__ z_out,
                                  T* __restrict__ rh_out) {
    int b, j;
    if (!element_index(B, H, b, j)) return;
    const long long x = at(b, j, ld_xg), q = at(b, j, ld_hg), s = at(b, j, H);
    const T r = sigmoid<T>(xg_rz[x] + hg_rz[q]);
    r_out[s] = r;
    z_out[s] = sigmoid<T>(xg_rz[x + H] + hg_rz[q + H]);
    rh_out[s] = r * h_prev[at(b, j, ld_h_prev)];
}

template <typename T>
__global__ void gru_candidate_forward(int B, int H,
                                      const T* __restrict__ xg_n, int ld_xg,
                                      const T* __restrict__ rhg_n, int ld_rhg,
                                      const T* __restrict__ z_in, int ld_z,
                                      const T* __restrict__ h_prev, int ld_h_prev,
                                      const bool* __restrict__ valid,
                                      const T* __restrict__ zh, int ld_zh,
                                      T* __restrict__ h, T* __restrict__ n_out) {
    int b, j;
    if (!element_index(B, H, b, j)) return;
    const long long s = at(b, j, H);
    const T n = tanh_<T>(xg_n[at(b, j, ld_xg)] + rhg_n[at(b, j, ld_rhg)]);
    const T z = z_in[at(b, j, ld_z)], hp = h_prev[at(b, j, ld_h_prev)];
    n_out[s] = n;
    h[s] = is_valid(valid, b) ? zone_out<T>(zh, ld_zh, b, j, n + z * (hp - n), hp) : hp;
}

template <typename T>
__global__ void gru_candidate_backward(int B, int H,
                                       const T* __restrict__ dh, int ld_dh,
                                       const T* __restrict__ z_in, int ld_z,
                                       const T* __restrict__ n_in, int ld_n,
                                       const bool* __restrict__ valid,
                                       const T* __restrict__ zh, int ld_zh,
                                       T* __restrict__ da_n, int ld_da_n) {
    int b, j;
    if (!element_index(B, H, b, j)) return;
    const T d_v = is_valid(valid, b) ? dh[at(b, j, ld_dh)] : T(0);
    const T d = zh != nullptr ? d_v - zone_through<T>(zh, ld_zh, b, j, d_v) : d_v;
    da_n[at(b, j, ld_da_n)] = d * (T(1) - z_in[at(b, j, ld_z)]) * tanh_grad<T>(n_in[at(b, j, ld_n)]);
}

template <typename T>
__global__ void gru_gates_backward(int B, int H,
                                   const T* __restrict__ dh, int ld_dh,
                                   const T* __restrict__ drh, int ld_drh,
                                   const T* __restrict__ h_prev, int ld_h_prev,
                                   const T* __restrict__ r_in, int ld_r,
                                   const T* __restrict__ z_in, int ld_z,
                                   const T* __restrict__ n_in, int ld_n,
                                   const bool* __restrict__ valid,
                                   const T* __restrict__ zh, int ld_zh,
                                   T* __restrict__ dxg_rz, int ld_dxg,
                                   T* __restrict__ dh_prev, int ld_dh_prev) {
    int b, j;
    if (!element_index(B, H, b, j)) return;
    const bool keep = is_valid(valid, b);
    const T dh_in = dh[at(b, j, ld_dh)];
    const T d_v = keep ? dh_in : T(0);
    const T through = zone_through<T>(zh, ld_zh, b, j, d_v);
    const T d = zh != nullptr ? d_v - through : d_v;
    const T g = drh[at(b, j, ld_drh)], hp = h_prev[at(b, j, ld_h_prev)];
    const T r = r_in[at(b, j, ld_r)], z = z_in[at(b, j, ld_z)], n = n_in[at(b, j, ld_n)];
    const long long q = at(b, j, ld_dxg);
    dxg_rz[q] = g * hp * r * (T(1) - r);
    dxg_rz[q + H] = d * (hp - n) * z * (T(1) - z);
    const long long s = at(b, j, ld_dh_prev);
    T acc = dh_prev[s] + (d * z + g * r);
    const T carried = keep ? T(0) : dh_in;
    if (zh != nullptr) acc = acc + (valid == nullptr ? through : carried + through);
    else if (valid != nullptr) acc = acc + carried;
    dh_prev[s] = acc;
}
