// The compiled CPU driver's shared mechanics: the BLAS it calls and the shim that lets the
// kernels' device helpers (common.cuh: sigmoid, tanh_, sigmoid_grad, tanh_grad, relu…)
// compile as plain inline C++, so the CPU loops use the very same helper functions.
//
// Layout: time-major, feature-major within a step. A per-step quantity of width W over T
// steps and B sequences is a (T, W, B) array: step t is one contiguous (W, B) block, element
// (w, b) at t·W·B + w·B + b. So
//   * the recurrent product of a step is one row-major GEMM  hg (G·H × B) = W_hh · h_{t−1},
//     the layout OpenBLAS runs fastest on this machine (about 1.5× the batch-major h·W_hhᵀ),
//   * a step reads and writes whole contiguous blocks (strided rows across T ran 3× slower),
//   * the element loops run over b innermost, contiguous, and vectorise (with -ffast-math
//     glibc's vector expf/tanhf are used).
#pragma once
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include <omp.h>
#include <sched.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "cpu_gemm.h"
#include "cuda_on_host.h"

#include "common.cuh"

namespace cpu_loop {

// cblas_?gemm as NumPy's OpenBLAS exports it: 64-bit integers (ILP64, "…64_" symbols) or
// 32-bit ones (LP64). Row-major, no/transposed operands: C = alpha op(A) op(B) + beta C.
enum { RowMajor = 101, NoTrans = 111, Trans = 112 };
template <typename I, typename T>
using GemmFn = void (*)(int, int, int, I, I, I, T, const T*, I, const T*, I, T, T*, I);

struct Blas {
    void* sgemm;
    void* dgemm;
    int ilp64;
};

template <typename T> void* pick(const Blas& blas);
template <> inline void* pick<float>(const Blas& blas) { return blas.sgemm; }
template <> inline void* pick<double>(const Blas& blas) { return blas.dgemm; }

template <typename T>
void gemm(const Blas& blas, bool trans_a, bool trans_b, long M, long N, long K, const T* A,
          long lda, const T* B, long ldb, T beta, T* C, long ldc) {
    const int ta = trans_a ? Trans : NoTrans, tb = trans_b ? Trans : NoTrans;
    if (blas.ilp64)
        reinterpret_cast<GemmFn<int64_t, T>>(pick<T>(blas))(RowMajor, ta, tb, M, N, K, T(1), A,
                                                            lda, B, ldb, beta, C, ldc);
    else
        reinterpret_cast<GemmFn<int32_t, T>>(pick<T>(blas))(
            RowMajor, ta, tb, (int32_t)M, (int32_t)N, (int32_t)K, T(1), A, (int32_t)lda, B,
            (int32_t)ldb, beta, C, (int32_t)ldc);
}

// The arguments of every loop, one struct for all cells (rnncore/drivers/compiled_cpu.py
// mirrors it). Each cell's loop documents what its saved[] and grads[] entries hold.
template <typename T> struct Args {
    int64_t steps, batch, hidden, reverse;
    const T* xg;            // (T, G·H, B) the hoisted input projection, without biases
    const T* w_hh;          // (G·H, H)
    const T* bias_x;        // (G·H) or null: added to the input part of each gate
    const T* bias_h;        // (G·H) or null: added to the recurrent part
    const T* state0[2];     // (H, B) each, in the cell's state order
    const uint8_t* valid;   // (T, B) or null: step t of sequence b is real
    T* saved[8];            // (T, W, B) buffers the forward writes
    T* scratch;             // (G·H, B)
    T* dh;                  // (T, H, B): ∂L/∂h_t, accumulated; starts as the masked ∂L/∂out
    T* dh0;                 // (H, B): ∂L/∂h_0, starts at zero
    T* dstate[2];           // (H, B) each: the second state's gradient, in and out (LSTM)
    T* grads[4];            // buffers the backward writes: [0], [1] (W, ·, B) with row
                            //   stride grad_stride, step t at grads + t·B (the layout the
                            //   weight-gradient GEMMs read); [3] (T, W, B)
    const T* x;             // (T, B, I) or null: the input, when the step's product takes
    const T* w_ih;          //   W_ih (G·H, I) over it and there is no xg (B > 1)
    int64_t input;          // I
    int64_t threads;        // the threads of the loop's parallel region (NumPy's BLAS count)
    int64_t grad_stride;    // of grads[0], grads[1]
    T* out;                 // (T, B, H) or null: the forward also writes h batch-major here
    const T* dout;          // (T, B, H) or null: the masked ∂L/∂out, batch-major; the backward
                            //   then starts each dh[t − 1] from it, in the loop (else the
                            //   driver has filled dh)
    const T* dout0;         //   its block of the step whose ∂h is dh0 (a piece's), or null
    T* x_copy;              // (T, B, I) or null: the forward also copies x here
    int64_t h_ring;         // 0, or saved[0] holds only the last h_ring steps' h (h_block):
                            //   where nothing after the forward reads them (the LSTM's)
};

// Step t's (H, B) block of h_t, the first saved buffer: of T blocks, or of a ring
template <typename T> T* h_block(const Args<T>& a, int64_t t) {
    return a.saved[0] + (a.h_ring ? t % a.h_ring : t) * a.hidden * a.batch;
}

template <typename T>  // below, with the other layout helpers
void transpose_rect(const T* src, int64_t ld_src, T* dst, int64_t ld_dst, int64_t rows,
                    int64_t cols, bool past_cache = false);

// Columns k0 … k0 + n − 1 of the packed blocks from n columns of a row-major W
// (groups·rows × ld). Packed from W itself, each k reads mr values a row apart: 3.7 % of the
// seed row's forward (perf, Intel Xeon; 0.2 % this way). So each group's rows are first
// transposed (in L × L tiles) and packed from the copy, where a block's values of one k are
// contiguous. Blocks of whole vectors (the column kernel's, column_mr, and doubles' 8 rows)
// are a transpose themselves, block[k][r] = W[i0 + r][k]: their rows are transposed
// straight into them, in one pass instead of two (alone, one thread, AMD EPYC: 4 MiB of
// weights packed in 120 µs instead of 305, 256 KiB in 5.8 instead of 11.2).
template <typename T>
void pack_rows(PackedA<T>& packed, int64_t k0, const T* w, int64_t ld, int64_t n) {
    const int64_t mr = packed.mr;
    if (mr % lanes<T>() == 0) {
        for (int64_t g = 0; g < packed.groups; ++g)
            for (int64_t b = 0; b < packed.blocks; ++b) {
                const int64_t i0 = b * mr, m = std::min(mr, packed.rows - i0);
                T* dst = packed.block(g, b) + k0 * mr;
                transpose_rect(w + (g * packed.rows + i0) * ld, ld, dst, mr, m, n);
                if (m < mr)  // a last, partial block's zeros
                    for (int64_t k = 0; k < n; ++k)
                        std::fill(dst + k * mr + m, dst + (k + 1) * mr, T(0));
            }
        return;
    }
    AlignedArray<T> wt(n * packed.rows);  // group g's rows of W, transposed: (n, rows)
    for (int64_t g = 0; g < packed.groups; ++g) {
        transpose_rect(w + g * packed.rows * ld, ld, wt.data(), packed.rows, packed.rows, n);
        packed.fill_group(g, k0, n, wt.data(), 1, packed.rows);
    }
}

// pack(k, n) for column ranges [k, k + n) of [0, depth) on `threads` threads, each range a
// multiple of 16 columns (the transposes' tiles) but the last. On one thread, while the
// others waited, packing took 14 ms of a 0.4 s LSTM 3×512 forward at two threads (8 ms now)
template <typename Pack> void pack_in_parallel(int64_t depth, int64_t threads, Pack pack) {
#pragma omp parallel num_threads(int(std::max<int64_t>(1, threads)))
    {
        const int64_t n = omp_get_num_threads(), id = omp_get_thread_num();
        const int64_t lo = depth * id / n / 16 * 16;
        const int64_t hi = id + 1 == n ? depth : depth * (id + 1) / n / 16 * 16;
        if (hi > lo) pack(lo, hi - lo);
    }
}

// The product a loop runs at every step, through the packed kernels (cpu_gemm.h):
// C = W · X  (forward: W_hh · h_{t−1}, optionally + W_ih · x_t)  or  C += Wᵀ · X  (backward:
// ∂h_{t−1} += W_hhᵀ ∂z_t).  W is (groups·rows × depth) row-major, or its transpose (depth ×
// rows, one group) when `transposed`. A thread computes the rows of its units in every
// group (a gate's rows of the units whose step it runs). W is packed on `threads` threads,
// in blocks for the batch's kernel (pick_mr). OpenBLAS, which the loops called per step
// where the batch was not a multiple of the lanes, packed W at every step: 45 % of a B 1,
// H 512 forward in its copy routine (perf, one thread; torch 2.9× faster there).
template <typename T> class StepProduct {
  public:
    StepProduct(const T* w, bool transposed, int64_t groups, int64_t rows, int64_t depth,
                int64_t batch, int64_t threads)
        : depth_(depth), batch_(batch),
          packed_(groups, rows, depth, pick_mr(rows, depth, batch, sizeof(T))) {
        const int64_t all_rows = groups * rows;
        if (transposed)
            pack_in_parallel(depth, threads, [&](int64_t k, int64_t n) {
                packed_.fill(k, n, w + k * all_rows, 1, all_rows);
            });
        else
            pack_in_parallel(depth, threads, [&](int64_t k, int64_t n) {
                pack_rows(packed_, k, w + k, depth, n);
            });
    }
    // A second operand W_in (groups·rows × in) over a second block of rows:
    // C = W·X + W_in·X_in.
    StepProduct(const T* w, const T* w_in, int64_t groups, int64_t rows, int64_t depth,
                int64_t in, int64_t batch, int64_t threads)
        : depth_(depth), batch_(batch),
          packed_(groups, rows, depth + in, pick_mr(rows, depth + in, batch, sizeof(T))),
          in_(in) {
        pack_in_parallel(depth, threads, [&](int64_t k, int64_t n) {
            pack_rows(packed_, k, w + k, depth, n);
        });
        pack_in_parallel(in, threads, [&](int64_t k, int64_t n) {
            pack_rows(packed_, depth + k, w_in + k, in, n);
        });
    }
    int64_t block_rows() const { return packed_.mr; }
    int64_t rows() const { return packed_.groups * packed_.rows; }
    int64_t depth() const { return depth_; }
    // X's row k at x + k·B, X_in's at x_in + k·B
    void operator()(const T* x, T* c, bool accumulate, Units units,
                    const T* x_in = nullptr) const {
        const Rows<T> segs[2] = {{x, depth_, batch_}, {x_in, in_, batch_}};
        gemm_packed<T>(packed_, segs, x_in ? 2 : 1, batch_, c, accumulate, units);
    }

  private:
    int64_t depth_, batch_;
    PackedA<T> packed_;
    int64_t in_ = 0;
};

// This thread's units of an even split: the H units over the team in whole blocks of mr
// (cpu_gemm.h), so each thread's rows are whole blocks of the packed weights. The time
// loops start from it and then move it (UnitShares).
inline Units my_units(int64_t H, int64_t mr) {
    const int64_t blocks = (H + mr - 1) / mr, n = omp_get_num_threads(),
                  k = omp_get_thread_num();
    return {std::min(H, blocks * k / n * mr), std::min(H, blocks * (k + 1) / n * mr)};
}

// The threads' shares of the H units of a loop, in whole blocks of mr, moved step by step
// toward the speed each thread shows. On a shared host one vCPU can run a third slower than
// the other for seconds at a time (the packed kernel alone, one thread on each vCPU in turn:
// 116 against 175 GFLOP/s), and with even shares the faster thread then waits at every
// step's barrier. A unit's arithmetic does not depend on the thread that runs it, so the
// results are the same for any shares. Each thread keeps its own copy of the boundaries
// and moves them the same way, from the times every thread recorded for the step before,
// in one of two slots by the step's parity (a thread records the next step while a slower
// one may still read this one's).
class UnitShares {
  public:
    // For the tests, on any machine: team position `slow_position`'s times are taken
    // `slow_factor` times as long (cpu_loop_test_slow_thread), and the moves are counted.
    static inline int64_t slow_position = -1;
    static inline double slow_factor = 1;
    static inline std::atomic<int64_t> moves{0};

