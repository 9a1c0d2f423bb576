// The exports of the hoisted products (hoisted.h): the forward's input projection, for the
// cells whose loop does not join it. The backward's come with each cell's backward
// (backward_chunks.h).
#include "hoisted.h"

RNNCORE_CPU_EXPORT_WITH(cpu_input_projection_f32, cpu_loop::input_projection, float, HoistedArgs)
RNNCORE_CPU_EXPORT_WITH(cpu_input_projection_f64, cpu_loop::input_projection, double, HoistedArgs)
