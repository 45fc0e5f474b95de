// The building blocks shared by the text encoder, the UNet and the VAE:
// Conv2d, Linear, GroupNorm, LayerNorm and multi-head attention, as plain
// structs of tensors with the functional LibTorch ops.
//
// They are not torch::nn modules on purpose: constructing a torch::nn module
// allocates and randomly initialises its weights, which for SD 1.5 means
// seconds of wasted work and a second copy of 1 GB of weights in memory before
// loading. Here a layer only declares named, shaped slots (weights.h) that the
// loader fills straight from the checkpoint.
#ifndef SDFARM_WORKER_ENGINE_LAYERS_H_
#define SDFARM_WORKER_ENGINE_LAYERS_H_

#include <ATen/ATen.h>

#include <optional>

#include "worker/engine/weights.h"

namespace sdfarm::engine {

struct Conv2d {
  at::Tensor weight, bias;
  int64_t stride = 1, padding = 0;
  void Declare(const ParamSet::Scope& scope, int64_t in, int64_t out, int64_t kernel, int64_t stride_ = 1,
               int64_t padding_ = 0, bool has_bias = true);
  at::Tensor operator()(const at::Tensor& x) const;
};

struct Linear {
  at::Tensor weight, bias;
  void Declare(const ParamSet::Scope& scope, int64_t in, int64_t out, bool has_bias = true);
  at::Tensor operator()(const at::Tensor& x) const;
};

struct GroupNorm {
  at::Tensor weight, bias;
  int64_t groups = 32;
  double eps = 1e-5;
  void Declare(const ParamSet::Scope& scope, int64_t groups_, int64_t channels, double eps_);
  at::Tensor operator()(const at::Tensor& x) const;
};

struct LayerNorm {
  at::Tensor weight, bias;
  int64_t dim = 0;
  double eps = 1e-5;
  void Declare(const ParamSet::Scope& scope, int64_t dim_, double eps_);
  at::Tensor operator()(const at::Tensor& x) const;
};

struct AttentionOptions {
  int64_t heads = 1;
  bool upcast = false;        // q.k^T and softmax in float32 (SD 2.x `upcast_attention`)
  bool causal = false;        // CLIP's causal mask
};

// Scaled dot-product attention over [B, L, heads * head_dim] inputs, returning
// [B, Lq, heads * head_dim]. Uses at::scaled_dot_product_attention (flash /
// memory-efficient kernels) where LibTorch >= 2.0, else the classic
// baddbmm + softmax + bmm path of diffusers' AttnProcessor.
at::Tensor MultiHeadAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const AttentionOptions& options);

// Whether MultiHeadAttention uses at::scaled_dot_product_attention in this build.
bool UsesFusedAttention();

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_LAYERS_H_
