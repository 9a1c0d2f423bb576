// Persistent LSTM: one cooperative launch runs all T steps of one layer direction.
// The host side is rnncore/drivers/persistent.py; the per-step twin is lstm.cu.
//
// Work split. The H hidden units are cut into slices of U consecutive units; block k owns
// units j0 = k U .. j0 + U − 1 (the last slice may be shorter) for every batch row b. Each
// thread owns fixed (b, j) elements of that slice (element e = threadIdx.x + n blockDim.x of
// the block's B × U elements), the same at every step, so per-element state (c, ∂c) never
// moves between threads. The block keeps the part of W_hh its units need in shared memory
// for the whole launch; h (forward) or ∂z (backward) of the previous step is read from global
// memory, written there by all blocks before a grid-wide barrier.
//
// Forward, steps s = 0..T−1, t = s (or T−1−s when reverse), t' the step before (h_{t'} = h0
// at s = 0); shared W[g][u][k] = W_hh[g H + j0 + u][k] (4 U H values):
//     z_g  = x_g[t][b][g H + j] + Σ_{k=0..H−1} W[g][u][k] h_{t'}[b][k]     (k in order)
//     i, f, g, o, c, h as in lstm.cu; a padded row (valid[t][b] false) keeps h_{t'}, c_{t'}
//     grid sync (every h_t written before any block reads it)
// Saved for the backward: gates (T, B, 4H), c (T, B, H), tanh(c) (T, B, H), h (T, B, H).
//
// Backward, steps s = 0..T−1 over t in the opposite order, then one last phase s = T;
// shared Wt[u][r] = W_hh[r][j0 + u] (4 H U values: the columns of W_hh the slice's units get
// their gradient through). ∂h (T, B, H) holds ∂L/∂out (and ∂L/∂h_T added at the last step)
// and is overwritten with the whole gradient reaching h_t; ∂c (B, H) starts as ∂L/∂c_T.
// With t⁺ the step handled before t (the next one in time):
//     ∂h_t = ∂h[t] + carried_{t⁺} + Σ_{r=0..4H−1} ∂z_{t⁺}[b][r] Wt[u][r]       (r in order)
//         carried_{t⁺} = ∂h_{t⁺} on a padded row of t⁺, else 0; both terms absent at s = 0
//     ∂z_t, ∂c as lstm.cu's lstm_backward (∂z_t written to dxg[t]; a padded row gives ∂z 0
//     and carries ∂c unchanged)
//     grid sync (every ∂z_t written before any block reads it)
// The last phase writes ∂h_0 = carried + ∂z W_hh of the last step handled.
// The weight gradients are not formed here: ∂W_hh = Σ_t ∂z_tᵀ h_{t−1} is one GEMM afterwards.
//
// Sums run in a fixed order in one thread, no atomics: the same bits on every run, on the
// GPU and in the host emulation alike. Launch: a cooperative launch of ⌈H / U⌉ blocks (all
// resident at once), 4 U H values of T of dynamic shared memory.
#include "common.cuh"
#include "cooperate.cuh"
#include "grid_sync.cuh"

// Offset of the (t, b) row of a (T, B, width) array.
__device__ __forceinline__ long long row(int t, int b, int B, int width) {
    return ((long long)t * B + b) * width;
}

template <typename T>
__global__ void persistent_lstm_forward(int steps, int B, int H, int U, int reverse,
                                        const T* __restrict__ xg,    // (T, B, 4H)
                                        const T* __restrict__ w_hh,  // (4H, H)
                                        const T* __restrict__ h0, const T* __restrict__ c0,
                                        const bool* __restrict__ valid,  // (T, B) or null
                                        T* __restrict__ h, T* __restrict__ c,
                                        T* __restrict__ gates, T* __restrict__ tanh_c) {
    T* const w = dynamic_shared<T>();
    const int j0 = (int)blockIdx.x * U;
    const int units = H - j0 < U ? H - j0 : U;
    for (int e = (int)block_thread_rank(); e < 4 * units * H; e += (int)block_size()) {
        const int g = e / (units * H), u = (e / H) % units, k = e % H;
        w[((long long)g * U + u) * H + k] = w_hh[((long long)g * H + j0 + u) * H + k];
    }
    block_sync();
    for (int s = 0; s < steps; ++s) {
        const int t = reverse ? steps - 1 - s : s;
        const int tp = reverse ? t + 1 : t - 1;
        for (int e = (int)block_thread_rank(); e < B * units; e += (int)block_size()) {
            const int b = e / units, u = e % units, j = j0 + u;
            const T* hp = s == 0 ? h0 + (long long)b * H : h + row(tp, b, B, H);
            const T cp = s == 0 ? c0[(long long)b * H + j] : c[row(tp, b, B, H) + j];
            T z[4];
            for (int g = 0; g < 4; ++g) {
                const T* wr = w + ((long long)g * U + u) * H;
                T acc = T(0);
                for (int k = 0; k < H; ++k) acc += wr[k] * hp[k];
                z[g] = xg[row(t, b, B, 4 * H) + g * H + j] + acc;
            }
            const T i = sigmoid<T>(z[0]), f = sigmoid<T>(z[1]);
            const T gg = tanh_<T>(z[2]), o = sigmoid<T>(z[3]);
            const T c_new = f * cp + i * gg;
            const T tc = tanh_<T>(c_new);
            const long long q = row(t, b, B, 4 * H) + j, r = row(t, b, B, H) + j;
            gates[q] = i;
            gates[q + H] = f;
            gates[q + 2 * H] = gg;
            gates[q + 3 * H] = o;
            tanh_c[r] = tc;
            const bool keep = valid == nullptr || valid[(long long)t * B + b];
            h[r] = keep ? o * tc : hp[j];
            c[r] = keep ? c_new : cp;
        }
        grid_sync();
    }
}

