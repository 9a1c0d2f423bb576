// Test kernel: mean and variance (two passes, divided by H) of each row of a (B, H)
// row-major matrix. One block per row; threads stride along the row, so H may exceed the
// block and need not be a multiple of it. Dynamic shared memory: block_size() values of T.
#include "cooperate.cuh"

template <typename T>
__global__ void row_stats(int B, int H, const T* x, T* mean, T* var) {
    T* scratch = dynamic_shared<T>();
    const int b = (int)blockIdx.x;
    if (b >= B) return;  // the whole block leaves together
    const T* row = x + (long long)b * H;
    T s = T(0);
    for (int j = (int)block_thread_rank(); j < H; j += (int)block_size()) s += row[j];
    const T m = block_sum<T>(s, scratch) / T(H);
    T q = T(0);
    for (int j = (int)block_thread_rank(); j < H; j += (int)block_size()) {
        const T d = row[j] - m;
        q += d * d;
    }
    const T v = block_sum<T>(q, scratch) / T(H);
    if (block_thread_rank() == 0) {
        mean[b] = m;
        var[b] = v;
    }
}
