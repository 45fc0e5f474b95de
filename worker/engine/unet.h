// UNet2DConditionModel (diffusers 0.21): the denoiser.
//
// Built entirely from unet/config.json: block types and channels, layers per
// block, per-block head counts (`attention_head_dim`, which in SD configs
// counts heads, diffusers' legacy naming), `use_linear_projection`,
// `upcast_attention`, cross-attention width, 4- or 9-channel input. No SD 1.5
// shape is assumed anywhere. Unsupported options fail with a clear error
// naming the config key instead of computing something else.
//
//   ASSIGN_OR_RETURN(UNetConfig cfg, UNetConfig::FromJson(json, "unet/config.json"));
//   UNet unet(cfg);  unet.Declare(params.Root());  ... LoadParams(...)
//   at::Tensor eps = unet.Forward(latents, timesteps, text_embeddings);
#ifndef SDFARM_WORKER_ENGINE_UNET_H_
#define SDFARM_WORKER_ENGINE_UNET_H_

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "worker/engine/blocks.h"

namespace sdfarm::engine {

struct UNetConfig {
  int64_t in_channels = 4;
  int64_t out_channels = 4;
  int64_t sample_size = 64;
  std::vector<std::string> down_block_types;
  std::vector<std::string> up_block_types;
  std::string mid_block_type = "UNetMidBlock2DCrossAttn";
  std::vector<int64_t> block_out_channels;
  std::vector<int64_t> layers_per_block;          // per down block
  std::vector<int64_t> heads;                     // per down block
  std::vector<int64_t> cross_attention_dim;       // per down block
  std::vector<int64_t> transformer_layers;        // per down block
  int64_t norm_num_groups = 32;
  double norm_eps = 1e-5;
  int64_t downsample_padding = 1;
  bool flip_sin_to_cos = true;
  double freq_shift = 0;
  bool use_linear_projection = false;
  bool upcast_attention = false;
  int64_t conv_in_kernel = 3, conv_out_kernel = 3;
  double mid_block_scale_factor = 1.0;

  friend bool operator==(const UNetConfig&, const UNetConfig&) = default;
  static StatusOr<UNetConfig> FromJson(const nlohmann::json& j, const std::string& where);
};

class UNet {
 public:
  explicit UNet(UNetConfig config) : config_(std::move(config)) {}
  const UNetConfig& config() const { return config_; }

  void Declare(const ParamSet::Scope& scope);

  // sample [B, in_channels, h, w]; timesteps: float or int tensor, scalar or
  // [B]; context [B, 77, cross_attention_dim]. Returns [B, out_channels, h, w].
  at::Tensor Forward(const at::Tensor& sample, const at::Tensor& timesteps, const at::Tensor& context) const;

 private:
  struct DownBlock {
    std::vector<ResnetBlock2D> resnets;
    std::vector<Transformer2DModel> attentions;   // empty for DownBlock2D
    std::optional<Downsample2D> downsampler;
  };
  struct UpBlock {
    std::vector<ResnetBlock2D> resnets;
    std::vector<Transformer2DModel> attentions;   // empty for UpBlock2D
    std::optional<Upsample2D> upsampler;
  };
  at::Tensor TimestepEmbedding(const at::Tensor& timesteps, int64_t batch, at::ScalarType dtype) const;

  UNetConfig config_;
  Linear time_linear_1_, time_linear_2_;
  Conv2d conv_in_, conv_out_;
  GroupNorm conv_norm_out_;
  std::vector<DownBlock> down_;
  std::vector<ResnetBlock2D> mid_resnets_;
  std::vector<Transformer2DModel> mid_attentions_;
  std::vector<UpBlock> up_;
};

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_UNET_H_
