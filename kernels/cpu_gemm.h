// The recurrent product of every step of a compiled CPU loop, with the weights packed once.
//
//     C (M × N)  =  A (M × K) · X (K × N)      or  C += A · X        (N = the batch B)
//
// BLAS packs both operands into its own layout on every call. In a time loop A is a weight
// matrix, the same at every step, and X is a step's (K, B) state block, already laid out as
// a packed panel would be: rows of B contiguous values. So A is packed once per call into
// row blocks of MR rows, stored k-major (block[k][r] = A[i0 + r][k]), and a step is only
// the inner kernel: an MR × (V·L) tile of C lives in MR·V vector registers, and each k
// loads V vectors of X's row k and broadcasts MR values of A into
//
//     acc[r][v] += A[i0 + r][k] · X[k][col + v·L … col + v·L + L − 1].
//
// L is the lanes of a 64-byte vector (16 floats, 8 doubles). A batch that is not a multiple
// of L runs the second kernel below instead (tile_columns: vectors along M, X broadcast),
// which any N fills. X may be given as several row segments stacked (h_{t−1}, then x_t:
// the LSTM's input projection joins the step's product).
// Measured alone, one thread, hot caches: 113 GFLOP/s at (512×128)·(128×32) and at
// (2048×512)·(512×64) on an AMD EPYC (Zen 4), against OpenBLAS's 93 and 100 with its
// packing; 165–175 and 150–164 on an Intel Xeon, against
// OpenBLAS's 104–108 and 126–131.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace cpu_loop {

template <typename T> struct Vector {
    typedef T type __attribute__((vector_size(64), aligned(sizeof(T))));
};
template <typename T> using vec = typename Vector<T>::type;
template <typename T> constexpr int64_t lanes() { return int64_t(64 / sizeof(T)); }
// The rows of the other kernel's blocks (tile_columns): two vectors' worth.
template <typename T> constexpr int64_t column_mr() { return 2 * lanes<T>(); }

// The rows of a tile, MR: 12 (12 × 2 vectors = 24 accumulators) or 8 (16 accumulators).
// Per k a tile loads 2 vectors of X for 2·MR FMAs, so the taller tile needs less of X's
// bandwidth: measured alone on an Intel Xeon, one thread, 12 rows ran (2048×512)·(512×64)
// at 164 GFLOP/s against 8 rows' 150 (X from L2). With a small X (H 128, B 32: 32 KiB
// forward, 64 KiB backward, about L1's 48 KiB) 8 rows ran 3–5 % faster, and 128 units are
// 16 blocks of 8 (two threads, 8 each) but 11 of 12, the last one a third empty (6 and 5).
// pick_mr chooses by that; for a batch that is not a multiple of the lanes, column_mr.
inline int64_t pick_mr(int64_t rows, int64_t depth, int64_t batch, int64_t item) {
    if (batch % (64 / item) != 0) return 2 * 64 / item;  // column_mr<T>()
    const bool small_x = depth * batch * item <= (64 << 10);
    return small_x && rows % 8 == 0 ? 8 : 12;
}

// n values of T, not initialised, on a 64-byte boundary (a cache line; a vector): a 64-byte
// vector access off it touches two lines (rnncore/buffer_pool.py aligns the driver's arrays
// alike).
template <typename T> class AlignedArray {
  public:
    explicit AlignedArray(int64_t n) : size_(n) {
        if (n > 0)
            data_ = static_cast<T*>(std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64));
    }
    AlignedArray(const AlignedArray&) = delete;
    AlignedArray& operator=(const AlignedArray&) = delete;
    ~AlignedArray() { std::free(data_); }
    T* data() { return data_; }
    const T* data() const { return data_; }
    int64_t size() const { return size_; }
    bool empty() const { return size_ == 0; }

  private:
    T* data_ = nullptr;
    int64_t size_;
};

