// The host build of the test kernels: the shim, the kernels, one export per instantiation.
#include "host_shim.h"
#include "row_stats.cu"
#include "block_scan.cu"
#include "grid_steps.cu"
#include "misuse.cu"

RNNCORE_HOST_EXPORT_COOPERATIVE(row_stats_f32, row_stats<float>)
RNNCORE_HOST_EXPORT_COOPERATIVE(row_stats_f64, row_stats<double>)
RNNCORE_HOST_EXPORT_COOPERATIVE(block_scan_reversed_i32, block_scan_reversed<int>)
RNNCORE_HOST_EXPORT_COOPERATIVE(block_scan_reversed_f64, block_scan_reversed<double>)
RNNCORE_HOST_EXPORT_COOPERATIVE(grid_steps_f64, grid_steps<double>)
RNNCORE_HOST_EXPORT_COOPERATIVE(misuse_early_return, early_return)
RNNCORE_HOST_EXPORT_COOPERATIVE(misuse_partial_grid_sync, partial_grid_sync)
RNNCORE_HOST_EXPORT_COOPERATIVE(misuse_mixed_barriers, mixed_barriers)
RNNCORE_HOST_EXPORT_COOPERATIVE(misuse_uneven_shared, uneven_shared)
RNNCORE_HOST_EXPORT(misuse_plain_sync, plain_sync)