template <typename T>
__global__ void persistent_lstm_backward(int steps, int B, int H, int U, int reverse,
                                         const T* __restrict__ w_hh,   // (4H, H)
                                         const T* __restrict__ gates,  // (T, B, 4H)
                                         const T* __restrict__ c,      // (T, B, H)
                                         const T* __restrict__ tanh_c, // (T, B, H)
                                         const T* __restrict__ c0,     // (B, H)
                                         const bool* __restrict__ valid,  // (T, B) or null
                                         T* __restrict__ dh,     // (T, B, H), in and out
                                         T* __restrict__ dc,     // (B, H), in and out
                                         T* __restrict__ dxg,    // (T, B, 4H): ∂z
                                         T* __restrict__ dh0) {  // (B, H)
    T* const wt = dynamic_shared<T>();
    const int j0 = (int)blockIdx.x * U;
    const int units = H - j0 < U ? H - j0 : U;
    const int G = 4 * H;
    for (int e = (int)block_thread_rank(); e < units * G; e += (int)block_size()) {
        const int u = e / G, r = e % G;
        wt[(long long)u * G + r] = w_hh[(long long)r * H + j0 + u];
    }
    block_sync();
    for (int s = 0; s <= steps; ++s) {
        // t: the step handled now (none at s = steps); tn: the one handled before it
        const int t = reverse ? s : steps - 1 - s;
        const int tn = reverse ? t - 1 : t + 1;
        for (int e = (int)block_thread_rank(); e < B * units; e += (int)block_size()) {
            const int b = e / units, u = e % units, j = j0 + u;
            T dh_t = s < steps ? dh[row(t, b, B, H) + j] : T(0);
            if (s > 0) {
                const bool kept = valid == nullptr || valid[(long long)tn * B + b];
                if (!kept) dh_t += dh[row(tn, b, B, H) + j];
                const T* dz = dxg + row(tn, b, B, G);
                const T* wr = wt + (long long)u * G;
                T acc = T(0);
                for (int r = 0; r < G; ++r) acc += dz[r] * wr[r];
                dh_t += acc;
            }
            if (s == steps) {
                dh0[(long long)b * H + j] = dh_t;
                continue;
            }
            dh[row(t, b, B, H) + j] = dh_t;
            const bool keep = valid == nullptr || valid[(long long)t * B + b];
            const T dc_in = dc[(long long)b * H + j];
            const T dh_new = keep ? dh_t : T(0), dc_new = keep ? dc_in : T(0);
            const long long q = row(t, b, B, G) + j;
            const T i = gates[q], f = gates[q + H], g = gates[q + 2 * H], o = gates[q + 3 * H];
            const T tc = tanh_c[row(t, b, B, H) + j];
            const T cp = s == steps - 1 ? c0[(long long)b * H + j]
                                        : c[row(reverse ? t + 1 : t - 1, b, B, H) + j];
            const T dcell = dc_new + dh_new * o * tanh_grad<T>(tc);
            dxg[q] = dcell * g * sigmoid_grad<T>(i);
            dxg[q + H] = dcell * cp * sigmoid_grad<T>(f);
            dxg[q + 2 * H] = dcell * i * tanh_grad<T>(g);
            dxg[q + 3 * H] = dh_new * tc * sigmoid_grad<T>(o);
            dc[(long long)b * H + j] = dcell * f + (keep ? T(0) : dc_in);
        }
        if (s < steps) grid_sync();
    }
}
