// The recurrent-dropout masks (Gal & Ghahramani 2016). Twin of rnncore/cells/regularise.py.
//
//     mask_multiply:    out = h m                 (m ⊙ h_{t-1}, the recurrent GEMM's operand)
//     mask_accumulate:  acc += g m                (∂h_{t-1} += m ⊙ (∂h_g W_hh))
// m is the sequence's mask (1/(1-p) or 0), read through its leading dimension.
// Zoneout is applied inside each cell's own kernels (their zh / zc arguments).
#include "common.cuh"

template <typename T>
__global__ void mask_multiply(int B, int H,
                              const T* __restrict__ h, int ld_h,
                              const T* __restrict__ m, int ld_m,
                              T* __restrict__ out) {
    int b, j;
    if (!element_index(B, H, b, j)) return;
    out[at(b, j, H)] = h[at(b, j, ld_h)] * m[at(b, j, ld_m)];
}

template <typename T>
__global__ void mask_accumulate(int B, int H,
                                const T* __restrict__ g, int ld_g,
                                const T* __restrict__ m, int ld_m,
                                T* __restrict__ acc, int ld_acc) {
    int b, j;
    if (!element_index(B, H, b, j)) return;
    const long long s = at(b, j, ld_acc);
    acc[s] = acc[s] + g[at(b, j, ld_g)] * m[at(b, j, ld_m)];
}