// Rows of X: `count` rows of N values each, row k at x + k·stride.
template <typename T> struct Rows {
    const T* x;
    int64_t count, stride;
};

// A range of units [lo, hi): the rows lo … hi − 1 of every group of A's rows.
struct Units {
    int64_t lo, hi;
};

// pack_block for a whole block of MR rows whose values of one k are contiguous (rs = 1: a
// transposed source), MR a constant: GCC made the runtime-length copy of each k a memcpy
// call (1 % of the seed row's forward and backward).
template <typename T, int MR>
void pack_contiguous_block(const T* __restrict src, int64_t cs, int64_t n, T* __restrict dst) {
    for (int64_t k = 0; k < n; ++k)
        for (int r = 0; r < MR; ++r) dst[k * MR + r] = src[r + k * cs];
}

// dst[k·mr + r] = src[r·rs + k·cs] for r < m, k < n: one block of mr rows, k-major; rows
// m … mr − 1 (a last, partial block's) are zeros. k outer, so the writes are contiguous and
// the reads walk m rows side by side. Kept out of line: inlined into a loop's function, GCC
// spilled its pointers and ran it 10× slower (0.3 ms of an LSTM 1×128 forward).
template <typename T>
__attribute__((noinline)) void pack_block(const T* __restrict src, int64_t rs, int64_t cs,
                                          int64_t m, int64_t n, T* __restrict dst, int64_t mr) {
    if (rs == 1 && m == mr && mr == 8) return pack_contiguous_block<T, 8>(src, cs, n, dst);
    if (rs == 1 && m == mr && mr == 12) return pack_contiguous_block<T, 12>(src, cs, n, dst);
    if (rs == 1 && m == mr && mr == column_mr<T>())
        return pack_contiguous_block<T, column_mr<T>()>(src, cs, n, dst);
    for (int64_t k = 0; k < n; ++k) {
        for (int64_t r = 0; r < m; ++r) dst[k * mr + r] = src[r * rs + k * cs];
        for (int64_t r = m; r < mr; ++r) dst[k * mr + r] = T(0);
    }
}

// A (groups·rows × depth) packed: each group of `rows` rows (a gate's H rows) in blocks of
// mr rows, the last block of a group padded with zeros, so that a range of units aligned to
// mr is a range of blocks in every group.
template <typename T> struct PackedA {
    AlignedArray<T> data;  // [group][block][k][r], every value written by fill (no zeroing
                           // first: it was a 512 KiB memset a layer and pass at H 128)
    int64_t groups = 0, rows = 0, depth = 0, mr = 12, blocks = 0;

    PackedA(int64_t groups_, int64_t rows_, int64_t depth_, int64_t mr_)
        : data(groups_ * ((rows_ + mr_ - 1) / mr_) * mr_ * depth_), groups(groups_),
          rows(rows_), depth(depth_), mr(mr_), blocks((rows_ + mr_ - 1) / mr_) {}
    // columns k0 … k0 + n − 1 of A from a source with element (i, k) at a[i·rs + k·cs]
    void fill(int64_t k0, int64_t n, const T* a, int64_t rs, int64_t cs) {
        for (int64_t g = 0; g < groups; ++g) fill_group(g, k0, n, a + g * rows * rs, rs, cs);
    }
    // the same for group g's rows alone, element (i, k) of the group at a[i·rs + k·cs]
    void fill_group(int64_t g, int64_t k0, int64_t n, const T* a, int64_t rs, int64_t cs) {
        for (int64_t b = 0; b < blocks; ++b) {
            const int64_t i0 = b * mr;
            pack_block(a + i0 * rs, rs, cs, std::min(mr, rows - i0), n, block(g, b) + k0 * mr,
                       mr);
        }
    }
    T* block(int64_t g, int64_t b) { return data.data() + (g * blocks + b) * depth * mr; }
    const T* block(int64_t g, int64_t b) const {
        return data.data() + (g * blocks + b) * depth * mr;
    }
};

