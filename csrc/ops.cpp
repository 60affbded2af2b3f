// The op schemas of detox_kernels, declared once. Kernels register per dispatch key in their
// own files (cpu/*_cpu.cpp, cuda/*_binding.cpp); fake implementations live next to the public
// functions in detox_kernels/ops/<op>.py; the Triton kernels are separate ops (detox::*_triton).
// The contract of each op is the docstring of detox_kernels/reference/<op>.py (and docs/kernels.md).
#include <torch/library.h>

TORCH_LIBRARY(detox, m) {
  // Soft Contrastive Decoding (contract: detox_kernels/reference/socd.py). Writes the new logits into `out`
  // (which may be `base` itself) and per-row statistics into alpha [B] f32, divergence [B] f32
  // and k [B] i32. divergence_kind: 0 fkl, 1 rkl, 2 skl, 3 jsd, 4 tvd, 5 l2.
  m.def(
      "socd(Tensor base, Tensor toxic, Tensor(a!) out, Tensor(b!) alpha, Tensor(c!) divergence, "
      "Tensor(d!) k, int divergence_kind, int k_min, int k_max, int vocab_size, bool k_ceil, "
      "bool signed_subtract) -> ()");

  // Toxification reversal (contract: detox_kernels/reference/reversal.py), in place on head_out [B, H, D] (rows
  // contiguous [H, D], any row stride); delta like head_out, neg_end [H, D] contiguous.
  m.def(
      "reverse_toxification_(Tensor(a!) head_out, Tensor delta, Tensor neg_end, float norm_exp, "
      "float sim_exp, bool renorm) -> ()");
  // SASA re-weighting (contract: detox_kernels/reference/sasa.py):
  // margins = (hidden - midpoint) . direction into `margins` [B, K] f32, then, in place,
  // logits[b, ids[b, k]] += beta[b] * weight[b, k] (mode 0 softmax over the valid candidates,
  // 1 tilt = the margin itself).
  m.def(
      "sasa_reweight(Tensor(a!) logits, Tensor ids, Tensor hidden, Tensor direction, Tensor midpoint, "
      "Tensor beta, Tensor? valid, Tensor(b!) margins, int weighting) -> ()");
  // Fused temperature / top-k / top-p sampling (contract: detox_kernels/reference/sampling.py):
  // writes into `out` [B] int64 the token drawn by inverse CDF with uniform [B] f32 in [0, 1) from
  // the warped scores of logits [B, V]. top_k 0 (or >= V) and top_p 1.0 are off.
  m.def(
      "sample_top_k_top_p(Tensor logits, Tensor uniform, Tensor(a!) out, int top_k, float top_p, "
      "float temperature) -> ()");
}