    UnitShares(int64_t H, int64_t mr, int64_t threads)
        : H_(H), mr_(mr), blocks_((H + mr - 1) / mr), seconds_(2 * threads, 0.0) {}

    class Mine {  // one thread's view
      public:
        Mine(const UnitShares& shares, int64_t n, int64_t id)
            : s_(shares), n_(n), id_(id), bound_(n + 1), rate_(n, 0.0) {
            for (int64_t k = 0; k <= n; ++k) bound_[k] = s_.blocks_ * k / n;  // even, first
        }
        Units units() const {
            return {std::min(s_.H_, bound_[id_] * s_.mr_),
                    std::min(s_.H_, bound_[id_ + 1] * s_.mr_)};
        }
        void start() {
            if (n_ > 1) start_ = omp_get_wtime();
        }
        // this thread's time for its share of loop position k, before the barrier
        void stop(int64_t k) {
            if (n_ > 1)
                s_.seconds_[(k % 2) * n_ + id_] = (omp_get_wtime() - start_) *
                                                  (id_ == slow_position ? slow_factor : 1.0);
        }
        // after that barrier: where the threads' speeds (blocks a second, smoothed over
        // steps) say the step would take 3 % less with the blocks in proportion to them,
        // each boundary one block toward that proportion, if it is half a block away or more
        // (a smaller imbalance is within the steps' noise, and a moved block's weights and
        // state go to the other core's cache)
        void rebalance(int64_t k) {
            if (n_ < 2) return;
            const double* seconds = s_.seconds_.data() + (k % 2) * n_;
            double total = 0, slowest = 0;
            for (int64_t j = 0; j < n_; ++j) {
                const double blocks = double(bound_[j + 1] - bound_[j]);
                const double now = blocks / std::max(seconds[j], 1e-9);
                rate_[j] = rate_[j] == 0 ? now : 0.8 * rate_[j] + 0.2 * now;
                total += rate_[j];
                slowest = std::max(slowest, blocks / rate_[j]);
            }
            if (!(slowest > 1.03 * s_.blocks_ / total)) return;
            double before = 0;
            for (int64_t j = 1; j < n_; ++j) {
                before += rate_[j - 1];
                const double target = s_.blocks_ * before / total;
                const int64_t was = bound_[j];
                if (target >= bound_[j] + 0.5 && bound_[j] + 1 < bound_[j + 1])
                    ++bound_[j];
                else if (target <= bound_[j] - 0.5 && bound_[j] - 1 > bound_[j - 1])
                    --bound_[j];
                if (id_ == 0 && bound_[j] != was) moves.fetch_add(1, std::memory_order_relaxed);
            }
        }

