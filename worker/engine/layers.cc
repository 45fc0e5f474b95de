#include "worker/engine/layers.h"

#include <torch/version.h>

#include <cmath>
#include <limits>

namespace sdfarm::engine {

void Conv2d::Declare(const ParamSet::Scope& scope, int64_t in, int64_t out, int64_t kernel, int64_t stride_,
                     int64_t padding_, bool has_bias) {
  stride = stride_;
  padding = padding_;
  scope.Add("weight", {out, in, kernel, kernel}, &weight);
  if (has_bias) scope.Add("bias", {out}, &bias);
}

at::Tensor Conv2d::operator()(const at::Tensor& x) const {
  return at::conv2d(x, weight, bias, {stride, stride}, {padding, padding});
}

void Linear::Declare(const ParamSet::Scope& scope, int64_t in, int64_t out, bool has_bias) {
  scope.Add("weight", {out, in}, &weight);
  if (has_bias) scope.Add("bias", {out}, &bias);
}

at::Tensor Linear::operator()(const at::Tensor& x) const { return at::linear(x, weight, bias); }

void GroupNorm::Declare(const ParamSet::Scope& scope, int64_t groups_, int64_t channels, double eps_) {
  groups = groups_;
  eps = eps_;
  scope.Add("weight", {channels}, &weight, "ones");
  scope.Add("bias", {channels}, &bias, "zeros");
}

at::Tensor GroupNorm::operator()(const at::Tensor& x) const {
  return at::group_norm(x, groups, weight, bias, eps, /*cudnn_enabled=*/true);
}

void LayerNorm::Declare(const ParamSet::Scope& scope, int64_t dim_, double eps_) {
  dim = dim_;
  eps = eps_;
  scope.Add("weight", {dim}, &weight, "ones");
  scope.Add("bias", {dim}, &bias, "zeros");
}

at::Tensor LayerNorm::operator()(const at::Tensor& x) const {
  return at::layer_norm(x, {dim}, weight, bias, eps, /*cudnn_enable=*/true);
}

bool UsesFusedAttention() {
#if TORCH_VERSION_MAJOR >= 2
  return true;
#else
  return false;
#endif
}

at::Tensor MultiHeadAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const AttentionOptions& options) {
  const int64_t b = q.size(0), lq = q.size(1), lk = k.size(1);
  const int64_t heads = options.heads;
  const int64_t head_dim = q.size(2) / heads;
#if TORCH_VERSION_MAJOR >= 2
  // [B, L, H*D] -> [B, H, L, D]
  at::Tensor qh = q.view({b, lq, heads, head_dim}).transpose(1, 2);
  at::Tensor kh = k.view({b, lk, heads, head_dim}).transpose(1, 2);
  at::Tensor vh = v.view({b, lk, heads, head_dim}).transpose(1, 2);
  at::Tensor out = at::scaled_dot_product_attention(qh, kh, vh, /*attn_mask=*/{}, /*dropout_p=*/0.0,
                                                    /*is_causal=*/options.causal);
  return out.transpose(1, 2).reshape({b, lq, heads * head_dim});
#else
  // diffusers' AttnProcessor: [B*H, L, D], baddbmm with beta 0, softmax, bmm.
  at::Tensor qh = q.view({b, lq, heads, head_dim}).permute({0, 2, 1, 3}).reshape({b * heads, lq, head_dim});
  at::Tensor kh = k.view({b, lk, heads, head_dim}).permute({0, 2, 1, 3}).reshape({b * heads, lk, head_dim});
  at::Tensor vh = v.view({b, lk, heads, head_dim}).permute({0, 2, 1, 3}).reshape({b * heads, lk, head_dim});
  const auto dtype = q.scalar_type();
  if (options.upcast) {
    qh = qh.to(at::kFloat);
    kh = kh.to(at::kFloat);
  }
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  at::Tensor scores = at::baddbmm(at::empty({b * heads, lq, lk}, qh.options()), qh, kh.transpose(1, 2),
                                  /*beta=*/0.0, /*alpha=*/scale);
  if (options.causal) {
    at::Tensor mask = at::ones({lq, lk}, at::TensorOptions().dtype(at::kBool).device(q.device())).triu(1);
    scores = scores.masked_fill(mask, -std::numeric_limits<float>::infinity());
  }
  at::Tensor probs = (options.upcast ? scores.to(at::kFloat) : scores).softmax(-1).to(dtype);
  at::Tensor out = at::bmm(probs, vh);
  return out.view({b, heads, lq, head_dim}).permute({0, 2, 1, 3}).reshape({b, lq, heads * head_dim});
#endif
}

}  // namespace sdfarm::engine
