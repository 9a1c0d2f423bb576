// A segment of a cell's compiled backward, in one call: the time loop (the cell's backward,
// cpu_loop.h) a piece at a time, and after each complete chunk of ∂z the products hoisted
// out of it (hoisted.h: ∂W_ih, ∂W_hh, ∂b, and ∂x where the loop does not compute it), while
// the chunk is still in cache.
//
// ∂z is kept for one chunk of loop positions at a time, (rows, chunk·B) with row stride
// chunk·B, the layout the weight-gradient GEMMs read. Chunk boundaries are fixed loop
// positions (multiples of `chunk`), segments (recompute, rnncore/drivers/compiled_cpu.py)
// are arbitrary, so a piece is a chunk ∩ segment, and a chunk split over two segments is
// finished by the second call. Loop position k is time step t(k) = k, or T − 1 − k for the
// reverse direction; the loop runs from the segment's last position down to its first.
#pragma once
#include <optional>

#include "cpu_loop.h"
#include "hoisted.h"

namespace cpu_loop {

template <typename T> struct ChunkedArgs {
    int64_t first, end;         // the segment's loop positions [first, end)
    int64_t seg_lo;             // its first time step: step 0 of the saved buffers in Args
    int64_t total;              // T
    int64_t chunk;              // loop positions per chunk of ∂z
    int64_t saved_width[8];     // of each Args::saved buffer, in units of H (W of (T, W·H, B))
    int64_t state_slot[2];      // the saved buffer of each state, or −1
    const T* checkpoint[2];     // the state the segment starts from, feature-major (H, B)
    const T* x;                 // (T, B, I) the layer's input
    const T* h;                 // (T, B, H) its output h_t
    const T* h0;                // (B, H) h before the first step
    T* dx;                      // (T, B, I) or null
    T* h_prev;                  // (chunk·B, H) scratch: a chunk's h_{t−1} when it takes h0
    HoistedArgs<T> products;    // groups, hidden, input, threads, w_ih, the ∂W, ∂b
    int64_t buffers;            // ∂z chunks Args::grads hold, one after the other: chunk q
                                //   (loop positions q·chunk …) in buffer q % buffers
};

template <typename T> class Chunks {
  public:
    // input_t: W_ihᵀ where the loop computes ∂x (BackwardProducts), else null
    Chunks(const Args<T>& a, const ChunkedArgs<T>& c, const StepProduct<T>& recurrent_t,
           const StepProduct<T>* input_t)
        : a_(a), c_(c), recurrent_t_(recurrent_t), input_t_(input_t) {}
    int64_t step(int64_t k) const { return a_.reverse ? c_.total - 1 - k : k; }
    // where the ∂z chunk holding loop position k starts in Args::grads
    int64_t buffer_offset(int64_t k) const {
        return k / c_.chunk % c_.buffers * c_.products.groups * a_.hidden * c_.chunk * a_.batch;
    }
    // the first time step of loop positions [k, k + n)
    int64_t first_step(int64_t k, int64_t n) const { return std::min(step(k), step(k + n - 1)); }

    // Args for the time loop over loop positions [p0, p1) of the segment
    Args<T> piece(int64_t p0, int64_t p1) const {
        const int64_t H = a_.hidden, B = a_.batch, HB = H * B, n = p1 - p0;
        const int64_t t_lo = first_step(p0, n), c0 = p0 / c_.chunk * c_.chunk;
        const int64_t c_lo = first_step(c0, std::min(c_.total, c0 + c_.chunk) - c0);
        Args<T> p = a_;
        p.steps = n;
        p.valid = a_.valid ? a_.valid + t_lo * B : nullptr;
        p.dh = a_.dh + t_lo * HB;
        p.dh0 = p0 == 0 ? a_.dh0 : a_.dh + step(p0 - 1) * HB;
        p.dout = a_.dout ? a_.dout + t_lo * HB : nullptr;
        p.dout0 = a_.dout && p0 > 0 ? a_.dout + step(p0 - 1) * HB : nullptr;
        for (int k = 0; k < 8; ++k)
            p.saved[k] = a_.saved[k] && c_.saved_width[k]
                             ? a_.saved[k] + (t_lo - c_.seg_lo) * c_.saved_width[k] * HB
                             : a_.saved[k];
        for (int s = 0; s < 2; ++s) {  // the state before the piece's first step
            const int64_t slot = c_.state_slot[s];
            p.state0[s] = p0 == c_.first ? c_.checkpoint[s]
                          : slot >= 0 && a_.saved[slot]
                              ? a_.saved[slot] + (step(p0 - 1) - c_.seg_lo) * HB
                              : nullptr;
        }
        for (int k = 0; k < 2; ++k)  // step t_lo's columns of the chunk
            p.grads[k] = a_.grads[k] ? a_.grads[k] + buffer_offset(p0) + (t_lo - c_lo) * B
                                     : nullptr;
        p.grads[3] = a_.grads[3] ? a_.grads[3] + t_lo * HB : nullptr;
        return p;
    }

    // the step products of the loop over loop positions [p0, p1)
    BackwardProducts<T> step_products(int64_t p0, int64_t p1) const {
        const int64_t t_lo = first_step(p0, p1 - p0);
        return {recurrent_t_, input_t_,
                input_t_ ? c_.dx + t_lo * a_.batch * c_.products.input : nullptr};
    }

    // the hoisted products of the chunk at loop positions [c0, …)
    HoistedArgs<T> products(int64_t c0) const {
        const int64_t B = a_.batch, H = a_.hidden, I = c_.products.input, T_ = c_.total;
        const int64_t n = std::min(T_, c0 + c_.chunk) - c0, lo = first_step(c0, n), hi = lo + n;
        HoistedArgs<T> h = c_.products;
        h.columns = n * B;
        h.stride = c_.chunk * B;
        h.x = c_.x + lo * B * I;
        h.dx = c_.dx && !input_t_ ? c_.dx + lo * B * I : nullptr;
        h.dxg = a_.grads[0] + buffer_offset(c0);
        h.dhg = a_.grads[1] ? a_.grads[1] + buffer_offset(c0) : nullptr;
        // h_{t−1} of steps lo … hi − 1: h[lo − 1 … hi − 2] (h0 first at lo = 0), or for the
        // reverse direction h[lo + 1 … hi] (h0 last at hi = T)
        const bool takes_h0 = a_.reverse ? hi == T_ : lo == 0;
        if (!takes_h0) {
            h.h_prev = c_.h + (a_.reverse ? lo + 1 : lo - 1) * B * H;
        } else {
            const int64_t BH = B * H, rest = (n - 1) * BH;
            T* to = c_.h_prev;
            const T* from = c_.h + (a_.reverse ? lo + 1 : 0) * BH;
            std::memcpy(to + (a_.reverse ? 0 : BH), from, sizeof(T) * rest);
            std::memcpy(to + (a_.reverse ? rest : 0), c_.h0, sizeof(T) * BH);
            h.h_prev = to;
        }
        return h;
    }

  private:
    const Args<T>& a_;
    const ChunkedArgs<T>& c_;
    const StepProduct<T>& recurrent_t_;
    const StepProduct<T>* input_t_;
};

// for the tests
inline std::atomic<int64_t> pipelined_calls{0};
inline std::atomic<int64_t> input_grad_in_loop_segments{0};

// The pieces of a segment's backward on a team of n threads, with the products of each
// finished chunk in n fixed shares (weight_grads_share: the same arithmetic as
// weight_grads on n threads, whichever thread runs a share). Thread 0 runs the time loop
// alone, a piece at a time; the others take the shares of finished chunks in order. Before
// the loop writes a chunk into a buffer, the shares of the chunk that used it last must be
// done: until they are, and once the loop is over, thread 0 takes shares too. A share of
// chunk i waits for the same share of chunk i − 1 (both add into the same rows of ∂W, ∂b).
//
// The time loop's step is small at H 128 (a step's product 14 µs on each of two threads),
// so split over the threads it waited at a barrier every step (1.3× as fast on two threads
// as on one), while the hoisted GEMMs ran 1.8× as fast.
template <typename T, typename Loop>
void pipelined_chunks(const Blas& blas, const Args<T>& a, const ChunkedArgs<T>& c,
                      const Chunks<T>& chunks, Loop loop) {
    pipelined_calls.fetch_add(1, std::memory_order_relaxed);
    const int64_t n = a.threads, first_chunk = (c.end - 1) / c.chunk;
    const int64_t pieces = first_chunk - c.first / c.chunk + 1;
    // piece i covers chunk first_chunk − i; all but perhaps the last complete their chunk
    const int64_t complete = c.first % c.chunk ? pieces - 1 : pieces, shares = complete * n;
    std::vector<HoistedArgs<T>> products(complete);
    std::atomic<int64_t> ready{0}, next{0};
    std::vector<std::atomic<int>> done(shares);
    for (auto& d : done) d.store(0, std::memory_order_relaxed);
    auto chunk_done = [&](int64_t i) {
        for (int64_t k = 0; k < n; ++k)
            if (!done[i * n + k].load(std::memory_order_acquire)) return false;
        return true;
    };
    // claims and runs the next share if its chunk is ready; false if there was none
    auto run_share = [&]() {
        int64_t s = next.load(std::memory_order_relaxed);
        if (s >= shares || s / n >= ready.load(std::memory_order_acquire)) return false;
        if (!next.compare_exchange_strong(s, s + 1)) return true;
        if (s >= n)
            while (!done[s - n].load(std::memory_order_acquire)) spin_pause();
        weight_grads_share(blas, products[s / n], s % n, n);
        done[s].store(1, std::memory_order_release);
        return true;
    };
    auto run_piece = [&](int64_t i, int64_t threads) {  // piece i of the loop
        const int64_t p1 = i == 0 ? c.end : (first_chunk - i + 1) * c.chunk;
        const int64_t p0 = std::max(c.first, (first_chunk - i) * c.chunk);
        Args<T> piece = chunks.piece(p0, p1);
        piece.threads = threads;
        loop(chunks.step_products(p0, p1), piece);
        if (i < complete) {
            products[i] = chunks.products(p0);
            ready.store(i + 1, std::memory_order_release);
        }
    };
    run_piece(0, n);  // there are no shares to take yet: the first piece on every thread
#pragma omp parallel num_threads(int(n))
    {
        if (omp_get_thread_num() == 0) {
            for (int64_t i = 1; i < pieces; ++i) {
                while (i >= c.buffers && !chunk_done(i - c.buffers))  // its buffer's last chunk
                    if (!run_share()) spin_pause();
                run_piece(i, 1);
            }
        }
        while (next.load(std::memory_order_relaxed) < shares)
            if (!run_share()) spin_pause();
    }
}

// Whether the loop computes ∂x a step at a time (BackwardProducts): where ∂x is asked
// for, the loop's d_t is ∂x_g,t (no separate ∂h_g: the LSTM, the RNN) and the batch is 8
// or more. A step's ∂x reads all of W_ih for B columns; below 8 one BLAS product of a
// chunk's columns is faster. Forward + backward against that product (AMD EPYC, one
// process, interleaved; one thread, two): LSTM 3×512 (B 64) 0.984, 0.996; LSTM 1×128
// (B 32) 0.984, 1.012; B 20 0.988, 0.987; B 8 0.971, 0.936; LSTM 1×512 B 64 0.985,
// 1.002; B 8 1.007, 0.922; B 4 1.015, 1.025 (LSTM 1×128 B 4: 1.044, 0.998).
constexpr int64_t JOIN_INPUT_GRAD_MIN_BATCH = 8;
template <typename T> bool joins_input_grad(const Args<T>& a, const ChunkedArgs<T>& c) {
    return c.dx && !a.grads[1] && a.batch >= JOIN_INPUT_GRAD_MIN_BATCH;
}

// The segment's backward: pieces from its last loop position down, each followed, when it
// completes its chunk, by that chunk's products. The loop's products, ∂h_{t−1} += W_hhᵀ d_t
// and where it computes ∂x (joins_input_grad) W_ihᵀ d_t, are packed once for all of them
// (packed per piece, W_hhᵀ was 1.8 % of an LSTM 3×512 forward + backward at one thread,
// 3.2 % at two: 27 pieces, one thread packing).
//
// On several threads (and with more than one ∂z buffer) the two run side by side instead
// (pipelined_chunks): the loop on one thread, the products of the chunks it has finished on
// the others.
template <typename T, typename Loop>
void backward_chunks(const Blas& blas, const Args<T>& a, const ChunkedArgs<T>& c, Loop loop) {
    if (c.end <= c.first) return;
    const int64_t H = a.hidden, GH = c.products.groups * H;
    const StepProduct<T> recurrent_t(a.w_hh, true, 1, H, GH, a.batch, a.threads);
    std::optional<StepProduct<T>> input_t;
    if (joins_input_grad(a, c)) {
        input_grad_in_loop_segments.fetch_add(1, std::memory_order_relaxed);
        input_t.emplace(c.products.w_ih, true, 1, c.products.input, GH, a.batch, a.threads);
    }
    const Chunks<T> chunks(a, c, recurrent_t, input_t ? &*input_t : nullptr);
    if (a.threads > 1 && c.buffers > 1) return pipelined_chunks(blas, a, c, chunks, loop);
    for (int64_t p1 = c.end; p1 > c.first;) {
        const int64_t p0 = std::max(c.first, (p1 - 1) / c.chunk * c.chunk);
        loop(chunks.step_products(p0, p1), chunks.piece(p0, p1));
        if (p0 % c.chunk == 0) weight_grads<T>(blas, chunks.products(p0));
        p1 = p0;
    }
}

}  // namespace cpu_loop

extern "C" int64_t cpu_loop_pipelined_calls() { return cpu_loop::pipelined_calls.load(); }
extern "C" int64_t cpu_loop_input_grad_in_loop_segments() {
    return cpu_loop::input_grad_in_loop_segments.load();
}

// A cell's backward export: <name>(blas, segment Args, ChunkedArgs)
#define RNNCORE_CPU_EXPORT_BACKWARD(name, fn, T)                                          \
    extern "C" void name(const cpu_loop::Blas* blas, const cpu_loop::Args<T>* a,          \
                         const cpu_loop::ChunkedArgs<T>* c) {                             \
        cpu_loop::backward_chunks<T>(*blas, *a, *c, fn<T>);                               \
    }
