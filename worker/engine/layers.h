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

#include <cstdint>
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
//
// On the CPU, when the score matrix [B*heads, Lq, Lk] would be larger than
// the slice bound (kCpuAttentionSliceBytes), the queries are processed in
// slices of rows whose scores fit the bound: each query row's softmax only
// involves its own scores, so the result is the same up to float rounding
// (BLAS may block a shorter product differently), while the transient memory
// drops from O(Lq * Lk) to O(bound). This is what makes 512x512 fit on small
// CPU machines: 4,096 latent tokens give 16 x 4096 x 4096 float scores
// (1 GiB, twice with the softmax output) per self-attention with CFG.
// CUDA devices always take the whole matrix at once.
at::Tensor MultiHeadAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const AttentionOptions& options);

// The CPU slice bound: at most this many bytes of attention scores per slice.
// 16 MiB keeps every slice's scores and softmax output below glibc's largest
// mmap threshold (32 MiB, see ConfigureCpu in engine.cc), so the blocks are
// reused from the heap instead of being page-faulted in again for every slice;
// measured in tests/bench/RESULTS.md ("CPU attention slices").
inline constexpr int64_t kCpuAttentionSliceBytes = int64_t{16} << 20;

// Test and benchmark hook: sets the CPU slice bound for the whole process
// (<= 0: never slice) and returns the previous value. Not for concurrent use
// with renders in flight.
int64_t SetCpuAttentionSliceBytes(int64_t bytes);

// Query rows per slice for a [batch_heads, lq, lk] score matrix of
// `score_element_bytes`-byte elements under `max_bytes` (<= 0: no bound):
// lq when the whole matrix fits, else as many rows as fit, at least 1.
int64_t AttentionSliceRows(int64_t batch_heads, int64_t lq, int64_t lk, int64_t score_element_bytes,
                           int64_t max_bytes);

// Whether MultiHeadAttention uses at::scaled_dot_product_attention in this build.
bool UsesFusedAttention();

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_LAYERS_H_
