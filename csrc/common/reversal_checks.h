// Argument checks shared by the CPU and CUDA torch bindings of detox::reverse_toxification_.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "reversal_params.h"

namespace detox {

inline ReversalParams check_reversal_args(const at::Tensor& o, const at::Tensor& delta, const at::Tensor& e_neg,
                                          double norm_exp, double sim_exp, bool renorm, c10::DeviceType device) {
  TORCH_CHECK(o.dim() == 3, "detox::reverse_toxification_: head_out must be [B, H, D], got ", o.sizes());
  TORCH_CHECK(delta.sizes() == o.sizes(), "detox::reverse_toxification_: delta ", delta.sizes(),
              " must have the shape of head_out ", o.sizes());
  TORCH_CHECK(e_neg.dim() == 2 && e_neg.size(0) == o.size(1) && e_neg.size(1) == o.size(2),
              "detox::reverse_toxification_: neg_end must be [H, D] = [", o.size(1), ", ", o.size(2), "], got ",
              e_neg.sizes());
  TORCH_CHECK(delta.scalar_type() == o.scalar_type() && e_neg.scalar_type() == o.scalar_type(),
              "detox::reverse_toxification_: head_out, delta and neg_end must share one dtype");
  for (const at::Tensor* t : {&o, &delta, &e_neg}) {
    TORCH_CHECK(t->device().type() == device, "detox::reverse_toxification_: all tensors must be on ", device);
  }
  TORCH_CHECK(delta.device() == o.device() && e_neg.device() == o.device(),
              "detox::reverse_toxification_: all tensors must be on one device");
  const int64_t rows = o.size(0), heads = o.size(1), dim = o.size(2);
  const auto inner_ok = [&](const at::Tensor& t) {
    return heads * dim == 0 || ((dim == 1 || t.stride(2) == 1) && (heads == 1 || t.stride(1) == dim));
  };
  TORCH_CHECK(inner_ok(o) && inner_ok(delta),
              "detox::reverse_toxification_: each row of head_out and delta must be contiguous [H, D] "
              "(strides (any, D, 1))");
  TORCH_CHECK(e_neg.is_contiguous(), "detox::reverse_toxification_: neg_end must be contiguous");
  ReversalParams p;
  p.rows = rows;
  p.heads = heads;
  p.head_dim = dim;
  p.o_stride = rows > 1 ? o.stride(0) : heads * dim;
  p.d_stride = rows > 1 ? delta.stride(0) : heads * dim;
  p.norm_exp = static_cast<float>(norm_exp);
  p.sim_exp = static_cast<float>(sim_exp);
  p.renorm = renorm;
  return p;
}

}  // namespace detox
