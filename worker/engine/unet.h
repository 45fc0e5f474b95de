// UNet2DConditionModel (diffusers 0.21): the denoiser.
//
// Built entirely from unet/config.json: block types and channels, layers per
// block, per-block head counts (`attention_head_dim`, which in SD configs
// counts heads, diffusers' legacy naming), `use_linear_projection`,
// `upcast_attention`, cross-attention width, 4- or 9-channel input,
// `transformer_layers_per_block` (int or per block; the mid block uses the
// last) and SDXL's `addition_embed_type: "text_time"` (the pooled text
// embedding and the six micro-conditioning values, embedded by `add_time_proj`
// and `add_embedding` and added to the timestep embedding). No SD 1.5
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
  // SDXL: "text_time", or empty (none). Then add_embedding maps
  // [projection_class_embeddings_input_dim] = pooled text + 6 x
  // addition_time_embed_dim sinusoidal channels to the time-embedding width.
  std::string addition_embed_type;
  int64_t addition_time_embed_dim = 0;
  int64_t projection_class_embeddings_input_dim = 0;

  friend bool operator==(const UNetConfig&, const UNetConfig&) = default;
  static StatusOr<UNetConfig> FromJson(const nlohmann::json& j, const std::string& where);
};

// diffusers' added_cond_kwargs for addition_embed_type "text_time" (SDXL).
struct AddedConditioning {
  at::Tensor text_embeds;  // [B, projection_dim]: text_encoder_2's pooled, projected output
  at::Tensor time_ids;     // [B, 6]: original size (h, w), crop (top, left), target size (h, w)
};

// diffusers' get_timestep_embedding (float32): [N] -> [N, dim].
at::Tensor SinusoidalEmbedding(const at::Tensor& timesteps, int64_t dim, bool flip_sin_to_cos, double freq_shift);

class UNet {
 public:
  explicit UNet(UNetConfig config) : config_(std::move(config)) {}
  const UNetConfig& config() const { return config_; }

  void Declare(const ParamSet::Scope& scope);

  // sample [B, in_channels, h, w]; timesteps: float or int tensor, scalar or
  // [B]; context [B, 77, cross_attention_dim]. Returns [B, out_channels, h, w].
  // `added` is required for (and only used by) a "text_time" UNet.
  at::Tensor Forward(const at::Tensor& sample, const at::Tensor& timesteps, const at::Tensor& context,
                     const AddedConditioning* added = nullptr) const;

  // The pieces of the embedding Forward adds to every resnet (exposed for
  // parity tests): time_embedding(time_proj(t)); the add_embedding input
  // cat(text_embeds, add_time_proj(time_ids) as [B, 6 * dim]); add_embedding's output.
  at::Tensor TimestepEmbedding(const at::Tensor& timesteps, int64_t batch, at::ScalarType dtype) const;
  at::Tensor AddEmbeddingInput(const AddedConditioning& added, at::ScalarType dtype) const;
  at::Tensor AddEmbedding(const at::Tensor& add_embeds) const;

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
  UNetConfig config_;
  Linear time_linear_1_, time_linear_2_;
  Linear add_linear_1_, add_linear_2_;  // text_time only
  Conv2d conv_in_, conv_out_;
  GroupNorm conv_norm_out_;
  std::vector<DownBlock> down_;
  std::vector<ResnetBlock2D> mid_resnets_;
  std::vector<Transformer2DModel> mid_attentions_;
  std::vector<UpBlock> up_;
};

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_UNET_H_