// acc[r][v] += Σ_k A[i0 + r][k] · X[k][col + v·L …] over `count` rows of X (row k at
// x + k·stride), A's packed columns from ap on (ap ends past them).
//
// A's values PREFETCH_K columns ahead are asked for at every k (past a block's end, the
// next block's: they follow it): where A does not fit in L2 (LSTM 3×512's joined step,
// 8 MiB), the hardware's prefetchers left the kernel waiting on L3. Alone, one thread, AMD
// EPYC, (2048×1024)·(1024×64) ran at 95.5–98.5 GFLOP/s without and 108.6–112.0 with,
// (2048×2048)·(2048×64) 95.2–97.2 and 110.3–112.4, (2048×512)·(512×64) 103.3–112.6 and
// 111.4–114.5; (512×256)·(256×32), in L2, 116.5 both (16 to 128 columns ahead tried).
constexpr int64_t PREFETCH_K = 64;

template <typename T, int MR, int V>
__attribute__((always_inline)) inline void accumulate_rows(const T*& ap, const T* x,
                                                           int64_t count, int64_t stride,
                                                           vec<T> (&acc)[MR][V]) {
    constexpr int64_t L = lanes<T>();
    for (int64_t k = 0; k < count; ++k, ap += MR, x += stride) {
        __builtin_prefetch(ap + PREFETCH_K * MR);  // past A's end too: a prefetch never faults
        if constexpr (MR * sizeof(T) > 64)  // a k's values span two lines (12 doubles)
            __builtin_prefetch(ap + PREFETCH_K * MR + lanes<T>());
        vec<T> xv[V];
        for (int v = 0; v < V; ++v) xv[v] = *reinterpret_cast<const vec<T>*>(x + v * L);
        for (int r = 0; r < MR; ++r) {
            const vec<T> a = vec<T>{} + ap[r];
            for (int v = 0; v < V; ++v) acc[r][v] += a * xv[v];
        }
    }
}

// One MR × (V·L) tile of C from X's one or two row segments. The segments are two calls,
// not a loop over segs: through a loop GCC kept the accumulators moving between registers
// (11 extra moves per k), 3–6 % slower (interleaved, one process, Intel Xeon).
template <typename T, int MR, int V>
__attribute__((noinline)) void tile(const T* ap, const Rows<T>* segs, int nsegs, int64_t N,
                                    int64_t col, T* c, int64_t rows, bool accumulate) {
    constexpr int64_t L = lanes<T>();
    vec<T> acc[MR][V] = {};
    accumulate_rows<T, MR, V>(ap, segs[0].x + col, segs[0].count, segs[0].stride, acc);
    if (nsegs > 1)
        accumulate_rows<T, MR, V>(ap, segs[1].x + col, segs[1].count, segs[1].stride, acc);
    // r runs to the constant MR, so that every acc[r][v] has a constant index and stays in
    // a register (a runtime bound kept the array on the stack, zeroed by rep stos per tile)
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
        if (r < rows)
            for (int v = 0; v < V; ++v) {
                vec<T>& out = *reinterpret_cast<vec<T>*>(c + r * N + col + v * L);
                out = accumulate ? out + acc[r][v] : acc[r][v];
            }
}

template <typename T, int MR>
void gemm_packed_mr(const PackedA<T>& a, const Rows<T>* segs, int nsegs, int64_t N, T* c,
                    bool accumulate, Units units) {
    constexpr int64_t L = lanes<T>();
    for (int64_t g = 0; g < a.groups; ++g)
        for (int64_t blk = units.lo / MR; blk * MR < units.hi; ++blk) {
            const int64_t i0 = blk * MR, rows = std::min<int64_t>(MR, units.hi - i0);
            T* cb = c + (g * a.rows + i0) * N;
            int64_t col = 0;
            for (; col + 2 * L <= N; col += 2 * L)
                tile<T, MR, 2>(a.block(g, blk), segs, nsegs, N, col, cb, rows, accumulate);
            if (col < N)
                tile<T, MR, 1>(a.block(g, blk), segs, nsegs, N, col, cb, rows, accumulate);
        }
}

