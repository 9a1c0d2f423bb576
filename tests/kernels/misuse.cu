// Test kernels that misuse barriers: the emulation must abort with a message, not hang.
#include "cooperate.cuh"
#include "grid_sync.cuh"

// Thread 3 leaves while the others wait at the barrier.
__global__ void early_return(int* out) {
    if (threadIdx.x == 3) return;
    block_sync();
    out[threadIdx.x] = 1;
}

// Block 1 leaves while the other blocks wait at grid_sync().
__global__ void partial_grid_sync(int* out) {
    if (blockIdx.x == 1) return;
    grid_sync();
    out[blockIdx.x] = 1;
}

// Threads of one block wait at different kinds of barrier.
__global__ void mixed_barriers(int* out) {
    if (threadIdx.x == 0) grid_sync();
    else block_sync();
    out[threadIdx.x] = 1;
}

// A barrier in a kernel exported for the plain loop (RNNCORE_HOST_EXPORT).
__global__ void plain_sync(int* out) {
    block_sync();
    out[threadIdx.x] = 1;
}

// Thread 1 declares a shared array the others do not: their arrays would not line up.
__global__ void uneven_shared(int* out) {
    if (threadIdx.x == 1) {
        RNNCORE_SHARED(int, extra, 4);
        extra[0] = 1;
    }
    RNNCORE_SHARED(int, s, 8);
    s[threadIdx.x] = 1;
    block_sync();
    out[threadIdx.x] = s[0];
}
