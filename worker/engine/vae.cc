#include "worker/engine/vae.h"

#include "common/status_macros.h"
#include "worker/engine/json_util.h"

namespace sdfarm::engine {
namespace {
constexpr double kVaeEps = 1e-6;
}  // namespace

StatusOr<VaeConfig> VaeConfig::FromJson(const nlohmann::json& j, const std::string& where) {
  // Absent keys take the defaults of diffusers' (0.21.4) AutoencoderKL.__init__.
  VaeConfig c;
  RETURN_IF_ERROR(GetJsonOr(j, "in_channels", &c.in_channels, c.in_channels, where));
  RETURN_IF_ERROR(GetJsonOr(j, "out_channels", &c.out_channels, c.out_channels, where));
  RETURN_IF_ERROR(GetJsonOr(j, "latent_channels", &c.latent_channels, c.latent_channels, where));
  RETURN_IF_ERROR(GetJsonOr(j, "block_out_channels", &c.block_out_channels, std::vector<int64_t>{64}, where));
  RETURN_IF_ERROR(GetJsonOr(j, "layers_per_block", &c.layers_per_block, c.layers_per_block, where));
  RETURN_IF_ERROR(GetJsonOr(j, "norm_num_groups", &c.norm_num_groups, c.norm_num_groups, where));
  RETURN_IF_ERROR(GetJsonOr(j, "scaling_factor", &c.scaling_factor, c.scaling_factor, where));
  RETURN_IF_ERROR(GetJsonOr(j, "force_upcast", &c.force_upcast, c.force_upcast, where));
  RETURN_IF_ERROR(GetJsonOr(j, "sample_size", &c.sample_size, c.sample_size, where));
  std::vector<std::string> down, up;
  RETURN_IF_ERROR(GetJsonOr(j, "down_block_types", &down, std::vector<std::string>{"DownEncoderBlock2D"}, where));
  RETURN_IF_ERROR(GetJsonOr(j, "up_block_types", &up, std::vector<std::string>{"UpDecoderBlock2D"}, where));
  const size_t n = c.block_out_channels.size();
  if (n == 0 || down.size() != n || up.size() != n) {
    return InvalidArgumentError(where + ": block_out_channels, down_block_types and up_block_types must have the "
                                "same non-zero length");
  }
  for (const auto& t : down) {
    if (t != "DownEncoderBlock2D") {
      return UnimplementedError(where + ": unknown block type '" + t + "' in down_block_types (supported: "
                                "DownEncoderBlock2D)");
    }
  }
  for (const auto& t : up) {
    if (t != "UpDecoderBlock2D") {
      return UnimplementedError(where + ": unknown block type '" + t + "' in up_block_types (supported: "
                                "UpDecoderBlock2D)");
    }
  }
  auto act = j.find("act_fn");
  if (act != j.end() && !act->is_null() && *act != "silu") {
    return UnimplementedError(where + ": act_fn " + act->dump() + " is not supported");
  }
  // Later diffusers versions' options that change the network: only their "off" values.
  for (const char* key : {"shift_factor", "latents_mean", "latents_std"}) {
    auto it = j.find(key);
    if (it != j.end() && !it->is_null()) {
      return UnimplementedError(where + ": '" + key + "' = " + it->dump() + " is not supported");
    }
  }
  for (const char* key : {"use_quant_conv", "use_post_quant_conv"}) {
    auto it = j.find(key);
    if (it != j.end() && !it->is_null() && *it != true) {
      return UnimplementedError(where + ": '" + key + "' = " + it->dump() + " is not supported");
    }
  }
  auto mid_attn = j.find("mid_block_add_attention");
  if (mid_attn != j.end() && !mid_attn->is_null() && *mid_attn != true) {
    return UnimplementedError(where + ": mid_block_add_attention = false is not supported");
  }
  for (int64_t ch : c.block_out_channels) {
    if (ch <= 0 || ch % c.norm_num_groups != 0) {
      return InvalidArgumentError(where + ": block_out_channels must be positive multiples of norm_num_groups");
    }
  }
  if (c.layers_per_block <= 0 || c.latent_channels <= 0 || !(c.scaling_factor > 0)) {
    return InvalidArgumentError(where + ": layers_per_block, latent_channels and scaling_factor must be positive");
  }
  return c;
}

void Vae::MidBlock::Declare(const ParamSet::Scope& s, int64_t ch, int64_t groups) {
  resnet0.Declare(s.Sub("resnets").Sub(0), ch, ch, std::nullopt, groups, kVaeEps);
  attention.Declare(s.Sub("attentions").Sub(0), ch, ch, groups, kVaeEps);
  resnet1.Declare(s.Sub("resnets").Sub(1), ch, ch, std::nullopt, groups, kVaeEps);
}

at::Tensor Vae::MidBlock::operator()(const at::Tensor& x) const {
  at::Tensor h = resnet0(x, at::Tensor());
  h = attention(h);
  return resnet1(h, at::Tensor());
}

void Vae::Declare(const ParamSet::Scope& root) {
  const auto& c = config_;
  const size_t n = c.block_out_channels.size();
  const int64_t groups = c.norm_num_groups;

  const auto enc = root.Sub("encoder");
  enc_conv_in_.Declare(enc.Sub("conv_in"), c.in_channels, c.block_out_channels[0], 3, 1, 1);
  enc_down_.resize(n);
  int64_t out_ch = c.block_out_channels[0];
  for (size_t i = 0; i < n; ++i) {
    const auto s = enc.Sub("down_blocks").Sub(static_cast<int>(i));
    const int64_t in_ch = out_ch;
    out_ch = c.block_out_channels[i];
    Stage& st = enc_down_[i];
    st.resnets.resize(c.layers_per_block);
    for (int64_t j = 0; j < c.layers_per_block; ++j) {
      st.resnets[j].Declare(s.Sub("resnets").Sub(static_cast<int>(j)), j == 0 ? in_ch : out_ch, out_ch,
                            std::nullopt, groups, kVaeEps);
    }
    if (i + 1 < n) {
      st.downsampler.emplace();
      st.downsampler->Declare(s.Sub("downsamplers").Sub(0), out_ch, /*padding=*/0);
    }
  }
  const int64_t top = c.block_out_channels.back();
  enc_mid_.Declare(enc.Sub("mid_block"), top, groups);
  enc_norm_out_.Declare(enc.Sub("conv_norm_out"), groups, top, kVaeEps);
  enc_conv_out_.Declare(enc.Sub("conv_out"), top, 2 * c.latent_channels, 3, 1, 1);
  quant_conv_.Declare(root.Sub("quant_conv"), 2 * c.latent_channels, 2 * c.latent_channels, 1);

  post_quant_conv_.Declare(root.Sub("post_quant_conv"), c.latent_channels, c.latent_channels, 1);
  const auto dec = root.Sub("decoder");
  dec_conv_in_.Declare(dec.Sub("conv_in"), c.latent_channels, top, 3, 1, 1);
  dec_mid_.Declare(dec.Sub("mid_block"), top, groups);
  std::vector<int64_t> rev(c.block_out_channels.rbegin(), c.block_out_channels.rend());
  dec_up_.resize(n);
  out_ch = rev[0];
  for (size_t i = 0; i < n; ++i) {
    const auto s = dec.Sub("up_blocks").Sub(static_cast<int>(i));
    const int64_t prev = out_ch;
    out_ch = rev[i];
    Stage& st = dec_up_[i];
    const int64_t layers = c.layers_per_block + 1;
    st.resnets.resize(layers);
    for (int64_t j = 0; j < layers; ++j) {
      st.resnets[j].Declare(s.Sub("resnets").Sub(static_cast<int>(j)), j == 0 ? prev : out_ch, out_ch,
                            std::nullopt, groups, kVaeEps);
    }
    if (i + 1 < n) {
      st.upsampler.emplace();
      st.upsampler->Declare(s.Sub("upsamplers").Sub(0), out_ch);
    }
  }
  dec_norm_out_.Declare(dec.Sub("conv_norm_out"), groups, c.block_out_channels[0], kVaeEps);
  dec_conv_out_.Declare(dec.Sub("conv_out"), c.block_out_channels[0], c.out_channels, 3, 1, 1);
}

Vae::LatentDist Vae::Encode(const at::Tensor& image) const {
  at::Tensor x = enc_conv_in_(image);
  for (const Stage& st : enc_down_) {
    for (const auto& r : st.resnets) x = r(x, at::Tensor());
    if (st.downsampler) x = (*st.downsampler)(x);
  }
  x = enc_mid_(x);
  x = enc_conv_out_(at::silu(enc_norm_out_(x)));
  at::Tensor moments = quant_conv_(x);
  std::vector<at::Tensor> parts = moments.chunk(2, 1);
  LatentDist d;
  d.mean = parts[0];
  d.logvar = parts[1].clamp(-30.0, 20.0);
  d.std = at::exp(0.5 * d.logvar);
  return d;
}

at::Tensor Vae::Decode(const at::Tensor& latents) const {
  at::Tensor x = dec_conv_in_(post_quant_conv_(latents));
  // diffusers runs the decoder's up blocks in the dtype of the upsampler
  // weights; everything here already shares the VAE's dtype.
  x = dec_mid_(x);
  for (const Stage& st : dec_up_) {
    for (const auto& r : st.resnets) x = r(x, at::Tensor());
    if (st.upsampler) x = (*st.upsampler)(x);
  }
  return dec_conv_out_(at::silu(dec_norm_out_(x)));
}

}  // namespace sdfarm::engine
