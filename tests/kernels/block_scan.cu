// Test kernel: static __shared__ memory and several __syncthreads() phases. Each block loads
// its blockDim.x elements of x (zeros past n), takes their inclusive prefix sum with
// Hillis-Steele steps between two shared buffers, and writes it reversed within the block:
// out[i] = scan[blockDim.x - 1 - t]. blockDim.x <= 256.
template <typename T>
__global__ void block_scan_reversed(int n, const T* x, T* out) {
    __shared__ T buf[2][256];
    const int t = (int)threadIdx.x;
    const int i = (int)(blockIdx.x * blockDim.x) + t;
    buf[0][t] = i < n ? x[i] : T(0);
    __syncthreads();
    int src = 0;
    for (int offset = 1; offset < (int)blockDim.x; offset *= 2) {
        buf[1 - src][t] = buf[src][t] + (t >= offset ? buf[src][t - offset] : T(0));
        __syncthreads();
        src = 1 - src;
    }
    if (i < n) out[i] = buf[src][blockDim.x - 1 - t];
}