      private:
        const UnitShares& s_;
        int64_t n_, id_;
        std::vector<int64_t> bound_;
        std::vector<double> rate_;
        double start_ = 0;
    };

  private:
    int64_t H_, mr_, blocks_;
    mutable std::vector<double> seconds_;  // [parity][thread]
};

// Stores past the cache, for the forward's write-once streams (the batch-major output and
// the copy of x, read again only after the loop): a non-temporal store writes its line to
// memory without first reading it into the cache, and evicts nothing the loop is using.
// Both written this way, the LSTM 1×128 forward (B 32) took 0.972 of the time at one
// thread and 0.958 at two, the seed row's 0.989 at one (Intel Xeon, one process, medians of
// 100 interleaved rounds); the gates written so, through an L1 buffer, gained nothing. Each
// thread ends its loop with store_fence(): until then its non-temporal stores need not be
// visible to the others.
template <typename T> inline bool vector_aligned(const T* p) {
    return reinterpret_cast<uintptr_t>(p) % 64 == 0;
}

template <typename T> inline void store_past_cache(T* dst, vec<T> v) {  // dst: vector_aligned
#if defined(__AVX512F__)
    if constexpr (sizeof(T) == 4)
        _mm512_stream_ps(reinterpret_cast<float*>(dst), reinterpret_cast<__m512&>(v));
    else
        _mm512_stream_pd(reinterpret_cast<double*>(dst), reinterpret_cast<__m512d&>(v));
#else
    *reinterpret_cast<vec<T>*>(dst) = v;
#endif
}

inline void store_fence() {
#if defined(__AVX512F__)
    _mm_sfence();
#endif
}

// n values from src to dst, past the cache where dst is vector_aligned and n whole vectors
template <typename T> void copy_past_cache(T* dst, const T* src, int64_t n) {
    constexpr int64_t L = lanes<T>();
    if (!vector_aligned(dst) || n % L != 0) {
        std::memcpy(dst, src, sizeof(T) * n);
        return;
    }
    for (int64_t i = 0; i < n; i += L) {
        vec<T> v;
        std::memcpy(&v, src + i, sizeof(v));
        store_past_cache(dst + i, v);
    }
}

// dst[c·ld_dst + r] = src[r·ld_src + c] for r < rows, c < cols: in L × L tiles (L = lanes<T>,
// one 64-byte vector a row), each transposed in registers. A tile is L row vectors; swapping
// the off-diagonal S × S blocks of every 2S × 2S block, for S = L/2, …, 2, 1, transposes it:
//
//     v_i ← (v_i[l]          if l & S = 0,  else v_{i+S}[l − S])        for i & S = 0
//     v_{i+S} ← (v_i[l + S]  if l & S = 0,  else v_{i+S}[l])
//
// L·log₂L two-vector shuffles a tile: alone, twice as fast as the 16 × 16 copy through an
// L1 buffer it replaced.
template <int L, int S> struct BlockSwap {
    static constexpr int low(int l) { return (l & S) == 0 ? l : L + l - S; }
    static constexpr int high(int l) { return (l & S) == 0 ? l + S : L + l; }
};

template <typename T, int S, int... l>
inline void swap_blocks(vec<T>& a, vec<T>& b, std::integer_sequence<int, l...>) {
    constexpr int L = sizeof...(l);
    const vec<T> low = __builtin_shufflevector(a, b, BlockSwap<L, S>::low(l)...);
    b = __builtin_shufflevector(a, b, BlockSwap<L, S>::high(l)...);
    a = low;
}

template <typename T, int S> inline void swap_all_blocks(vec<T>* v) {
    constexpr int L = lanes<T>();
    for (int i = 0; i < L; ++i)
        if ((i & S) == 0) swap_blocks<T, S>(v[i], v[i + S], std::make_integer_sequence<int, L>());
    if constexpr (S > 1) swap_all_blocks<T, S / 2>(v);
}

template <typename T, bool PastCache = false>
inline void transpose_tile(const T* __restrict src, int64_t ld_src, T* __restrict dst,
                           int64_t ld_dst) {
    constexpr int L = lanes<T>();
    vec<T> v[L];
    for (int r = 0; r < L; ++r) v[r] = *reinterpret_cast<const vec<T>*>(src + r * ld_src);
    swap_all_blocks<T, L / 2>(v);
    for (int c = 0; c < L; ++c) {
        if constexpr (PastCache)
            store_past_cache(dst + c * ld_dst, v[c]);
        else
            *reinterpret_cast<vec<T>*>(dst + c * ld_dst) = v[c];
    }
}

template <bool PastCache, typename T>
void transpose_tiles(const T* src, int64_t ld_src, T* dst, int64_t ld_dst, int64_t rows,
                     int64_t cols) {  // rows, cols: multiples of L
    constexpr int64_t L = lanes<T>();
    for (int64_t r0 = 0; r0 < rows; r0 += L)
        for (int64_t c0 = 0; c0 < cols; c0 += L)
            transpose_tile<T, PastCache>(src + r0 * ld_src + c0, ld_src, dst + c0 * ld_dst + r0,
                                         ld_dst);
}

// past_cache: the tiles' stores non-temporal (store_past_cache) where each is a whole,
// aligned vector of dst
template <typename T>
void transpose_rect(const T* src, int64_t ld_src, T* dst, int64_t ld_dst, int64_t rows,
                    int64_t cols, bool past_cache) {
    constexpr int64_t L = lanes<T>();
    const int64_t RL = rows / L * L, CL = cols / L * L;
    if (past_cache && RL == rows && ld_dst % L == 0 && vector_aligned(dst))
        transpose_tiles<true>(src, ld_src, dst, ld_dst, RL, CL);
    else
        transpose_tiles<false>(src, ld_src, dst, ld_dst, RL, CL);
    for (int64_t r = 0; r < rows; ++r)  // the edges: rows past RL, columns past CL
        for (int64_t c = r < RL ? CL : 0; c < cols; ++c)
            dst[c * ld_dst + r] = src[r * ld_src + c];
}

// A thread's units of step t's h_t (H, B block) into the batch-major output (T, B, H), if
// the driver asked for it (Args::out): done in the loop, while the block is in cache.
template <typename T> void emit_output(const Args<T>& a, int64_t t, const T* ht, Units units) {
    if (a.out == nullptr) return;
    const int64_t H = a.hidden, B = a.batch;
    transpose_rect(ht + units.lo * B, B, a.out + t * B * H + units.lo, H, units.hi - units.lo,
                   B, true);
}

// Step k of the loop is time step step(k); the step before it in the loop is prev(k).
struct Order {
    int64_t steps;
    bool reverse;
    int64_t step(int64_t k) const { return reverse ? steps - 1 - k : k; }
};

// Step t's valid flags, as the element loops read them (valid[b]: is step t of sequence b
// real?): a row of the (T, B) byte array, or, when there is none, AllValid, whose every
// flag is the constant true. The loops are instantiated for both (generic lambdas), so an
// unmasked loop carries no flags at all: the compiler drops each `keep ? new : old`
// (with byte flags in the loop, GCC vectorised the LSTM's backward at 256 bits, with mask
// shuffles and spilled pointers). Neither is a null pointer to test per element: a
// vectorised `valid == nullptr || valid[b]` became a masked load from address 0, a
// microcode assist per vector on Zen 4.
struct AllValid {
    constexpr bool operator[](int64_t) const { return true; }
};

// body(b) for each b < B: the columns of a unit's row of a step's block, or (UnitElements,
// flat) the values of a row of units; b innermost, so the element loops vectorise over it.
// Past the last whole vector the values ran scalar, with glibc's scalar tanhf and expf
// (21 % of an LSTM 1×128 forward at B 20, perf, AMD EPYC, one thread). Where Twice allows,
// they run as part of the whole vector that ends at B instead, which runs some values a
// second time: only for a body that gives the same values run twice (it reads nothing it
// writes, or, as the LSTM's and the RNN's backward without lengths, adds 0 to what it
// reads).
template <typename T, bool Twice, typename Body>
inline void for_columns(int64_t B, Body body) {
    constexpr int64_t L = lanes<T>();
    const int64_t whole = Twice && B > L ? B / L * L : B;
#pragma GCC ivdep
    for (int64_t b = 0; b < whole; ++b) body(b);
    if (whole < B)
#pragma GCC ivdep
        for (int64_t b = B - L; b < B; ++b) body(b);
}

// A step's gradient as a backward element loop writes it: rows of B values, row r at
// rows + r·stride.
template <typename T> struct GradRows {
    T* rows;
    int64_t stride;
    T* row(int64_t r) const { return rows + r * stride; }
};

// Rows g·H + u (every group g < groups, u in units) of B values each, from `from` (row
// stride from_ld) to `to` (row stride to_ld). A row is a few vectors, copied as such where B
// is whole vectors (a memcpy call a row cost more than the copy).
template <typename T>
void copy_unit_rows(const T* from, int64_t from_ld, T* to, int64_t to_ld, int64_t groups,
                    int64_t H, int64_t B, Units units) {
    constexpr int64_t L = lanes<T>();
    for (int64_t g = 0; g < groups; ++g)
        for (int64_t r = g * H + units.lo; r < g * H + units.hi; ++r)
            if (B % L == 0)
                for (int64_t b = 0; b < B; b += L)
                    *reinterpret_cast<vec<T>*>(to + r * to_ld + b) =
                        *reinterpret_cast<const vec<T>*>(from + r * from_ld + b);
            else
                for (int64_t b = 0; b < B; ++b) to[r * to_ld + b] = from[r * from_ld + b];
}

// A cell's element loop over a thread's units [lo, hi) of a step's (H, B) blocks, run one
// of two ways. Unit j's row of a block is B contiguous values and the rows follow each
// other, so in every block the units are the (hi − lo)·B values from lo·B on.
//  * By unit, where B is whole vectors: for each unit, its B columns; the unit's constants
//    (the cell's biases) are scalars, the flags the step's row of them.
//  * Flat, else: a block of column_mr units at a time, its values as one row. By unit, a
//    batch of 4 ran 4 scalar values a unit, with glibc's scalar expf and tanhf (34 % of an
//    LSTM 1×128 forward at B 4, perf, AMD EPYC); flat, whole vectors across units. The
//    constants are then read from a copy expanded to every value (K × H × B, made once a
//    call), the flags from the step's row repeated for each unit. A block at a time, not
//    the thread's share at once, so that a value runs the same way whichever thread's
//    share its block is in: GCC's vectorised loop runs a row's last values in an epilogue
//    of its own (narrower vectors or scalar, other expf/tanhf), so with shares the values
//    there changed as the shares moved (UnitShares), and the results must not (2–3 % slower
//    at B 4 and 12 than a share at once).
// The loop is written once for both ways, as
//     body(j, count, constant, valid)
// over `count` values from unit j's row on: value e of a block at (block + j·B)[e],
// constant k of its unit constant(k, e), its flag valid[e].
template <typename T, int K> class UnitElements {
  public:
    // constant(k, j): constant k of unit j
    template <typename Constant>
    UnitElements(int64_t H, int64_t B, bool masked, Constant constant)
        : H_(H), B_(B), flat_(B % lanes<T>() != 0), per_unit_(K * H),
          expanded_(flat_ ? K * H * B : 0), flags_(flat_ && masked ? H * B : 0) {
        for (int k = 0; k < K; ++k)
            for (int64_t j = 0; j < H; ++j) {
                per_unit_[k * H + j] = constant(k, j);
                if (flat_)
                    std::fill_n(expanded_.data() + (k * H + j) * B, B, per_unit_[k * H + j]);
            }
    }
    // a loop without constants (K 0)
    UnitElements(int64_t H, int64_t B, bool masked)
        : UnitElements(H, B, masked, [](int, int64_t) { return T(0); }) {}
    bool flat() const { return flat_; }

    // Where a backward element loop writes its rows of a step's gradient, given as G·H rows
    // of B values at row stride ld (a chunk's columns of the step: the layout the weight
    // gradients read). Flat, a thread's values of a gate are not contiguous there when
    // ld > B, so the loop writes `block` (rows of B, a block of the step's own), and
    // copy_rows moves them.
    GradRows<T> rows_for(T* rows, int64_t ld, T* block) const {
        return flat_ && ld != B_ ? GradRows<T>{block, B_} : GradRows<T>{rows, ld};
    }
    // from the block rows_for chose to the rows, the thread's units of each of `groups` gates
    void copy_rows(GradRows<T> from, T* rows, int64_t ld, int64_t groups, Units units) const {
        if (from.rows != rows) copy_unit_rows(from.rows, B_, rows, ld, groups, H_, B_, units);
    }

    template <typename Valid, typename Body> void run(Units units, Valid valid, Body body) {
        if (flat_) {
            for (int64_t j = units.lo; j < units.hi; j += column_mr<T>()) {
                const int64_t lo = j * B_, n = std::min(units.hi - j, column_mr<T>()) * B_;
                body(j, n, Expanded{expanded_.data() + lo, H_ * B_}, repeated(valid, lo, n));
            }
            return;
        }
        for (int64_t j = units.lo; j < units.hi; ++j) {
            Scalars constant;
            for (int k = 0; k < K; ++k) constant.v[k] = per_unit_[k * H_ + j];
            body(j, B_, constant, valid);
        }
    }

  private:
    struct Scalars {
        T v[K > 0 ? K : 1];
        T operator()(int k, int64_t) const { return v[k]; }
    };
    struct Expanded {
        const T* p;
        int64_t stride;
        T operator()(int k, int64_t i) const { return p[k * stride + i]; }
    };
    // the flags of values [lo, lo + n) of a block: the step's row for each unit (n a
    // multiple of B), the copied part doubled until it is all there
    const uint8_t* repeated(const uint8_t* row, int64_t lo, int64_t n) {
        uint8_t* flags = flags_.data() + lo;
        std::memcpy(flags, row, B_);
        for (int64_t done = B_; done < n; done *= 2)
            std::memcpy(flags + done, flags, std::min(done, n - done));
        return flags;
    }
    AllValid repeated(AllValid all, int64_t, int64_t) { return all; }

    int64_t H_, B_;
    bool flat_;
    std::vector<T> per_unit_;
    AlignedArray<T> expanded_;
    AlignedArray<uint8_t> flags_;  // each thread writes and reads its own units' part
};

// elements(…, valid flags, …) with step t's flags, of either kind
template <typename Call>
inline auto with_valid(const uint8_t* valid, int64_t t, int64_t batch, Call call) {
    return valid ? call(valid + t * batch) : call(AllValid{});
}

// Step t's (W, B) block of a (T, W, B) array.
template <typename T> T* block(T* base, int64_t t, int64_t W, int64_t B) {
    return base + t * W * B;
}

// A spinning thread's hint to the core that it waits (x86's pause)
inline void spin_pause() {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#endif
}

// The wait between a loop's steps: each thread of the team returns once every one has
// arrived. libgomp's `omp barrier` ends each wait with a futex wake, a system call, even
// where no thread sleeps (on one thread, or two both spinning): one a step. Without them,
// LSTM 1×128's forward at B 1 took 0.955–0.96 of the time at one thread, the seed row's
// 0.988 at two (AMD EPYC, interleaved). A thread that waits long (another thread
// descheduled) yields its core instead of spinning on; OMP_WAIT_POLICY does not apply.
class StepBarrier {
  public:
    void wait(int64_t team) {
        if (team < 2) return;
        const int64_t generation = generation_.load(std::memory_order_acquire);
        if (arrived_.fetch_add(1, std::memory_order_acq_rel) == team - 1) {
            arrived_.store(0, std::memory_order_relaxed);
            generation_.fetch_add(1, std::memory_order_release);  // what all wrote, published
            return;
        }
        for (int64_t spins = 0; generation_.load(std::memory_order_acquire) == generation;
             ++spins)
            if (spins < SPINS)
                spin_pause();
            else
                sched_yield();
    }

