// diffusers' building blocks shared by the UNet and the VAE: ResnetBlock2D,
// Downsample2D, Upsample2D, the VAE's single-head spatial attention and
// Transformer2DModel (self- and cross-attention with a GEGLU feed-forward).
// Parameter names follow diffusers exactly; see weights.h.
#ifndef SDFARM_WORKER_ENGINE_BLOCKS_H_
#define SDFARM_WORKER_ENGINE_BLOCKS_H_

#include <optional>
#include <vector>

#include "worker/engine/layers.h"

namespace sdfarm::engine {

struct ResnetBlock2D {
  GroupNorm norm1, norm2;
  Conv2d conv1, conv2;
  std::optional<Linear> time_emb_proj;   // absent in the VAE (no time embedding)
  std::optional<Conv2d> conv_shortcut;   // 1x1, when in != out channels
  double output_scale_factor = 1.0;

  void Declare(const ParamSet::Scope& s, int64_t in, int64_t out, std::optional<int64_t> temb_channels,
               int64_t groups, double eps);
  // temb: SiLU is applied here, as diffusers does; pass an undefined tensor in the VAE.
  at::Tensor operator()(const at::Tensor& x, const at::Tensor& temb) const;
};

struct Downsample2D {
  Conv2d conv;
  int64_t padding = 1;  // 0 means the VAE's asymmetric (0, 1, 0, 1) zero pad
  void Declare(const ParamSet::Scope& s, int64_t channels, int64_t padding_);
  at::Tensor operator()(const at::Tensor& x) const;
};

struct Upsample2D {
  Conv2d conv;
  void Declare(const ParamSet::Scope& s, int64_t channels);
  // Nearest-neighbour x2, or to `size` when given (odd latent sizes in the UNet).
  at::Tensor operator()(const at::Tensor& x, std::optional<std::vector<int64_t>> size = std::nullopt) const;
};

// The VAE mid-block attention: GroupNorm, single-head attention over the
// pixels, output projection and residual. Accepts the legacy checkpoint names
// query/key/value/proj_attn as well as to_q/to_k/to_v/to_out.0.
struct SpatialSelfAttention {
  GroupNorm group_norm;
  Linear to_q, to_k, to_v, to_out;
  int64_t heads = 1;
  void Declare(const ParamSet::Scope& s, int64_t channels, int64_t head_dim, int64_t groups, double eps);
  at::Tensor operator()(const at::Tensor& x) const;
};

struct TransformerOptions {
  int64_t heads = 8;
  int64_t cross_attention_dim = 768;
  int64_t layers = 1;
  int64_t groups = 32;
  bool use_linear_projection = false;
  bool upcast_attention = false;
};

struct Transformer2DModel {
  struct Block {
    LayerNorm norm1, norm2, norm3;
    Linear attn1_q, attn1_k, attn1_v, attn1_out;
    Linear attn2_q, attn2_k, attn2_v, attn2_out;
    Linear ff_proj, ff_out;   // GEGLU: proj to 2 * inner, gate with GELU, project back
  };
  GroupNorm norm;
  Linear proj_in_linear, proj_out_linear;   // use_linear_projection (SD 2.x)
  Conv2d proj_in_conv, proj_out_conv;       // 1x1 convolutions (SD 1.x)
  std::vector<Block> blocks;
  TransformerOptions options;

  void Declare(const ParamSet::Scope& s, int64_t channels, const TransformerOptions& opts);
  at::Tensor operator()(const at::Tensor& x, const at::Tensor& context) const;
};

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_BLOCKS_H_
