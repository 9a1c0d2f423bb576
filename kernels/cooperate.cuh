// Threads of a block that cooperate: one spelling for CUDA and for the host emulation.
//
//   block_sync()                 every thread of the block waits here (__syncthreads)
//   block_thread_rank()          this thread's index in the block, threadIdx.x fastest
//   block_size()                 threads per block
//   dynamic_shared<T>()          this block's dynamic shared memory (the launch's byte count)
//   block_sum<T>(value, scratch) the sum of `value` over the block, returned to every thread
//   RNNCORE_SHARED(T, name, N)   static shared memory: declares `name`, N values of T per
//                                block (on CUDA `__shared__ T name[N]`, on the host a `T*`
//                                into the block's arena). Declare at kernel scope, the same
//                                in every thread. Plain `__shared__ T name[N];` also works on
//                                the host, but only in kernels that never call grid_sync().
//
// block_sum adds in a fixed order that does not depend on scheduling or on the hardware:
// scratch[t] = value of thread t, then while m > 1 values remain, with h = ceil(m / 2),
// scratch[t] += scratch[t + h] for t < m - h. So the GPU and the emulation give the same
// bits, run after run. scratch: block_size() elements of shared memory; it may be reused
// after the call (block_sum ends with a barrier). Every thread of the block must call it.
// No atomics anywhere.
//
// The host build defines RNNCORE_HOST (host_shim.h); NVRTC needs no option for this file.
#pragma once

#ifdef RNNCORE_HOST
__device__ __forceinline__ void block_sync() { rnncore_host::block_barrier(); }
#define RNNCORE_SHARED(T, name, count) T* const name = rnncore_host::static_shared<T>(count)
#else
__device__ __forceinline__ void block_sync() { __syncthreads(); }
#define RNNCORE_SHARED(T, name, count) __shared__ T name[count]
#endif

__device__ __forceinline__ unsigned block_thread_rank() {
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

__device__ __forceinline__ unsigned block_size() { return blockDim.x * blockDim.y * blockDim.z; }

template <typename T> __device__ __forceinline__ T* dynamic_shared() {
#ifdef RNNCORE_HOST
    return static_cast<T*>(rnncore_host::dynamic_shared_memory());
#else
    extern __shared__ __align__(16) unsigned char rnncore_dynamic_shared[];
    return reinterpret_cast<T*>(rnncore_dynamic_shared);
#endif
}

template <typename T> __device__ T block_sum(T value, T* scratch) {
    const unsigned t = block_thread_rank();
    scratch[t] = value;
    block_sync();
    for (unsigned m = block_size(); m > 1;) {
        const unsigned h = (m + 1) / 2;
        if (t < m - h) scratch[t] += scratch[t + h];
        m = h;
        block_sync();
    }
    const T total = scratch[0];
    block_sync();
    return total;
}
