// Test kernel: grid-wide synchronisation. `steps` times, over the whole array x of n values
// (ping-pong between a and b, starting in a, zero outside [0, n)):
//     mean_k = (sum over blocks, in block order, of each block's block_sum of x_k) / n
//     x_{k+1}[i] = (x_k[i-1] + x_k[i] + x_k[i+1]) / 3 - mean_k
// so every block's step k+1 needs its neighbours' and every block's step-k results.
// Static shared memory (RNNCORE_SHARED) must survive grid_sync, per block: each thread keeps
//     kept[t] = sum over k of x_k[i] * (blockIdx.x + 1)
// and at the end writes its neighbour's: history[i] = kept[(t + 1) % blockDim.x].
// partial: gridDim.x values. blockDim.x <= 256.
#include "cooperate.cuh"
#include "grid_sync.cuh"

template <typename T>
__global__ void grid_steps(int n, int steps, T* a, T* b, T* partial, T* history) {
    RNNCORE_SHARED(T, scratch, 256);
    RNNCORE_SHARED(T, kept, 256);
    const int t = (int)threadIdx.x;
    const int i = (int)(blockIdx.x * blockDim.x) + t;
    kept[t] = T(0);
    T* cur = a;
    T* next = b;
    for (int k = 0; k < steps; ++k) {
        const T v = i < n ? cur[i] : T(0);
        const T s = block_sum<T>(v, scratch);
        if (t == 0) partial[blockIdx.x] = s;
        kept[t] += v * T(blockIdx.x + 1);
        grid_sync();
        T total = T(0);
        for (unsigned g = 0; g < gridDim.x; ++g) total += partial[g];
        const T mean = total / T(n);
        if (i < n) {
            const T left = i > 0 ? cur[i - 1] : T(0);
            const T right = i + 1 < n ? cur[i + 1] : T(0);
            next[i] = (left + cur[i] + right) / T(3) - mean;
        }
        grid_sync();  // nobody overwrites partial or reads `next` as `cur` before all are done
        T* swap = cur;
        cur = next;
        next = swap;
    }
    block_sync();
    if (i < n) history[i] = kept[(t + 1) % (int)blockDim.x];
}