// The kernel for any batch: vectors along A's rows instead of X's columns. A is packed in
// blocks of MR = 2·L rows (column_mr), and a tile of C, MR rows × NR columns (NR ≤ 12),
// lives in 2·NR vector registers; each k loads 2 vectors of A and broadcasts NR values of
// X's row k into
//
//     acc[j][v] += A[i0 + v·L … i0 + v·L + L − 1][k] · X[k][col + j],
//
// so a batch of 20 costs 20 columns' FMAs, not the 32 of two 16-lane vectors, and a batch
// of 1 is a matrix-vector product. The tile is stored a value at a time, transposed into
// C's rows (once per tile, against K·2·NR FMAs).
//
// With few columns the 2·NR sums are too few to hide an FMA's latency (4 cycles, 2 a cycle:
// 8 in flight), so below 4 columns the odd k go into a second set of sums, added at the end.
// The two vectors of A are held in registers (the empty asm, with AVX-512): GCC had folded
// their loads into every FMA, loading each once per column (12 loads for 8 FMAs at 4
// columns). Alone, one thread, AMD EPYC, (512×128)·(128×B) at B 2, 3, 4 ran 60, 64, 69
// GFLOP/s with the loads folded and 77, 86, 91 held; (2048×512)·(512×B) 81, 82, 83 against
// 89, 109, 112.
//
// From 8 columns on, A's values PREFETCH_COLUMNS_K columns ahead are asked for at every k,
// as in accumulate_rows. LSTM 1×512's forward (A 8 MiB) at B 20 and 24 took 0.92 of the time
// with, at 8 and 12 1.00, at 4 1.045 (one thread, AMD EPYC, interleaved; 16 and 64 columns
// ahead no better).
constexpr int64_t PREFETCH_COLUMNS_K = 32;

template <typename T, int NR, int SETS>
__attribute__((always_inline)) inline void accumulate_columns(const T*& ap, const T* x,
                                                              int64_t count, int64_t stride,
                                                              vec<T> (&acc)[SETS][NR][2]) {
    constexpr int64_t L = lanes<T>();
    int64_t k = 0;
    for (; k + SETS <= count; k += SETS)
        for (int s = 0; s < SETS; ++s, ap += 2 * L, x += stride) {
            if constexpr (NR >= 8) {  // as accumulate_rows: A's two lines of a k
                __builtin_prefetch(ap + PREFETCH_COLUMNS_K * 2 * L);
                __builtin_prefetch(ap + PREFETCH_COLUMNS_K * 2 * L + L);
            }
            vec<T> a0 = *reinterpret_cast<const vec<T>*>(ap);
            vec<T> a1 = *reinterpret_cast<const vec<T>*>(ap + L);
#if defined(__AVX512F__)  // a 64-byte vector fits one register ("v"): AVX-512's zmm
            asm("" : "+v"(a0), "+v"(a1));
#endif
            for (int j = 0; j < NR; ++j) {
                const vec<T> xj = vec<T>{} + x[j];
                acc[s][j][0] += a0 * xj;
                acc[s][j][1] += a1 * xj;
            }
        }
    for (; k < count; ++k, ap += 2 * L, x += stride)
        for (int j = 0; j < NR; ++j) {
            const vec<T> xj = vec<T>{} + x[j];
            acc[0][j][0] += *reinterpret_cast<const vec<T>*>(ap) * xj;
            acc[0][j][1] += *reinterpret_cast<const vec<T>*>(ap + L) * xj;
        }
}

