// Parameters of the toxification-reversal op (detox::reverse_toxification_), shared by the CPU
// and CUDA kernels. Free of torch headers. Contract: detox_kernels/reference/reversal.py.
#pragma once

#include <cstdint>

namespace detox {

struct ReversalParams {
  int64_t rows;        // B: tokens
  int64_t heads;       // H
  int64_t head_dim;    // D; a row is H * D contiguous values (head-major)
  int64_t o_stride;    // row stride of o in elements
  int64_t d_stride;    // row stride of delta in elements
  float norm_exp;      // s_norm = (1 + |delta_h|) ^ norm_exp
  float sim_exp;       // s_sim = (1 + relu(cos(e_h, o_h))) ^ sim_exp
  bool renorm;         // rescale the row to its norm before the update
};

}  // namespace detox