  private:
    static constexpr int64_t SPINS = 20000;  // 0.5 ms of pauses on the AMD EPYC
    alignas(64) std::atomic<int64_t> arrived_{0};
    alignas(64) std::atomic<int64_t> generation_{0};
};

// The time loop of every cell's compiled forward: one OpenMP team for the call; at each
// step each thread computes its units' rows (its share, UnitShares) of the step's product
// into scratch, runs the cell's element step on its units,
//     elements(t, tp, h_{t−1}, valid flags, units)     (tp: the previous step, −1 at the first)
// writes them into the batch-major output, and waits for the others (h_t complete).
//
// With the input joined to the product (Args::x), x_t is laid out feature-major, (I, B):
// each thread lays out all of x_{t+1} in a block of its own after its product of step t
// (and copies its share of x_{t+1}'s inputs to Args::x_copy). When each thread laid out a
// share into one block, half of x_t reached each thread's product from the other core's
// cache after the barrier; a block each took the forward at two threads to 0.971–0.977 of
// that time at LSTM 1×128, 0.955–0.957 for the seed row, 0.948 and 0.957 at B 20 and 24
// (AMD EPYC, interleaved); one thread and LSTM 3×512 level.
template <typename T, typename Elements>
void forward_steps(const Args<T>& a, const StepProduct<T>& product, Elements elements) {
    const int64_t H = a.hidden, B = a.batch, I = a.input;
    const Order order{a.steps, a.reverse != 0};
    const int team = int(std::max<int64_t>(1, a.threads));
    const UnitShares shares(H, product.block_rows(), team);
    StepBarrier barrier;
#pragma omp parallel num_threads(team)
    {
        const int64_t n = omp_get_num_threads(), id = omp_get_thread_num();
        UnitShares::Mine share(shares, n, id);
        AlignedArray<T> x_fm(a.x ? I * B : 0);  // this thread's x_t, all of it
        const int64_t i0 = I * id / n, i1 = I * (id + 1) / n;  // the inputs it copies
        auto lay_out = [&](int64_t k) {  // x at loop position k
            const T* xt = a.x + order.step(k) * B * I;
            transpose_rect(xt, I, x_fm.data(), B, B, I);
            T* copy = a.x_copy ? a.x_copy + order.step(k) * B * I : nullptr;
            if (copy && i1 - i0 == I)  // all of x_t: one block, whole vectors for any I
                copy_past_cache(copy, xt, B * I);
            else if (copy)
                for (int64_t b = 0; b < B; ++b)
                    copy_past_cache(copy + b * I + i0, xt + b * I + i0, i1 - i0);
        };
        if (a.x) lay_out(0);
        for (int64_t k = 0; k < a.steps; ++k) {
            const int64_t t = order.step(k), tp = k == 0 ? -1 : order.step(k - 1);
            const T* hp = tp < 0 ? a.state0[0] : h_block(a, tp);
            const Units mine = share.units();
            share.start();
            product(hp, a.scratch, false, mine, a.x ? x_fm.data() : nullptr);
            if (a.x && k + 1 < a.steps) lay_out(k + 1);
            with_valid(a.valid, t, B, [&](auto valid) { elements(t, tp, hp, valid, mine); });
            emit_output(a, t, h_block(a, t), mine);
            share.stop(k);
            barrier.wait(n);
            share.rebalance(k);
        }
        store_fence();
    }
}

// The time loop of every cell's compiled backward, from the last step to the first: each
// thread runs the cell's element step on its units,
//     d = elements(k, t, tp, ∂h_{t−1}, valid flags, units, block)     (k: the loop position)
// writing its units' rows of d (GradRows), the gradient of step t's product: in place, at
// row stride grad_stride, or in `block`, a contiguous (G·H, B) block of the step's
// (UnitElements::rows_for); once every thread has, it computes its units' rows of
// ∂h_{t−1} += W_hhᵀ d, which is all its next element step reads, and, where the loop
// computes ∂x (BackwardProducts), its rows of ∂x_tᵀ = W_ihᵀ d (proportional_rows) into a
// feature-major (I, B) block, transposed into ∂x's step. The shares move (UnitShares) only
// at that barrier, so a product and the element step after it run the same units.
//
// The packed kernel reads d's rows from a contiguous (G·H, B) block (two, used in turn):
// each thread first copies its own rows there, from its cache (or, flat, its element loop
// writes them there and copies them into the chunk, UnitElements). Read in place, a chunk's
// columns apart (grad_stride·sizeof(T) bytes: 3 KiB at LSTM 3×512), the rows ran the
// kernel at 40 % of its contiguous rate on an Intel Xeon (cache-set conflicts among 2048
// rows a multiple of 1 KiB apart).
template <typename T> class StagedRows {
  public:
    StagedRows(bool on, int64_t rows, int64_t batch)
        : rows_(rows), batch_(batch), data_(on ? 2 * rows * batch : 0) {}
    // block k % 2, or null when off
    T* block(int64_t k) {
        return data_.empty() ? nullptr : data_.data() + (k % 2) * rows_ * batch_;
    }
    // d's rows, contiguous: d itself where they are, else this thread's rows (g·H + units,
    // every g) copied into block k % 2
    const T* stage(GradRows<T> d, int64_t k, int64_t H, Units units) {
        if (d.stride == batch_) return d.rows;
        copy_unit_rows(d.rows, d.stride, block(k), batch_, rows_ / H, H, batch_, units);
        return block(k);
    }

  private:
    int64_t rows_, batch_;
    AlignedArray<T> data_;
};

// The products of a backward step, W packed once a segment (backward_chunks.h):
//     ∂h_{t−1} += W_hhᵀ d_t                      (recurrent_t)
//     ∂x_t      = (W_ihᵀ d_t)ᵀ  into dx's step t  (input_t, where the loop takes it: d_t is
//                                                 then ∂x_g,t, as in the LSTM and the RNN)
// ∂x a step at a time joins the packed kernel's product of the step, where d_t is in
// cache, instead of one BLAS product of a chunk's columns after the loop (hoisted.h).
template <typename T> struct BackwardProducts {
    const StepProduct<T>& recurrent_t;
    const StepProduct<T>* input_t = nullptr;  // null: ∂x is hoisted, or not asked for
    T* dx = nullptr;                          // (steps, B, I): the piece's steps of ∂x
};

// A thread's rows of a second product beside its units of H: `rows` in proportion, each
// share starting on a block of mr. Units that cover [0, H) between the threads, one after
// the other, give rows that cover [0, rows) the same way (empty units: no rows).
inline Units proportional_rows(Units units, int64_t H, int64_t rows, int64_t mr) {
    auto at = [&](int64_t u) { return u >= H ? rows : rows * u / H / mr * mr; };
    return {at(units.lo), at(units.hi)};
}

template <typename T, typename Elements>
void backward_steps(const Args<T>& a, const BackwardProducts<T>& products, Elements elements) {
    const int64_t H = a.hidden, B = a.batch;
    const Order order{a.steps, a.reverse != 0};
    const StepProduct<T>& recurrent_t = products.recurrent_t;
    const StepProduct<T>* input_t = products.input_t;
    const int64_t I = input_t ? input_t->rows() : 0;
    AlignedArray<T> dx_fm(I * B);  // ∂x_tᵀ (I, B): each thread its rows
    StagedRows<T> staged(a.grad_stride != B, recurrent_t.depth(), B);
    const int team = int(std::max<int64_t>(1, a.threads));
    const UnitShares shares(H, recurrent_t.block_rows(), team);
    StepBarrier barrier;
#pragma omp parallel num_threads(team)
    {
        const int64_t n = omp_get_num_threads();
        UnitShares::Mine share(shares, n, omp_get_thread_num());
        Units mine = share.units();
        share.start();
        for (int64_t k = a.steps - 1; k >= 0; --k) {
            const int64_t t = order.step(k), tp = k == 0 ? -1 : order.step(k - 1);
            T* dhp = tp < 0 ? a.dh0 : block<T>(a.dh, tp, H, B);
            // ∂h_{t−1} starts as ∂L/∂out_{t−1}ᵀ: this thread's rows, which only it reads
            // (its element step, which may carry ∂h_t into it) and writes (its product)
            // until the barrier
            const T* dout_p = tp < 0 ? a.dout0 : a.dout ? a.dout + tp * B * H : nullptr;
            if (dout_p)
                transpose_rect(dout_p + mine.lo, H, dhp + mine.lo * B, B, B, mine.hi - mine.lo);
            const T* d = staged.stage(with_valid(a.valid, t, B,
                                                 [&](auto valid) {
                                                     return elements(k, t, tp, dhp, valid, mine,
                                                                     staged.block(k));
                                                 }),
                                      k, H, mine);
            share.stop(k);
            barrier.wait(n);
            share.rebalance(k);
            mine = share.units();
            share.start();
            recurrent_t(d, dhp, true, mine);
            if (input_t) {
                const Units rows = proportional_rows(mine, H, I, input_t->block_rows());
                if (rows.hi > rows.lo) {
                    (*input_t)(d, dx_fm.data(), false, rows);
                    transpose_rect(dx_fm.data() + rows.lo * B, B,
                                   products.dx + t * B * I + rows.lo, I, rows.hi - rows.lo, B);
                }
            }
        }
    }
}

}  // namespace cpu_loop

extern "C" void cpu_loop_test_slow_thread(int64_t position, double factor) {
    cpu_loop::UnitShares::slow_position = position;
    cpu_loop::UnitShares::slow_factor = factor;
}
extern "C" int64_t cpu_loop_share_moves() { return cpu_loop::UnitShares::moves.load(); }

#define RNNCORE_CPU_EXPORT_WITH(name, fn, T, ArgsType)                                \
    extern "C" void name(const cpu_loop::Blas* blas, const cpu_loop::ArgsType<T>* a) { \
        fn<T>(*blas, *a);                                                              \
    }
#define RNNCORE_CPU_EXPORT(name, fn, T) RNNCORE_CPU_EXPORT_WITH(name, fn, T, Args)