// One MR × NR tile of C, at row stride ldc; or (TransposedC) of Cᵀ, C's column j at
// c + j·ldc (the input projection at batch 1, hoisted.h), a whole vector at a time where
// the block's rows are whole (a last, partial block a value at a time).
template <typename T, int NR, bool TransposedC = false>
__attribute__((noinline)) void tile_columns(const T* ap, const Rows<T>* segs, int nsegs,
                                            int64_t ldc, int64_t col, T* c, int64_t rows,
                                            bool accumulate) {
    constexpr int64_t L = lanes<T>();
    constexpr int SETS = NR < 4 ? 2 : 1;
    vec<T> acc[SETS][NR][2] = {};
    accumulate_columns<T, NR, SETS>(ap, segs[0].x + col, segs[0].count, segs[0].stride, acc);
    if (nsegs > 1)
        accumulate_columns<T, NR, SETS>(ap, segs[1].x + col, segs[1].count, segs[1].stride,
                                        acc);
    for (int s = 1; s < SETS; ++s)
        for (int j = 0; j < NR; ++j)
            for (int v = 0; v < 2; ++v) acc[0][j][v] += acc[s][j][v];
    if (TransposedC && rows == 2 * L)
        for (int j = 0; j < NR; ++j)
            for (int v = 0; v < 2; ++v) {
                vec<T>& out = *reinterpret_cast<vec<T>*>(c + (col + j) * ldc + v * L);
                out = accumulate ? out + acc[0][j][v] : acc[0][j][v];
            }
    else
        for (int64_t r = 0; r < rows; ++r)
            for (int j = 0; j < NR; ++j) {
                T& out = TransposedC ? c[(col + j) * ldc + r] : c[r * ldc + col + j];
                const T v = acc[0][j][r / L][r % L];
                out = accumulate ? out + v : v;
            }
}

template <typename T, int NR, bool TransposedC = false>
void tile_columns_upto(int64_t n, const T* ap, const Rows<T>* segs, int nsegs, int64_t ldc,
                       int64_t col, T* c, int64_t rows, bool accumulate) {
    if constexpr (NR > 1)
        if (n < NR)
            return tile_columns_upto<T, NR - 1, TransposedC>(n, ap, segs, nsegs, ldc, col, c,
                                                             rows, accumulate);
    tile_columns<T, NR, TransposedC>(ap, segs, nsegs, ldc, col, c, rows, accumulate);
}

template <typename T>
void gemm_columns(const PackedA<T>& a, const Rows<T>* segs, int nsegs, int64_t N, T* c,
                  bool accumulate, Units units) {
    constexpr int64_t MR = column_mr<T>(), NR = 12;
    for (int64_t g = 0; g < a.groups; ++g)
        for (int64_t blk = units.lo / MR; blk * MR < units.hi; ++blk) {
            const int64_t i0 = blk * MR, rows = std::min<int64_t>(MR, units.hi - i0);
            T* cb = c + (g * a.rows + i0) * N;
            for (int64_t col = 0; col < N; col += NR)
                tile_columns_upto<T, NR>(std::min(NR, N - col), a.block(g, blk), segs, nsegs,
                                         N, col, cb, rows, accumulate);
        }
}

// The rows of `units` in every group of C (groups·rows × N, rows of N) = A · [segs stacked]
// (+ C if accumulate), one or two segments; units.lo a multiple of a.mr. A packed with
// column_mr's blocks runs gemm_columns (any N); else N is a multiple of L.
template <typename T>
void gemm_packed(const PackedA<T>& a, const Rows<T>* segs, int nsegs, int64_t N, T* c,
                 bool accumulate, Units units) {
    if (a.mr == column_mr<T>())
        gemm_columns<T>(a, segs, nsegs, N, c, accumulate, units);
    else if (a.mr == 8)
        gemm_packed_mr<T, 8>(a, segs, nsegs, N, c, accumulate, units);
    else
        gemm_packed_mr<T, 12>(a, segs, nsegs, N, c, accumulate, units);
}

}  // namespace cpu_loop
