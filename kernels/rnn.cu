// Elman RNN pointwise step. Twin of rnncore/cells/rnn.py.
//
//     h_new = phi(x_g + h_g),  phi = tanh or relu        h = h_new, or h_prev on padded rows
//     backward: da = dh phi'(h_new) with tanh_grad / relu_grad from the saved output;
//               dh zeroed on padded rows and carried past them (dh_carried, when valid != null)
//     zoneout (zh, null when off; kernels/zoneout.cuh): h = h_new + zh (h_prev - h_new);
//               backward da from dh - zh dh, and zh dh joins dh_carried
#include "common.cuh"
#include "zoneout.cuh"

template <typename T, bool Relu>
__device__ __forceinline__ T rnn_activation(T a) { return Relu ? relu<T>(a) : tanh_<T>(a); }

template <typename T, bool Relu>
__device__ __forceinline__ T rnn_activation_grad(T y) {
    return Relu ? relu_grad<T>(y) : tanh_grad<T>(y);
}

template <typename T, bool Relu>
__global__ void rnn_forward(int B, int H,
                            const T* __restrict__ xg, int ld_xg,
                            const T* __restrict__ hg, int ld_hg,
                            const T* __restrict__ h_prev, int ld_h_prev,
                            const bool* __restrict__ valid,
                            const T* __restrict__ zh, int ld_zh,
                            T* __restrict__ h, T* __restrict__ h_new) {
    int b, j;
    if (!element_index(B, H, b, j)) return;
    const long long s = at(b, j, H);
    const T y = rnn_activation<T, Relu>(xg[at(b, j, ld_xg)] + hg[at(b, j, ld_hg)]);
    h_new[s] = y;
    const T hp = h_prev[at(b, j, ld_h_prev)];
    h[s] = is_valid(valid, b) ? zone_out<T>(zh, ld_zh, b, j, y, hp) : hp;
}

template <typename T, bool Relu>
__global__ void rnn_backward(int B, int H,
                             const T* __restrict__ dh, int ld_dh,
                             const T* __restrict__ h_new,
                             const bool* __restrict__ valid,
                             const T* __restrict__ zh, int ld_zh,
                             T* __restrict__ da,
                             T* __restrict__ dh_carried) {  // null when valid and zh are null
    int b, j;
    if (!element_index(B, H, b, j)) return;
    const long long s = at(b, j, H);
    const bool keep = is_valid(valid, b);
    const T dh_in = dh[at(b, j, ld_dh)];
    const T d_v = keep ? dh_in : T(0);
    const T through = zone_through<T>(zh, ld_zh, b, j, d_v);
    da[s] = (zh != nullptr ? d_v - through : d_v) * rnn_activation_grad<T, Relu>(h_new[s]);
    const T carried = keep ? T(0) : dh_in;
    if (dh_carried != nullptr)
        dh_carried[s] = zh == nullptr ? carried : (valid == nullptr ? through : carried + through);
}
