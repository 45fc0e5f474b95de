#include "worker/engine/unet.h"

#include <cmath>
#include <stdexcept>

#include "common/status_macros.h"
#include "worker/engine/json_util.h"

namespace sdfarm::engine {
namespace {

// Options we do not implement: each must hold its "off" value in the config.
Status CheckAbsentOrDefault(const nlohmann::json& j, const std::string& key, const nlohmann::json& off,
                            const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null() || *it == off) return OkStatus();
  if (it->is_array()) {
    bool all_off = true;
    for (const auto& v : *it) all_off = all_off && v == off;
    if (all_off) return OkStatus();
  }
  return UnimplementedError(where + ": '" + key + "' = " + it->dump() + " is not supported");
}

}  // namespace

StatusOr<UNetConfig> UNetConfig::FromJson(const nlohmann::json& j, const std::string& where) {
  // A key the file leaves out takes the default of diffusers' (0.21.4)
  // UNet2DConditionModel.__init__, as from_pretrained does: the SD 1.5 / 2.1
  // hub files, written by diffusers 0.6-0.10, omit e.g. mid_block_type. An
  // explicit null is kept where diffusers gives it a meaning (mid_block_type:
  // no mid block).
  UNetConfig c;
  RETURN_IF_ERROR(GetJsonOr(j, "in_channels", &c.in_channels, int64_t{4}, where));
  RETURN_IF_ERROR(GetJsonOr(j, "out_channels", &c.out_channels, int64_t{4}, where));
  // diffusers' default is None, which the pipelines cannot use; 64 (SD 1.x) is the practical one.
  RETURN_IF_ERROR(GetJsonOr(j, "sample_size", &c.sample_size, c.sample_size, where));
  RETURN_IF_ERROR(GetJsonOr(j, "down_block_types", &c.down_block_types,
                            std::vector<std::string>{"CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                                     "CrossAttnDownBlock2D", "DownBlock2D"},
                            where));
  RETURN_IF_ERROR(GetJsonOr(j, "up_block_types", &c.up_block_types,
                            std::vector<std::string>{"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                                     "CrossAttnUpBlock2D"},
                            where));
  if (auto it = j.find("mid_block_type"); it != j.end() && it->is_null()) {
    c.mid_block_type.clear();  // explicitly none
  } else {
    RETURN_IF_ERROR(GetJsonOr(j, "mid_block_type", &c.mid_block_type, std::string("UNetMidBlock2DCrossAttn"), where));
  }
  RETURN_IF_ERROR(GetJsonOr(j, "block_out_channels", &c.block_out_channels,
                            std::vector<int64_t>{320, 640, 1280, 1280}, where));
  const size_t n = c.block_out_channels.size();
  if (n == 0 || c.down_block_types.size() != n || c.up_block_types.size() != n) {
    return InvalidArgumentError(where + ": block_out_channels, down_block_types and up_block_types must have the "
                                "same non-zero length");
  }
  RETURN_IF_ERROR(GetIntOrList(j, "layers_per_block", n, &c.layers_per_block, where, 2));
  if (j.contains("num_attention_heads") && !j["num_attention_heads"].is_null()) {
    // diffusers 0.21 refuses it too: in SD configs `attention_head_dim` holds the head count.
    return UnimplementedError(where + ": 'num_attention_heads' is not supported; SD configs give the head count "
                              "as 'attention_head_dim'");
  }
  RETURN_IF_ERROR(GetIntOrList(j, "attention_head_dim", n, &c.heads, where, 8));
  RETURN_IF_ERROR(GetIntOrList(j, "cross_attention_dim", n, &c.cross_attention_dim, where, 1280));
  RETURN_IF_ERROR(GetIntOrList(j, "transformer_layers_per_block", n, &c.transformer_layers, where, 1));
  RETURN_IF_ERROR(GetJsonOr(j, "norm_num_groups", &c.norm_num_groups, c.norm_num_groups, where));
  RETURN_IF_ERROR(GetJsonOr(j, "norm_eps", &c.norm_eps, c.norm_eps, where));
  RETURN_IF_ERROR(GetJsonOr(j, "downsample_padding", &c.downsample_padding, c.downsample_padding, where));
  RETURN_IF_ERROR(GetJsonOr(j, "flip_sin_to_cos", &c.flip_sin_to_cos, c.flip_sin_to_cos, where));
  RETURN_IF_ERROR(GetJsonOr(j, "freq_shift", &c.freq_shift, c.freq_shift, where));
  RETURN_IF_ERROR(GetJsonOr(j, "use_linear_projection", &c.use_linear_projection, c.use_linear_projection, where));
  RETURN_IF_ERROR(GetJsonOr(j, "upcast_attention", &c.upcast_attention, c.upcast_attention, where));
  RETURN_IF_ERROR(GetJsonOr(j, "conv_in_kernel", &c.conv_in_kernel, c.conv_in_kernel, where));
  RETURN_IF_ERROR(GetJsonOr(j, "conv_out_kernel", &c.conv_out_kernel, c.conv_out_kernel, where));
  RETURN_IF_ERROR(GetJsonOr(j, "mid_block_scale_factor", &c.mid_block_scale_factor, c.mid_block_scale_factor, where));

  RETURN_IF_ERROR(CheckAbsentOrDefault(j, "act_fn", "silu", where));
  RETURN_IF_ERROR(CheckAbsentOrDefault(j, "class_embed_type", nullptr, where));
  RETURN_IF_ERROR(CheckAbsentOrDefault(j, "num_class_embeds", nullptr, where));
  if (auto it = j.find("addition_embed_type"); it != j.end() && !it->is_null()) {
    if (*it != "text_time") {
      return UnimplementedError(where + ": 'addition_embed_type' = " + it->dump() +
                                " is not supported (supported: null, \"text_time\")");
    }
    c.addition_embed_type = "text_time";
    RETURN_IF_ERROR(GetJson(j, "addition_time_embed_dim", &c.addition_time_embed_dim, where));
    RETURN_IF_ERROR(GetJson(j, "projection_class_embeddings_input_dim", &c.projection_class_embeddings_input_dim,
                            where));
    if (c.addition_time_embed_dim <= 0 || c.projection_class_embeddings_input_dim <= 6 * c.addition_time_embed_dim) {
      return InvalidArgumentError(where + ": 'text_time' needs addition_time_embed_dim > 0 and "
                                  "projection_class_embeddings_input_dim > 6 x addition_time_embed_dim");
    }
  }
  RETURN_IF_ERROR(CheckAbsentOrDefault(j, "encoder_hid_dim", nullptr, where));
  RETURN_IF_ERROR(CheckAbsentOrDefault(j, "encoder_hid_dim_type", nullptr, where));
  RETURN_IF_ERROR(CheckAbsentOrDefault(j, "time_cond_proj_dim", nullptr, where));
  RETURN_IF_ERROR(CheckAbsentOrDefault(j, "time_embedding_type", "positional", where));
  RETURN_IF_ERROR(CheckAbsentOrDefault(j, "time_embedding_dim", nullptr, where));
  RETURN_IF_ERROR(CheckAbsentOrDefault(j, "time_embedding_act_fn", nullptr, where));
  RETURN_IF_ERROR(CheckAbsentOrDefault(j, "timestep_post_act", nullptr, where));
  RETURN_IF_ERROR(CheckAbsentOrDefault(j, "resnet_time_scale_shift", "default", where));
  RETURN_IF_ERROR(CheckAbsentOrDefault(j, "resnet_skip_time_act", false, where));
  RETURN_IF_ERROR(CheckAbsentOrDefault(j, "resnet_out_scale_factor", 1.0, where));
  RETURN_IF_ERROR(CheckAbsentOrDefault(j, "only_cross_attention", false, where));
  RETURN_IF_ERROR(CheckAbsentOrDefault(j, "dual_cross_attention", false, where));
  RETURN_IF_ERROR(CheckAbsentOrDefault(j, "center_input_sample", false, where));
  RETURN_IF_ERROR(CheckAbsentOrDefault(j, "attention_type", "default", where));
  RETURN_IF_ERROR(CheckAbsentOrDefault(j, "class_embeddings_concat", false, where));
  RETURN_IF_ERROR(CheckAbsentOrDefault(j, "mid_block_only_cross_attention", nullptr, where));
  RETURN_IF_ERROR(CheckAbsentOrDefault(j, "cross_attention_norm", nullptr, where));

  for (const auto& t : c.down_block_types) {
    if (t != "CrossAttnDownBlock2D" && t != "DownBlock2D") {
      return UnimplementedError(where + ": unknown block type '" + t +
                                "' in down_block_types (supported: CrossAttnDownBlock2D, DownBlock2D)");
    }
  }
  for (const auto& t : c.up_block_types) {
    if (t != "CrossAttnUpBlock2D" && t != "UpBlock2D") {
      return UnimplementedError(where + ": unknown block type '" + t +
                                "' in up_block_types (supported: CrossAttnUpBlock2D, UpBlock2D)");
    }
  }
  if (!c.mid_block_type.empty() && c.mid_block_type != "UNetMidBlock2DCrossAttn") {
    return UnimplementedError(where + ": unknown block type '" + c.mid_block_type +
                              "' for mid_block_type (supported: UNetMidBlock2DCrossAttn)");
  }
  for (size_t i = 0; i < n; ++i) {
    if (c.block_out_channels[i] <= 0 || c.block_out_channels[i] % c.norm_num_groups != 0) {
      return InvalidArgumentError(where + ": block_out_channels must be positive multiples of norm_num_groups");
    }
    if (c.heads[i] <= 0 || c.block_out_channels[i] % c.heads[i] != 0) {
      return InvalidArgumentError(where + ": block_out_channels[" + std::to_string(i) +
                                  "] is not divisible by its head count (attention_head_dim)");
    }
    if (c.layers_per_block[i] <= 0 || c.transformer_layers[i] <= 0 || c.cross_attention_dim[i] <= 0) {
      return InvalidArgumentError(where + ": layer counts and cross_attention_dim must be positive");
    }
  }
  if (c.in_channels <= 0 || c.out_channels <= 0 || c.conv_in_kernel % 2 == 0 || c.conv_out_kernel % 2 == 0) {
    return InvalidArgumentError(where + ": bad in/out channels or kernel sizes");
  }
  return c;
}

void UNet::Declare(const ParamSet::Scope& root) {
  const auto& c = config_;
  const size_t n = c.block_out_channels.size();
  const int64_t c0 = c.block_out_channels[0];
  const int64_t temb = c0 * 4;
  conv_in_.Declare(root.Sub("conv_in"), c.in_channels, c0, c.conv_in_kernel, 1, (c.conv_in_kernel - 1) / 2);
  time_linear_1_.Declare(root.Sub("time_embedding").Sub("linear_1"), c0, temb);
  time_linear_2_.Declare(root.Sub("time_embedding").Sub("linear_2"), temb, temb);
  if (c.addition_embed_type == "text_time") {
    add_linear_1_.Declare(root.Sub("add_embedding").Sub("linear_1"), c.projection_class_embeddings_input_dim, temb);
    add_linear_2_.Declare(root.Sub("add_embedding").Sub("linear_2"), temb, temb);
  }

  auto transformer_opts = [&](size_t i) {
    TransformerOptions o;
    o.heads = c.heads[i];
    o.cross_attention_dim = c.cross_attention_dim[i];
    o.layers = c.transformer_layers[i];
    o.groups = c.norm_num_groups;
    o.use_linear_projection = c.use_linear_projection;
    o.upcast_attention = c.upcast_attention;
    return o;
  };

  down_.resize(n);
  int64_t output_channel = c0;
  for (size_t i = 0; i < n; ++i) {
    const auto s = root.Sub("down_blocks").Sub(static_cast<int>(i));
    const int64_t input_channel = output_channel;
    output_channel = c.block_out_channels[i];
    const bool cross = c.down_block_types[i] == "CrossAttnDownBlock2D";
    DownBlock& b = down_[i];
    b.resnets.resize(c.layers_per_block[i]);
    if (cross) b.attentions.resize(c.layers_per_block[i]);
    for (int64_t j = 0; j < c.layers_per_block[i]; ++j) {
      b.resnets[j].Declare(s.Sub("resnets").Sub(static_cast<int>(j)), j == 0 ? input_channel : output_channel,
                           output_channel, temb, c.norm_num_groups, c.norm_eps);
      if (cross) {
        b.attentions[j].Declare(s.Sub("attentions").Sub(static_cast<int>(j)), output_channel, transformer_opts(i));
      }
    }
    if (i + 1 < n) {
      b.downsampler.emplace();
      b.downsampler->Declare(s.Sub("downsamplers").Sub(0), output_channel, c.downsample_padding);
    }
  }

  if (!c.mid_block_type.empty()) {
    const auto s = root.Sub("mid_block");
    const int64_t ch = c.block_out_channels.back();
    TransformerOptions o = transformer_opts(n - 1);
    mid_resnets_.resize(2);
    mid_attentions_.resize(1);
    mid_resnets_[0].Declare(s.Sub("resnets").Sub(0), ch, ch, temb, c.norm_num_groups, c.norm_eps);
    mid_attentions_[0].Declare(s.Sub("attentions").Sub(0), ch, o);
    mid_resnets_[1].Declare(s.Sub("resnets").Sub(1), ch, ch, temb, c.norm_num_groups, c.norm_eps);
    for (auto& r : mid_resnets_) r.output_scale_factor = c.mid_block_scale_factor;
  }

  up_.resize(n);
  std::vector<int64_t> rev_ch(c.block_out_channels.rbegin(), c.block_out_channels.rend());
  output_channel = rev_ch[0];
  for (size_t i = 0; i < n; ++i) {
    const size_t down_index = n - 1 - i;  // the reversed per-block lists
    const auto s = root.Sub("up_blocks").Sub(static_cast<int>(i));
    const int64_t prev_output_channel = output_channel;
    output_channel = rev_ch[i];
    const int64_t input_channel = rev_ch[std::min(i + 1, n - 1)];
    const bool cross = c.up_block_types[i] == "CrossAttnUpBlock2D";
    const int64_t layers = c.layers_per_block[down_index] + 1;
    UpBlock& b = up_[i];
    b.resnets.resize(layers);
    if (cross) b.attentions.resize(layers);
    for (int64_t j = 0; j < layers; ++j) {
      const int64_t res_skip = (j == layers - 1) ? input_channel : output_channel;
      const int64_t res_in = (j == 0) ? prev_output_channel : output_channel;
      b.resnets[j].Declare(s.Sub("resnets").Sub(static_cast<int>(j)), res_in + res_skip, output_channel, temb,
                           c.norm_num_groups, c.norm_eps);
      if (cross) {
        b.attentions[j].Declare(s.Sub("attentions").Sub(static_cast<int>(j)), output_channel,
                                transformer_opts(down_index));
      }
    }
    if (i + 1 < n) {
      b.upsampler.emplace();
      b.upsampler->Declare(s.Sub("upsamplers").Sub(0), output_channel);
    }
  }
  conv_norm_out_.Declare(root.Sub("conv_norm_out"), c.norm_num_groups, c0, c.norm_eps);
  conv_out_.Declare(root.Sub("conv_out"), c0, c.out_channels, c.conv_out_kernel, 1, (c.conv_out_kernel - 1) / 2);
}

at::Tensor SinusoidalEmbedding(const at::Tensor& timesteps, int64_t dim, bool flip_sin_to_cos, double freq_shift) {
  const int64_t half = dim / 2;
  at::Tensor t = timesteps.reshape({-1}).to(at::kFloat);
  // diffusers' get_timestep_embedding, in float32.
  at::Tensor exponent = at::arange(half, t.options()) * (-std::log(10000.0));
  exponent = exponent / (static_cast<double>(half) - freq_shift);
  at::Tensor emb = t.unsqueeze(1) * at::exp(exponent).unsqueeze(0);
  emb = at::cat({at::sin(emb), at::cos(emb)}, -1);
  if (flip_sin_to_cos) emb = at::cat({emb.slice(1, half), emb.slice(1, 0, half)}, -1);
  if (dim % 2 == 1) emb = at::constant_pad_nd(emb, {0, 1, 0, 0}, 0);
  return emb;
}

at::Tensor UNet::TimestepEmbedding(const at::Tensor& timesteps, int64_t batch, at::ScalarType dtype) const {
  at::Tensor t = timesteps.reshape({-1});
  if (t.numel() == 1) t = t.expand({batch});
  at::Tensor emb = SinusoidalEmbedding(t, config_.block_out_channels[0], config_.flip_sin_to_cos, config_.freq_shift);
  emb = emb.to(dtype);
  return time_linear_2_(at::silu(time_linear_1_(emb)));
}

at::Tensor UNet::AddEmbeddingInput(const AddedConditioning& added, at::ScalarType dtype) const {
  // diffusers: add_time_proj(time_ids.flatten()) reshaped [B, -1], concatenated
  // after text_embeds (type promotion to float32), then cast to emb's dtype.
  const int64_t batch = added.text_embeds.size(0);
  at::Tensor time_embeds = SinusoidalEmbedding(added.time_ids.reshape({-1}), config_.addition_time_embed_dim,
                                               config_.flip_sin_to_cos, config_.freq_shift)
                               .reshape({batch, -1});
  return at::cat({added.text_embeds.to(at::kFloat), time_embeds}, -1).to(dtype);
}

at::Tensor UNet::AddEmbedding(const at::Tensor& add_embeds) const {
  return add_linear_2_(at::silu(add_linear_1_(add_embeds)));
}

at::Tensor UNet::Forward(const at::Tensor& sample, const at::Tensor& timesteps, const at::Tensor& context,
                         const AddedConditioning* added) const {
  const int64_t batch = sample.size(0);
  at::Tensor temb = TimestepEmbedding(timesteps.to(sample.device()), batch, sample.scalar_type());
  if (!config_.addition_embed_type.empty()) {
    if (added == nullptr || !added->text_embeds.defined() || !added->time_ids.defined()) {
      throw std::invalid_argument("this UNet (addition_embed_type \"text_time\", SDXL) needs text_embeds and "
                                  "time_ids");
    }
    if (added->text_embeds.size(0) != batch || added->time_ids.size(0) != batch ||
        added->text_embeds.size(1) + 6 * config_.addition_time_embed_dim !=
            config_.projection_class_embeddings_input_dim) {
      throw std::invalid_argument("text_embeds / time_ids do not fit the UNet's add_embedding");
    }
    temb = temb + AddEmbedding(AddEmbeddingInput(*added, temb.scalar_type()));
  }
  at::Tensor x = conv_in_(sample);
  std::vector<at::Tensor> res = {x};
  for (const DownBlock& b : down_) {
    for (size_t j = 0; j < b.resnets.size(); ++j) {
      x = b.resnets[j](x, temb);
      if (!b.attentions.empty()) x = b.attentions[j](x, context);
      res.push_back(x);
    }
    if (b.downsampler) {
      x = (*b.downsampler)(x);
      res.push_back(x);
    }
  }
  if (!mid_resnets_.empty()) {
    x = mid_resnets_[0](x, temb);
    x = mid_attentions_[0](x, context);
    x = mid_resnets_[1](x, temb);
  }
  for (const UpBlock& b : up_) {
    for (size_t j = 0; j < b.resnets.size(); ++j) {
      at::Tensor skip = res.back();
      res.pop_back();
      x = b.resnets[j](at::cat({x, skip}, 1), temb);
      if (!b.attentions.empty()) x = b.attentions[j](x, context);
    }
    if (b.upsampler) {
      // Upsample to the matching skip connection's size: exactly x2 for even
      // sizes, and right for odd latent sizes too (diffusers' upsample_size).
      const at::Tensor& next_skip = res.back();
      x = (*b.upsampler)(x, std::vector<int64_t>{next_skip.size(2), next_skip.size(3)});
    }
  }
  x = at::silu(conv_norm_out_(x));
  return conv_out_(x);
}

}  // namespace sdfarm::engine
