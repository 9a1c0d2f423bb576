// Row normalisation helpers shared by the layer-normalised cells (lnlstm.cu, lngru.cu):
// a row's mean and 1 / sqrt(var + eps), computed by a whole block through block_sum
// (cooperate.cuh: a fixed summation order, no atomics).
#pragma once
#include "cooperate.cuh"

template <typename T> __device__ __forceinline__ T sqrt_(T x);
template <> __device__ __forceinline__ float sqrt_<float>(float x) { return sqrtf(x); }
template <> __device__ __forceinline__ double sqrt_<double>(double x) { return sqrt(x); }

// mean and r = 1 / sqrt(var + eps) of the n values v[0..n), computed by the whole block.
template <typename T>
__device__ void row_moments(const T* v, int n, T eps, T* scratch, T& mean, T& r) {
    const int first = (int)block_thread_rank(), stride = (int)block_size();
    T s = T(0);
    for (int k = first; k < n; k += stride) s += v[k];
    mean = block_sum<T>(s, scratch) / T(n);
    T q = T(0);
    for (int k = first; k < n; k += stride) {
        const T d = v[k] - mean;
        q += d * d;
    }
    r = T(1) / sqrt_<T>(block_sum<T>(q, scratch) / T(n) + eps);
}
