// Argument checks shared by the CPU and CUDA torch bindings of detox::sasa_reweight.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include "sasa_params.h"

namespace detox {

inline SasaParams check_sasa_args(const at::Tensor& logits, const at::Tensor& ids, const at::Tensor& hidden,
                                  const at::Tensor& direction, const at::Tensor& midpoint, const at::Tensor& beta,
                                  const c10::optional<at::Tensor>& valid, const at::Tensor& margins, int64_t mode,
                                  c10::DeviceType device) {
  const char* op = "detox::sasa_reweight";
  TORCH_CHECK(logits.dim() == 2, op, ": logits must be [B, V], got ", logits.sizes());
  TORCH_CHECK(ids.dim() == 2 && ids.size(0) == logits.size(0), op, ": candidate ids must be [B, K], got ",
              ids.sizes());
  const int64_t B = logits.size(0), V = logits.size(1), K = ids.size(1);
  TORCH_CHECK(hidden.dim() == 3 && hidden.size(0) == B && hidden.size(1) == K, op,
              ": candidate hidden states must be [B, K, D] = [", B, ", ", K, ", D], got ", hidden.sizes());
  const int64_t D = hidden.size(2);
  TORCH_CHECK(direction.dim() == 1 && direction.size(0) == D && midpoint.dim() == 1 && midpoint.size(0) == D, op,
              ": direction and midpoint must be [D] with D = ", D);
  TORCH_CHECK(direction.scalar_type() == at::kFloat && midpoint.scalar_type() == at::kFloat &&
                  direction.is_contiguous() && midpoint.is_contiguous(),
              op, ": direction and midpoint must be contiguous float32");
  TORCH_CHECK(beta.scalar_type() == at::kFloat && beta.numel() == B && beta.is_contiguous(), op,
              ": beta must be a contiguous float32 [B] tensor");
  TORCH_CHECK(ids.scalar_type() == at::kLong && (K == 0 || ids.stride(1) == 1), op,
              ": candidate ids must be int64 with a contiguous last dimension");
  TORCH_CHECK(D == 0 || hidden.stride(2) == 1, op, ": hidden must have a contiguous last dimension");
  TORCH_CHECK(V == 0 || logits.stride(1) == 1, op, ": logits must have a contiguous last dimension");
  TORCH_CHECK(hidden.scalar_type() == at::kFloat || hidden.scalar_type() == at::kHalf ||
                  hidden.scalar_type() == at::kBFloat16,
              op, ": hidden must be float32, float16 or bfloat16");
  TORCH_CHECK(margins.scalar_type() == at::kFloat && margins.dim() == 2 && margins.size(0) == B &&
                  margins.size(1) == K && (K == 0 || margins.stride(1) == 1),
              op, ": margins must be float32 [B, K]");
  TORCH_CHECK(mode == 0 || mode == 1, op, ": mode must be 0 (softmax) or 1 (tilt)");
  TORCH_CHECK(V < (int64_t(1) << 31), op, ": the vocabulary must be below 2^31");
  std::vector<const at::Tensor*> all = {&logits, &ids, &hidden, &direction, &midpoint, &beta, &margins};
  if (valid.has_value()) {
    const at::Tensor& v = *valid;
    TORCH_CHECK(v.scalar_type() == at::kBool && v.dim() == 2 && v.size(0) == B && v.size(1) == K &&
                    (K == 0 || v.stride(1) == 1),
                op, ": valid must be a bool [B, K] tensor with a contiguous last dimension");
    all.push_back(&v);
  }
  for (const at::Tensor* t : all) {
    TORCH_CHECK(t->device().type() == device && t->device() == logits.device(), op,
                ": all tensors must be on one ", device, " device");
  }
  SasaParams p;
  p.rows = B;
  p.vocab = V;
  p.k = K;
  p.d = D;
  p.logits_stride = B > 0 ? logits.stride(0) : 0;
  p.ids_stride = B > 0 ? ids.stride(0) : 0;
  p.hidden_stride_b = B > 0 ? hidden.stride(0) : 0;
  p.hidden_stride_k = K > 0 ? hidden.stride(1) : 0;
  p.valid_stride = (valid.has_value() && B > 0) ? valid->stride(0) : 0;
  p.margins_stride = B > 0 ? margins.stride(0) : 0;
  p.mode = static_cast<int32_t>(mode);
  p.has_valid = valid.has_value();
  return p;
}

}  // namespace detox
