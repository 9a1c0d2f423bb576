// Device helpers shared by the pointwise kernels; each is named like its Python twin.
//
//   sigmoid(x) = 1 / (1 + e^{-x})        sigmoid_grad(s) = s (1 - s)   (from the output s)
//   tanh(x)                              tanh_grad(t)    = 1 - t^2     (from the output t)
//   relu(x)    = max(x, 0)               relu_grad(y)    = [y > 0]     (from the output y)
//
// Every kernel runs one thread per (batch row b, hidden unit j) element of a B x H state,
// with no atomics and no shared memory, so results do not depend on the launch order.
// Matrix arguments are row-major with a leading dimension (elements between rows), which
// lets a kernel read column slices such as x_g[:, 2H:] and broadcast rows (ld = 0) in place.
// ``valid`` is a per-row bool array (the lengths mask of this time step) or null.
//
// The same file compiles with NVRTC and, through host_shim.h, with a host C++ compiler.
#pragma once

template <typename T> __device__ __forceinline__ T exp_(T x);
template <> __device__ __forceinline__ float exp_<float>(float x) { return expf(x); }
template <> __device__ __forceinline__ double exp_<double>(double x) { return exp(x); }

template <typename T> __device__ __forceinline__ T tanh_(T x);
template <> __device__ __forceinline__ float tanh_<float>(float x) { return tanhf(x); }
template <> __device__ __forceinline__ double tanh_<double>(double x) { return tanh(x); }

template <typename T> __device__ __forceinline__ T sigmoid(T x) {
    return T(1) / (T(1) + exp_<T>(-x));
}
template <typename T> __device__ __forceinline__ T sigmoid_grad(T s) { return s * (T(1) - s); }
template <typename T> __device__ __forceinline__ T tanh_grad(T t) { return T(1) - t * t; }
template <typename T> __device__ __forceinline__ T relu(T x) { return x > T(0) ? x : T(0); }
template <typename T> __device__ __forceinline__ T relu_grad(T y) { return y > T(0) ? T(1) : T(0); }

// The (b, j) element this thread owns: the grid is (B, ceil(H / blockDim.x)), so
// b = blockIdx.x and j runs along the threads of blockIdx.y; false for the tail threads.
__device__ __forceinline__ bool element_index(int B, int H, int& b, int& j) {
    b = (int)blockIdx.x;
    j = (int)(blockIdx.y * blockDim.x + threadIdx.x);
    return b < B && j < H;
}

// Offset of element (b, j) of a row-major matrix with leading dimension ld.
__device__ __forceinline__ long long at(int b, int j, int ld) { return (long long)b * ld + j; }

// masking.py's rules for row b: is the step valid (carry / split_grad)?
__device__ __forceinline__ bool is_valid(const bool* valid, int b) {
    return valid == nullptr || valid[b];
}
