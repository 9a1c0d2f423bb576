// Zoneout (Krueger et al. 2016) inside a cell's kernels; twin of rnncore/cells/regularise.py.
//
// z is the weight of the previous state (0 or 1 per unit and step in training, the rate p
// at evaluation), read through its leading dimension; null when zoneout is off, and then
// every helper returns its input unchanged, so the kernels compute what they did before.
//     forward:  s = s~ + z (s_prev - s~)
//     backward: ds~ = ds - z ds  (the part reaching the new value),  ds_prev += z ds
#pragma once
#include "common.cuh"

template <typename T>
__device__ __forceinline__ T zone_out(const T* z, int ld_z, int b, int j, T fresh, T prev) {
    return z == nullptr ? fresh : fresh + z[at(b, j, ld_z)] * (prev - fresh);
}

// the part of the gradient d that passes to the previous state directly (0 when off)
template <typename T>
__device__ __forceinline__ T zone_through(const T* z, int ld_z, int b, int j, T d) {
    return z == nullptr ? T(0) : d * z[at(b, j, ld_z)];
}
