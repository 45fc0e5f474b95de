#include "worker/engine/layers.h"

#include <torch/version.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

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

namespace {

std::atomic<int64_t> cpu_attention_slice_bytes{kCpuAttentionSliceBytes};

// Whether LibTorch 1.13 computes the batched product [m, k] x [k, n] with its
// small-matrix CPU kernel (fewer than 400 multiply-adds per matrix). That
// kernel computes beta * result + alpha * product even for beta = 0, and
// baddbmm / bmm hand it a fresh, uninitialised result (baddbmm copies its
// input in only when beta != 0): heap garbage holding -inf or NaN (freed
// attention scores, CLIP's causal mask) then gives NaN. Thin query slices hit
// that kernel, so such products are written into zeroed tensors with the _out
// variants; the value is the same (alpha * product + 0). BLAS (larger
// products) and CUDA never read the result, and keep diffusers' exact calls.
[[maybe_unused]] bool SmallCpuProduct(const at::Tensor& t, int64_t m, int64_t k, int64_t n) {
  return t.device().is_cpu() && m * k * n < 400;
}

// Attention of the queries qh[..., q_begin : q_begin + Lq', :] (already
// sliced out) over every key. Heads are laid out as the build's kernel wants
// them: [B, H, L, D] for at::scaled_dot_product_attention, [B*H, L, D] for the
// classic path. `q_begin` places the slice for the causal mask.
at::Tensor AttendSlice(const at::Tensor& qh, const at::Tensor& kh, const at::Tensor& vh,
                       const AttentionOptions& options, int64_t q_begin, [[maybe_unused]] bool whole) {
  const int64_t lq = qh.size(-2), lk = kh.size(-2);
#if TORCH_VERSION_MAJOR >= 2
  if (whole || !options.causal) {
    return at::scaled_dot_product_attention(qh, kh, vh, /*attn_mask=*/{}, /*dropout_p=*/0.0,
                                            /*is_causal=*/options.causal);
  }
  // A causal slice: row r of the slice is query q_begin + r, which sees keys 0..q_begin + r.
  at::Tensor allowed = at::ones({lq, lk}, at::TensorOptions().dtype(at::kBool).device(qh.device()))
                           .tril(q_begin);
  return at::scaled_dot_product_attention(qh, kh, vh, allowed, /*dropout_p=*/0.0, /*is_causal=*/false);
#else
  // diffusers' AttnProcessor: baddbmm with beta 0, softmax, bmm.
  const int64_t head_dim = qh.size(-1);
  const auto dtype = qh.scalar_type();
  at::Tensor q = options.upcast ? qh.to(at::kFloat) : qh;
  at::Tensor k = options.upcast ? kh.to(at::kFloat) : kh;
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  at::Tensor scores;
  if (SmallCpuProduct(q, lq, head_dim, lk)) {
    scores = at::zeros({q.size(0), lq, lk}, q.options());
    at::baddbmm_out(scores, scores, q, k.transpose(1, 2), /*beta=*/0.0, /*alpha=*/scale);
  } else {
    scores = at::baddbmm(at::empty({q.size(0), lq, lk}, q.options()), q, k.transpose(1, 2), /*beta=*/0.0,
                         /*alpha=*/scale);
  }
  if (options.causal) {
    at::Tensor mask = at::ones({lq, lk}, at::TensorOptions().dtype(at::kBool).device(qh.device())).triu(1 + q_begin);
    scores = scores.masked_fill(mask, -std::numeric_limits<float>::infinity());
  }
  at::Tensor probs = (options.upcast ? scores.to(at::kFloat) : scores).softmax(-1).to(dtype);
  if (SmallCpuProduct(probs, lq, lk, vh.size(-1))) {
    at::Tensor out = at::zeros({probs.size(0), lq, vh.size(-1)}, vh.options());
    at::bmm_out(out, probs, vh);
    return out;
  }
  return at::bmm(probs, vh);
#endif
}

}  // namespace

int64_t SetCpuAttentionSliceBytes(int64_t bytes) { return cpu_attention_slice_bytes.exchange(bytes); }

int64_t AttentionSliceRows(int64_t batch_heads, int64_t lq, int64_t lk, int64_t score_element_bytes,
                           int64_t max_bytes) {
  const int64_t row_bytes = batch_heads * lk * score_element_bytes;
  if (max_bytes <= 0 || row_bytes <= 0 || lq * row_bytes <= max_bytes) return lq;
  return std::clamp<int64_t>(max_bytes / row_bytes, 1, lq);
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
  const int64_t query_dim = 2;
#else
  // [B, L, H*D] -> [B*H, L, D]
  at::Tensor qh = q.view({b, lq, heads, head_dim}).permute({0, 2, 1, 3}).reshape({b * heads, lq, head_dim});
  at::Tensor kh = k.view({b, lk, heads, head_dim}).permute({0, 2, 1, 3}).reshape({b * heads, lk, head_dim});
  at::Tensor vh = v.view({b, lk, heads, head_dim}).permute({0, 2, 1, 3}).reshape({b * heads, lk, head_dim});
  const int64_t query_dim = 1;
#endif
  // Only the CPU path is sliced: on CUDA the whole score matrix is computed
  // at once as before (GPU memory is planned for it, and slicing costs speed).
  const int64_t score_bytes = options.upcast ? 4 : static_cast<int64_t>(q.element_size());
  const int64_t rows = q.device().is_cpu()
                           ? AttentionSliceRows(b * heads, lq, lk, score_bytes, cpu_attention_slice_bytes.load())
                           : lq;
  at::Tensor out;
  if (rows >= lq) {
    out = AttendSlice(qh, kh, vh, options, 0, /*whole=*/true);
  } else {
    std::vector<int64_t> shape = qh.sizes().vec();
    shape.back() = vh.size(-1);
    out = at::empty(shape, vh.options());
    for (int64_t begin = 0; begin < lq; begin += rows) {
      const int64_t end = std::min(lq, begin + rows);
      out.slice(query_dim, begin, end)
          .copy_(AttendSlice(qh.slice(query_dim, begin, end), kh, vh, options, begin, /*whole=*/false));
    }
  }
#if TORCH_VERSION_MAJOR >= 2
  return out.transpose(1, 2).reshape({b, lq, heads * head_dim});
#else
  return out.view({b, heads, lq, head_dim}).permute({0, 2, 1, 3}).reshape({b, lq, heads * head_dim});
#endif
}

}  // namespace sdfarm::engine
