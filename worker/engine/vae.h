// AutoencoderKL (diffusers 0.21): the VAE that maps images to latents
// (encoder, for img2img and inpainting) and latents to images (decoder).
//
// Built from vae/config.json. `scaling_factor` comes from the config (0.18215
// for SD 1.x/2.x); Decode/Encode here work on unscaled latents, the pipeline
// applies the factor, as diffusers does.
#ifndef SDFARM_WORKER_ENGINE_VAE_H_
#define SDFARM_WORKER_ENGINE_VAE_H_

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "worker/engine/blocks.h"

namespace sdfarm::engine {

struct VaeConfig {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  int64_t latent_channels = 4;
  std::vector<int64_t> block_out_channels;
  int64_t layers_per_block = 1;  // diffusers' default; every SD VAE says 2
  int64_t norm_num_groups = 32;
  double scaling_factor = 0.18215;
  bool force_upcast = true;   // keep the VAE in float32 when the model runs in fp16
  int64_t sample_size = 32;

  friend bool operator==(const VaeConfig&, const VaeConfig&) = default;
  static StatusOr<VaeConfig> FromJson(const nlohmann::json& j, const std::string& where);
  // 2^(number of blocks - 1): 8 for every SD VAE.
  int64_t downscale_factor() const { return int64_t{1} << (block_out_channels.size() - 1); }
};

class Vae {
 public:
  explicit Vae(VaeConfig config) : config_(std::move(config)) {}
  const VaeConfig& config() const { return config_; }

  // Encoder and decoder parameters; either can be left out (a decode-only
  // worker still needs the file to hold them, as it must match the config).
  void Declare(const ParamSet::Scope& scope);

  struct LatentDist {
    at::Tensor mean, logvar, std;   // logvar clamped to [-30, 20], as diffusers
  };
  // image [B, 3, H, W] in [-1, 1].
  LatentDist Encode(const at::Tensor& image) const;
  // latents [B, 4, h, w] (already divided by scaling_factor). Returns [B, 3, 8h, 8w] in about [-1, 1].
  at::Tensor Decode(const at::Tensor& latents) const;

 private:
  struct MidBlock {
    ResnetBlock2D resnet0, resnet1;
    SpatialSelfAttention attention;
    void Declare(const ParamSet::Scope& s, int64_t ch, int64_t groups);
    at::Tensor operator()(const at::Tensor& x) const;
  };
  struct Stage {
    std::vector<ResnetBlock2D> resnets;
    std::optional<Downsample2D> downsampler;
    std::optional<Upsample2D> upsampler;
  };

  VaeConfig config_;
  // Encoder
  Conv2d enc_conv_in_, enc_conv_out_, quant_conv_;
  std::vector<Stage> enc_down_;
  MidBlock enc_mid_;
  GroupNorm enc_norm_out_;
  // Decoder
  Conv2d post_quant_conv_, dec_conv_in_, dec_conv_out_;
  MidBlock dec_mid_;
  std::vector<Stage> dec_up_;
  GroupNorm dec_norm_out_;
};

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_VAE_H_
