// Argument checks shared by the CPU and CUDA torch bindings of detox::sample_top_k_top_p.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>

#include "sampling_params.h"

namespace detox {

inline SamplingParams check_sampling_args(const at::Tensor& logits, const at::Tensor& uniform, const at::Tensor& out,
                                          int64_t top_k, double top_p, double temperature, c10::DeviceType device) {
  const char* op = "detox::sample_top_k_top_p";
  TORCH_CHECK(logits.dim() == 2, op, ": logits must be [B, V], got ", logits.sizes());
  const int64_t B = logits.size(0), V = logits.size(1);
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kHalf ||
                  logits.scalar_type() == at::kBFloat16,
              op, ": logits must be float32, float16 or bfloat16");
  TORCH_CHECK(V == 0 || logits.stride(1) == 1, op, ": logits must have a contiguous last dimension");
  TORCH_CHECK(uniform.scalar_type() == at::kFloat && uniform.dim() == 1 && uniform.size(0) == B &&
                  uniform.is_contiguous(),
              op, ": uniform must be a contiguous float32 [B] tensor");
  TORCH_CHECK(out.scalar_type() == at::kLong && out.dim() == 1 && out.size(0) == B && out.is_contiguous(), op,
              ": out must be a contiguous int64 [B] tensor");
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0.0, op, ": temperature must be > 0, got ", temperature);
  TORCH_CHECK(top_p >= 0.0 && top_p <= 1.0, op, ": top_p must be in [0, 1], got ", top_p);
  TORCH_CHECK(top_k >= 0, op, ": top_k must be >= 0, got ", top_k);
  TORCH_CHECK(V < (int64_t(1) << 31), op, ": the vocabulary must be below 2^31");
  for (const at::Tensor* t : {&logits, &uniform, &out}) {
    TORCH_CHECK(t->device().type() == device && t->device() == logits.device(), op,
                ": all tensors must be on one ", device, " device");
  }
  SamplingParams p;
  p.rows = B;
  p.vocab = V;
  p.logits_stride = B > 0 ? logits.stride(0) : 0;
  p.top_k = top_k;
  p.top_p = top_p;
  p.temperature = static_cast<float>(temperature);
  return p;
}

}  // namespace detox
