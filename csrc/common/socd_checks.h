// Argument checks shared by the CPU and CUDA torch bindings of detox::socd.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "socd_params.h"

namespace detox {

inline SocdParams check_socd_args(const at::Tensor& base, const at::Tensor& toxic, const at::Tensor& out,
                                  const at::Tensor& alpha, const at::Tensor& divergence, const at::Tensor& k,
                                  int64_t divergence_kind, int64_t k_min, int64_t k_max, int64_t vocab_size,
                                  bool k_ceil, bool signed_subtract, c10::DeviceType device) {
  TORCH_CHECK(base.dim() == 2, "detox::socd: base logits must be [B, V], got ", base.sizes());
  TORCH_CHECK(toxic.sizes() == base.sizes(), "detox::socd: toxic logits ", toxic.sizes(),
              " must have the shape of the base logits ", base.sizes());
  TORCH_CHECK(out.sizes() == base.sizes(), "detox::socd: out ", out.sizes(), " must have shape ", base.sizes());
  TORCH_CHECK(toxic.scalar_type() == base.scalar_type() && out.scalar_type() == base.scalar_type(),
              "detox::socd: base, toxic and out must share one dtype");
  for (const at::Tensor* t : {&base, &toxic, &out, &alpha, &divergence, &k}) {
    TORCH_CHECK(t->device().type() == device, "detox::socd: all tensors must be on ", device);
  }
  TORCH_CHECK(toxic.device() == base.device() && out.device() == base.device() &&
                  alpha.device() == base.device() && divergence.device() == base.device() &&
                  k.device() == base.device(),
              "detox::socd: all tensors must be on one device");
  const int64_t rows = base.size(0), cols = base.size(1);
  TORCH_CHECK(cols == 0 || (base.stride(1) == 1 && toxic.stride(1) == 1 && out.stride(1) == 1),
              "detox::socd: the last dimension must be contiguous");
  TORCH_CHECK(alpha.scalar_type() == at::kFloat && alpha.numel() == rows && alpha.is_contiguous(),
              "detox::socd: alpha must be a contiguous float32 [B] tensor");
  TORCH_CHECK(divergence.scalar_type() == at::kFloat && divergence.numel() == rows && divergence.is_contiguous(),
              "detox::socd: divergence must be a contiguous float32 [B] tensor");
  TORCH_CHECK(k.scalar_type() == at::kInt && k.numel() == rows && k.is_contiguous(),
              "detox::socd: k must be a contiguous int32 [B] tensor");
  TORCH_CHECK(divergence_kind >= 0 && divergence_kind <= 5, "detox::socd: divergence_kind must be in [0, 5]");
  TORCH_CHECK(vocab_size >= 0 && vocab_size <= cols, "detox::socd: vocab_size ", vocab_size,
              " must be in [0, ", cols, "]");
  TORCH_CHECK(vocab_size < (int64_t(1) << 31), "detox::socd: vocab_size must be below 2^31");
  TORCH_CHECK(k_min >= 0 && k_max >= 0, "detox::socd: k_min and k_max must be >= 0");
  SocdParams p;
  p.rows = rows;
  p.cols = cols;
  p.vocab = vocab_size;
  p.x_stride = rows > 0 ? base.stride(0) : 0;
  p.y_stride = rows > 0 ? toxic.stride(0) : 0;
  p.out_stride = rows > 0 ? out.stride(0) : 0;
  p.k_min = k_min;
  p.k_max = k_max;
  p.divergence = static_cast<int32_t>(divergence_kind);
  p.k_ceil = k_ceil;
  p.signed_sub = signed_subtract;
  return p;
}

}  // namespace detox
