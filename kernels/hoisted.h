// The products hoisted out of the time loops, for every cell, on the loops' threads:
//
//     X_g[t] = W_ih X[t]ᵀ                       (forward, when the loop does not join it)
//     ∂W_ih += ∂X_g X    ∂W_hh += ∂H_g H_prev    ∂b += Σ_columns    ∂X = ∂X_gᵀ W_ih
//
// over a chunk of n steps (backward: ∂X_g, ∂H_g are the loops' (G·H, ·, B) grads, n·B
// columns at row stride `stride`; X, H_prev the chunk's (n·B, ·) rows, batch-major). ∂X
// only where the backward's loop does not compute it a step at a time (backward_chunks.h,
// joins_input_grad).
//
// Each thread calls BLAS on its share, with BLAS itself on one thread (the driver sets
// that): a range of the weight rows, and a range of the n·B columns for ∂X. One pool of
// threads (OpenMP's) then runs the whole layer, loops and products: a BLAS pool of its own
// beside it spins after each call and takes the cores the loop's threads need (measured
// at 2 threads: the backward ran 3× slower).
#pragma once
#include "cpu_loop.h"

namespace cpu_loop {

template <typename T> struct HoistedArgs {
    int64_t groups, hidden, input, columns, stride, threads;
    const T* w_ih;   // (G·H, I)
    const T* x;      // forward: (T, B, I) with columns = T·B; backward: the chunk's (n·B, I)
    T* xg;           // forward: (T, G·H, B)
    const T* dxg;    // (G·H, ·) row stride `stride`
    const T* dhg;    // the same, or null: = dxg
    const T* h_prev; // (n·B, H)
    T* dw_ih;        // (G·H, I), accumulated
    T* dw_hh;        // (G·H, H), accumulated
    T* db_ih;        // (G·H), accumulated
    T* db_hh;        // (G·H) or null, accumulated from dhg
    T* dx;           // (n·B, I) or null
    int64_t batch;   // forward: B
};

template <typename T> T row_sum(const T* row, int64_t n) {
    T sum = T(0);
    for (int64_t c = 0; c < n; ++c) sum += row[c];
    return sum;
}

// X_g at batch 1, all the steps as the columns of one product: W_ih X[0…T−1]ᵀ by the column
// kernel (cpu_gemm.h), whose tiles store their columns, steps, as X_g's rows: (T, G·H, 1) is
// (T, G·H). Each thread takes whole tiles of steps, so a step's sums are the same on any
// number of threads. Against the one BLAS product X (T × I) · W_ihᵀ it replaced, packing
// included (the call alone, AMD EPYC, interleaved): LSTM H 128, T 100 0.84 of the time at
// one thread and at two, H 512, T 100 0.90 and 0.77; at T 1000, H 128, 256, 512 0.97, 1.01,
// 0.99 at one thread, 0.95, 0.98, 0.94 at two.
template <typename T> void input_projection_b1(const HoistedArgs<T>& a) {
    constexpr int64_t MR = column_mr<T>(), NR = 12;
    const int64_t GH = a.groups * a.hidden, I = a.input, steps = a.columns;
    PackedA<T> w_ih(1, GH, I, MR);
    pack_in_parallel(I, a.threads,
                     [&](int64_t k, int64_t n) { pack_rows(w_ih, k, a.w_ih + k, I, n); });
    AlignedArray<T> xt(I * steps);  // Xᵀ: (I, T)
    const Rows<T> x_rows[1] = {{xt.data(), I, steps}};
    const int64_t tiles = (steps + NR - 1) / NR;
#pragma omp parallel num_threads(int(a.threads))
    {
        const int64_t n = omp_get_num_threads(), k = omp_get_thread_num();
        const int64_t t0 = std::min(steps, tiles * k / n * NR);
        const int64_t t1 = std::min(steps, tiles * (k + 1) / n * NR);
        if (t1 > t0) transpose_rect(a.x + t0 * I, I, xt.data() + t0, steps, t1 - t0, I);
        for (int64_t blk = 0; blk < w_ih.blocks; ++blk)
            for (int64_t col = t0; col < t1; col += NR)
                tile_columns_upto<T, NR, true>(std::min(NR, t1 - col), w_ih.block(0, blk),
                                               x_rows, 1, GH, col, a.xg + blk * MR,
                                               std::min(MR, GH - blk * MR), false);
    }
}

// X_g[t] = W_ih X[t]ᵀ, each thread its range of steps, through the step kernels
// (cpu_gemm.h): W_ih packed once, X[t] laid out feature-major, (I, B), a step at a time;
// BLAS packed both operands at every step (the GRU's forward, LSTM 3×512's shape: 45 % of
// the time in BLAS against 34 % in the kernel for the recurrent products' equal FLOPs,
// perf, Intel Xeon). With one sequence a step at a time would be a matrix-vector product
// that reads all of W_ih for one column: input_projection_b1 instead.
template <typename T> void input_projection(const Blas&, const HoistedArgs<T>& a) {
    const int64_t GH = a.groups * a.hidden, B = a.batch, I = a.input, steps = a.columns / B;
    if (B == 1) return input_projection_b1(a);
    PackedA<T> w_ih(1, GH, I, pick_mr(GH, I, B, sizeof(T)));
    pack_in_parallel(I, a.threads,
                     [&](int64_t k, int64_t n) { pack_rows(w_ih, k, a.w_ih + k, I, n); });
#pragma omp parallel num_threads(int(a.threads))
    {
        const int64_t n = omp_get_num_threads(), k = omp_get_thread_num();
        AlignedArray<T> x_fm(I * B);
        const Rows<T> x_t[1] = {{x_fm.data(), I, B}};
        for (int64_t t = steps * k / n; t < steps * (k + 1) / n; ++t) {
            transpose_rect(a.x + t * B * I, I, x_fm.data(), B, B, I);
            gemm_packed<T>(w_ih, x_t, 1, B, a.xg + t * GH * B, false, Units{0, GH});
        }
    }
}

// Share k of n of a chunk's weight gradients: a contiguous range of the G·H weight rows
// (one GEMM each: BLAS packs X once a call) and a range of the N columns for ∂X. The shares
// are fixed by (k, n) alone, whichever thread runs them, so the bits are too.
template <typename T>
void weight_grads_share(const Blas& blas, const HoistedArgs<T>& a, int64_t k, int64_t n) {
    const int64_t H = a.hidden, I = a.input, N = a.columns, ld = a.stride, GH = a.groups * H;
    const T* dhg = a.dhg ? a.dhg : a.dxg;
    const int64_t r0 = GH * k / n, rows = GH * (k + 1) / n - r0;
    if (rows > 0) {
        gemm<T>(blas, false, false, rows, I, N, a.dxg + r0 * ld, ld, a.x, I, T(1),
                a.dw_ih + r0 * I, I);
        gemm<T>(blas, false, false, rows, H, N, dhg + r0 * ld, ld, a.h_prev, H, T(1),
                a.dw_hh + r0 * H, H);
    }
    for (int64_t r = r0; r < r0 + rows; ++r) {  // ∂b += Σ_columns
        a.db_ih[r] += row_sum(a.dxg + r * ld, N);
        if (a.db_hh) a.db_hh[r] += row_sum(dhg + r * ld, N);
    }
    if (a.dx) {
        const int64_t c0 = N * k / n, c1 = N * (k + 1) / n;
        if (c1 > c0)  // ∂X[c0:c1] = ∂X_g[:, c0:c1]ᵀ W_ih
            gemm<T>(blas, true, false, c1 - c0, I, a.groups * H, a.dxg + c0, ld, a.w_ih, I,
                    T(0), a.dx + c0 * I, I);
    }
}

// A chunk's weight gradients, share k on thread k of the loops' threads
template <typename T> void weight_grads(const Blas& blas, const HoistedArgs<T>& a) {
#pragma omp parallel num_threads(int(a.threads))
    weight_grads_share(blas, a, omp_get_thread_num(), omp_get_num_threads());
}

}  // namespace cpu_loop

