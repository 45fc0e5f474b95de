#include "worker/engine/single_file.h"

#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status_macros.h"
#include "worker/engine/component_loader.h"
#include "worker/engine/json_util.h"
#include "worker/engine/sha256.h"

namespace sdfarm::engine {
namespace fs = std::filesystem;
namespace {

constexpr std::string_view kUnetPrefix = "model.diffusion_model.";
constexpr std::string_view kVaePrefix = "first_stage_model.";
constexpr std::string_view kTextPrefix = "cond_stage_model.";
constexpr std::string_view kSd1TextPrefix = "cond_stage_model.transformer.";
constexpr std::string_view kSd2TextPrefix = "cond_stage_model.model.";
constexpr std::string_view kEmaPrefix = "model_ema.";

bool StartsWith(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

// Replaces a leading `from` by `to`; false when `s` does not start with it.
bool ReplacePrefix(std::string* s, std::string_view from, std::string_view to) {
  if (!StartsWith(*s, from)) return false;
  *s = std::string(to) + s->substr(from.size());
  return true;
}

// "12.rest" -> (12, "rest"); nullopt when `s` does not start with a number and a dot.
std::optional<std::pair<int, std::string>> SplitIndex(std::string_view s) {
  size_t i = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
  if (i == 0 || i >= s.size() || s[i] != '.' || i > 6) return std::nullopt;
  return std::make_pair(std::stoi(std::string(s.substr(0, i))), std::string(s.substr(i + 1)));
}

// ---------------------------------------------------------------- UNet names

std::string ResnetName(std::string rest) {
  static const std::pair<const char*, const char*> kMap[] = {
      {"in_layers.0.", "norm1."},   {"in_layers.2.", "conv1."},  {"emb_layers.1.", "time_emb_proj."},
      {"out_layers.0.", "norm2."},  {"out_layers.3.", "conv2."}, {"skip_connection.", "conv_shortcut."}};
  for (const auto& [from, to] : kMap) {
    if (ReplacePrefix(&rest, from, to)) return rest;
  }
  return rest;
}

// `key` without "model.diffusion_model."; L = layers per block. Unknown keys come back unchanged.
std::string UnetKeyToDiffusers(const std::string& key, int L) {
  std::string k = key;
  if (ReplacePrefix(&k, "time_embed.0.", "time_embedding.linear_1.") ||
      ReplacePrefix(&k, "time_embed.2.", "time_embedding.linear_2.") ||
      ReplacePrefix(&k, "input_blocks.0.0.", "conv_in.") || ReplacePrefix(&k, "out.0.", "conv_norm_out.") ||
      ReplacePrefix(&k, "out.2.", "conv_out.")) {
    return k;
  }
  auto block = [&](std::string_view prefix) -> std::optional<std::tuple<int, int, std::string>> {
    if (!StartsWith(key, prefix)) return std::nullopt;
    auto a = SplitIndex(std::string_view(key).substr(prefix.size()));
    if (!a) return std::nullopt;
    auto b = SplitIndex(a->second);
    if (!b) return std::nullopt;
    return std::make_tuple(a->first, b->first, b->second);
  };
  if (auto b = block("input_blocks.")) {
    auto [n, m, rest] = *b;
    if (n < 1) return key;
    const int i = (n - 1) / (L + 1), j = (n - 1) % (L + 1);
    const std::string down = "down_blocks." + std::to_string(i) + ".";
    if (j < L && m == 0) return down + "resnets." + std::to_string(j) + "." + ResnetName(rest);
    if (j < L && m == 1) return down + "attentions." + std::to_string(j) + "." + rest;
    if (j == L && m == 0 && ReplacePrefix(&rest, "op.", "")) return down + "downsamplers.0.conv." + rest;
    return key;
  }
  if (StartsWith(key, "middle_block.")) {
    auto a = SplitIndex(std::string_view(key).substr(13));
    if (!a) return key;
    if (a->first == 0) return "mid_block.resnets.0." + ResnetName(a->second);
    if (a->first == 1) return "mid_block.attentions.0." + a->second;
    if (a->first == 2) return "mid_block.resnets.1." + ResnetName(a->second);
    return key;
  }
  if (auto b = block("output_blocks.")) {
    auto [n, m, rest] = *b;
    const int i = n / (L + 1), j = n % (L + 1);
    const std::string up = "up_blocks." + std::to_string(i) + ".";
    if (m == 0) return up + "resnets." + std::to_string(j) + "." + ResnetName(rest);
    if ((m == 1 || m == 2) && ReplacePrefix(&rest, "conv.", "")) return up + "upsamplers.0.conv." + rest;
    if (m == 1) return up + "attentions." + std::to_string(j) + "." + rest;
    return key;
  }
  return key;
}

// ----------------------------------------------------------------- VAE names

std::string VaeResnetName(std::string rest) {
  ReplacePrefix(&rest, "nin_shortcut.", "conv_shortcut.");
  return rest;
}

std::string MidName(std::string rest) {
  if (ReplacePrefix(&rest, "block_1.", "mid_block.resnets.0.")) return rest;
  if (ReplacePrefix(&rest, "block_2.", "mid_block.resnets.1.")) return rest;
  static const std::pair<const char*, const char*> kAttn[] = {{"attn_1.norm.", "mid_block.attentions.0.group_norm."},
                                                              {"attn_1.q.", "mid_block.attentions.0.to_q."},
                                                              {"attn_1.k.", "mid_block.attentions.0.to_k."},
                                                              {"attn_1.v.", "mid_block.attentions.0.to_v."},
                                                              {"attn_1.proj_out.", "mid_block.attentions.0.to_out.0."}};
  for (const auto& [from, to] : kAttn) {
    if (ReplacePrefix(&rest, from, to)) return rest;
  }
  return "";
}

// --------------------------------------------------------------- shape index

using Shapes = std::map<std::string, std::vector<int64_t>>;

const std::vector<int64_t>* ShapeOf(const Shapes& s, const std::string& name) {
  auto it = s.find(name);
  return it == s.end() ? nullptr : &it->second;
}

// Largest N + 1 over keys "<prefix>N.*"; 0 when there is none.
int CountIndexed(const Shapes& s, const std::string& prefix) {
  int n = 0;
  for (auto it = s.lower_bound(prefix); it != s.end() && StartsWith(it->first, prefix); ++it) {
    if (auto a = SplitIndex(std::string_view(it->first).substr(prefix.size()))) n = std::max(n, a->first + 1);
  }
  return n;
}

bool AnyWithPrefix(const Shapes& s, const std::string& prefix) {
  auto it = s.lower_bound(prefix);
  return it != s.end() && StartsWith(it->first, prefix);
}

// ---------------------------------------------------------------- yaml utils

struct LdmYaml {
  std::string path;
  YAML::Node root;
  YAML::Node params() const { return root["model"]["params"]; }
  YAML::Node unet() const { return params()["unet_config"]["params"]; }
  YAML::Node ddconfig() const { return params()["first_stage_config"]["params"]["ddconfig"]; }
};

StatusOr<LdmYaml> ReadLdmYaml(const std::string& path) {
  LdmYaml y;
  y.path = path;
  try {
    y.root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    return InvalidArgumentError("cannot read the original config " + path + ": " + e.what());
  }
  if (!y.params() || !y.params().IsMap()) {
    return InvalidArgumentError(path + " is not an LDM config (no model.params)");
  }
  return y;
}

template <typename T>
StatusOr<std::optional<T>> YamlGet(const YAML::Node& node, const std::string& key, const std::string& where) {
  if (!node || !node.IsMap() || !node[key]) return std::optional<T>();
  try {
    return std::optional<T>(node[key].as<T>());
  } catch (const YAML::Exception& e) {
    return InvalidArgumentError(where + ": '" + key + "' has the wrong type: " + e.what());
  }
}

// --------------------------------------------------------------- inference

struct UnetDims {
  int64_t in_channels = 4, out_channels = 4, model_channels = 320, context_dim = 768;
  std::vector<int64_t> channel_mult;
  std::vector<bool> attention;  // per level
  int layers = 2;
  int transformer_depth = 1;
  bool linear_proj = false;
};

StatusOr<UnetDims> UnetDimsFromTensors(const Shapes& s, const std::string& path) {
  UnetDims d;
  const auto* conv_in = ShapeOf(s, "input_blocks.0.0.weight");
  const auto* conv_out = ShapeOf(s, "out.2.weight");
  if (conv_in == nullptr || conv_in->size() != 4 || conv_out == nullptr || conv_out->empty()) {
    return InvalidArgumentError(path + ": the UNet has no input_blocks.0.0.weight / out.2.weight convolution");
  }
  d.model_channels = (*conv_in)[0];
  d.in_channels = (*conv_in)[1];
  d.out_channels = (*conv_out)[0];
  const int blocks = CountIndexed(s, "input_blocks.");
  int first_down = -1;
  for (int k = 1; k < blocks; ++k) {
    if (ShapeOf(s, "input_blocks." + std::to_string(k) + ".0.op.weight") != nullptr) { first_down = k; break; }
  }
  d.layers = first_down > 0 ? first_down - 1 : blocks - 1;
  if (d.layers < 1 || blocks % (d.layers + 1) != 0) {
    return InvalidArgumentError(path + ": cannot tell the UNet's layers per block from its " + std::to_string(blocks) +
                                " input blocks");
  }
  const int levels = blocks / (d.layers + 1);
  for (int i = 0; i < levels; ++i) {
    const std::string b = "input_blocks." + std::to_string(1 + i * (d.layers + 1));
    const auto* conv2 = ShapeOf(s, b + ".0.out_layers.3.weight");
    if (conv2 == nullptr) return InvalidArgumentError(path + ": no " + b + ".0.out_layers.3.weight in the UNet");
    d.channel_mult.push_back((*conv2)[0] / d.model_channels);
    const auto* proj_in = ShapeOf(s, b + ".1.proj_in.weight");
    d.attention.push_back(proj_in != nullptr);
    if (proj_in != nullptr) {
      d.linear_proj = proj_in->size() == 2;
      d.transformer_depth = std::max(1, CountIndexed(s, b + ".1.transformer_blocks."));
      if (const auto* k = ShapeOf(s, b + ".1.transformer_blocks.0.attn2.to_k.weight")) d.context_dim = (*k)[1];
    }
  }
  if (ShapeOf(s, "middle_block.1.proj_in.weight") == nullptr) {
    return UnimplementedError(path + ": the UNet's middle block has no attention (not an SD 1.x/2.x UNet)");
  }
  return d;
}

Status ApplyUnetYaml(const LdmYaml& y, UnetDims* d, std::optional<int64_t>* num_heads,
                     std::optional<int64_t>* head_channels) {
  const YAML::Node u = y.unet();
  const std::string where = y.path + " (unet_config.params)";
  ASSIGN_OR_RETURN(auto in, YamlGet<int64_t>(u, "in_channels", where));
  ASSIGN_OR_RETURN(auto out, YamlGet<int64_t>(u, "out_channels", where));
  ASSIGN_OR_RETURN(auto mc, YamlGet<int64_t>(u, "model_channels", where));
  ASSIGN_OR_RETURN(auto mult, YamlGet<std::vector<int64_t>>(u, "channel_mult", where));
  ASSIGN_OR_RETURN(auto res, YamlGet<std::vector<int64_t>>(u, "attention_resolutions", where));
  ASSIGN_OR_RETURN(auto nrb, YamlGet<int>(u, "num_res_blocks", where));
  ASSIGN_OR_RETURN(auto ctx, YamlGet<int64_t>(u, "context_dim", where));
  ASSIGN_OR_RETURN(auto lin, YamlGet<bool>(u, "use_linear_in_transformer", where));
  ASSIGN_OR_RETURN(auto depth, YamlGet<int>(u, "transformer_depth", where));
  ASSIGN_OR_RETURN(*num_heads, YamlGet<int64_t>(u, "num_heads", where));
  ASSIGN_OR_RETURN(*head_channels, YamlGet<int64_t>(u, "num_head_channels", where));
  if (*num_heads && **num_heads <= 0) num_heads->reset();          // -1: "use num_head_channels"
  if (*head_channels && **head_channels <= 0) head_channels->reset();
  if (in) d->in_channels = *in;
  if (out) d->out_channels = *out;
  if (mc) d->model_channels = *mc;
  if (mult) d->channel_mult = *mult;
  if (nrb) d->layers = *nrb;
  if (ctx) d->context_dim = *ctx;
  if (lin) d->linear_proj = *lin;
  if (depth) d->transformer_depth = *depth;
  if (res) {
    d->attention.assign(d->channel_mult.size(), false);
    for (size_t i = 0; i < d->attention.size(); ++i) {
      d->attention[i] = std::find(res->begin(), res->end(), int64_t{1} << i) != res->end();
    }
  }
  return OkStatus();
}

nlohmann::json UnetJson(const UnetDims& d, const nlohmann::json& heads, int64_t sample_size, bool upcast) {
  nlohmann::json j;
  j["_class_name"] = "UNet2DConditionModel";
  j["sample_size"] = sample_size;
  j["in_channels"] = d.in_channels;
  j["out_channels"] = d.out_channels;
  std::vector<int64_t> channels;
  std::vector<std::string> down, up;
  for (size_t i = 0; i < d.channel_mult.size(); ++i) {
    channels.push_back(d.model_channels * d.channel_mult[i]);
    down.push_back(d.attention[i] ? "CrossAttnDownBlock2D" : "DownBlock2D");
  }
  for (size_t i = d.channel_mult.size(); i-- > 0;) up.push_back(d.attention[i] ? "CrossAttnUpBlock2D" : "UpBlock2D");
  j["block_out_channels"] = channels;
  j["down_block_types"] = down;
  j["up_block_types"] = up;
  j["mid_block_type"] = "UNetMidBlock2DCrossAttn";
  j["layers_per_block"] = d.layers;
  j["cross_attention_dim"] = d.context_dim;
  j["attention_head_dim"] = heads;
  j["transformer_layers_per_block"] = d.transformer_depth;
  j["use_linear_projection"] = d.linear_proj;
  j["upcast_attention"] = upcast;
  return j;
}

struct VaeDims {
  int64_t in_channels = 3, out_channels = 3, latent_channels = 4, ch = 128;
  std::vector<int64_t> ch_mult;
  int64_t layers = 2;
};

// `s`: VAE tensors in LDM names (no prefix).
StatusOr<VaeDims> VaeDimsFromTensors(const Shapes& s, const std::string& path) {
  VaeDims d;
  const auto* conv_in = ShapeOf(s, "encoder.conv_in.weight");
  const auto* post = ShapeOf(s, "post_quant_conv.weight");
  const auto* conv_out = ShapeOf(s, "decoder.conv_out.weight");
  if (conv_in == nullptr || conv_in->size() != 4 || post == nullptr || post->empty() || conv_out == nullptr ||
      conv_out->empty()) {
    return InvalidArgumentError(path + ": not an LDM VAE (needs encoder.conv_in, post_quant_conv and "
                                "decoder.conv_out weights)");
  }
  d.ch = (*conv_in)[0];
  d.in_channels = (*conv_in)[1];
  d.latent_channels = (*post)[0];
  d.out_channels = (*conv_out)[0];
  const int levels = CountIndexed(s, "encoder.down.");
  d.layers = CountIndexed(s, "encoder.down.0.block.");
  for (int i = 0; i < levels; ++i) {
    const auto* conv2 = ShapeOf(s, "encoder.down." + std::to_string(i) + ".block.0.conv2.weight");
    if (conv2 == nullptr) return InvalidArgumentError(path + ": no encoder.down." + std::to_string(i) + ".block.0");
    d.ch_mult.push_back((*conv2)[0] / d.ch);
  }
  if (levels == 0 || d.layers == 0) return InvalidArgumentError(path + ": the VAE has no encoder.down blocks");
  return d;
}

Status ApplyVaeYaml(const LdmYaml& y, VaeDims* d) {
  const YAML::Node dd = y.ddconfig();
  const std::string where = y.path + " (first_stage_config.params.ddconfig)";
  ASSIGN_OR_RETURN(auto ch, YamlGet<int64_t>(dd, "ch", where));
  ASSIGN_OR_RETURN(auto mult, YamlGet<std::vector<int64_t>>(dd, "ch_mult", where));
  ASSIGN_OR_RETURN(auto nrb, YamlGet<int64_t>(dd, "num_res_blocks", where));
  ASSIGN_OR_RETURN(auto z, YamlGet<int64_t>(dd, "z_channels", where));
  ASSIGN_OR_RETURN(auto in, YamlGet<int64_t>(dd, "in_channels", where));
  ASSIGN_OR_RETURN(auto out, YamlGet<int64_t>(dd, "out_ch", where));
  if (ch) d->ch = *ch;
  if (mult) d->ch_mult = *mult;
  if (nrb) d->layers = *nrb;
  if (z) d->latent_channels = *z;
  if (in) d->in_channels = *in;
  if (out) d->out_channels = *out;
  return OkStatus();
}

nlohmann::json VaeJson(const VaeDims& d, int64_t sample_size, double scaling_factor) {
  nlohmann::json j;
  j["_class_name"] = "AutoencoderKL";
  j["in_channels"] = d.in_channels;
  j["out_channels"] = d.out_channels;
  j["latent_channels"] = d.latent_channels;
  std::vector<int64_t> channels;
  for (int64_t m : d.ch_mult) channels.push_back(d.ch * m);
  j["block_out_channels"] = channels;
  j["down_block_types"] = std::vector<std::string>(channels.size(), "DownEncoderBlock2D");
  j["up_block_types"] = std::vector<std::string>(channels.size(), "UpDecoderBlock2D");
  j["layers_per_block"] = d.layers;
  j["norm_num_groups"] = 32;
  j["sample_size"] = sample_size;
  j["scaling_factor"] = scaling_factor;
  return j;
}

// The VAE tensors of `file` under `prefix` ("" for a VAE file), renamed.
StatusOr<TensorSource> LdmVaeSource(const std::shared_ptr<SafetensorsFile>& file, const std::string& prefix,
                                    int levels) {
  TensorSource src;
  for (const auto& info : file->tensors()) {
    if (!StartsWith(info.name, prefix)) continue;
    const std::string key = info.name.substr(prefix.size());
    RETURN_IF_ERROR(src.Add(TensorSource::FileEntry(file, info, LdmVaeKeyToDiffusers(key, levels))));
  }
  return src;
}

Shapes ShapesUnder(const SafetensorsFile& file, std::string_view prefix) {
  Shapes s;
  for (const auto& info : file.tensors()) {
    if (StartsWith(info.name, prefix)) s.emplace(info.name.substr(prefix.size()), info.shape);
  }
  return s;
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// OpenCLIP text tower (after "cond_stage_model.model.") to CLIPTextModel names.
// With `projection` (SDXL's bigG tower), `text_projection` [width, proj] (used
// as x @ P) becomes CLIPTextModelWithProjection's text_projection.weight = P^T.
Status AddOpenClipText(const std::shared_ptr<SafetensorsFile>& file, int64_t layers, TensorSource* src,
                       std::string_view tower_prefix = kSd2TextPrefix, bool projection = false) {
  const std::string prefix(tower_prefix);
  for (const auto& info : file->tensors()) {
    if (!StartsWith(info.name, prefix)) continue;
    std::string k = info.name.substr(prefix.size());
    if (projection && k == "text_projection" && info.shape.size() == 2) {
      TensorSource::Entry e = TensorSource::FileEntry(file, info, "text_projection.weight");
      e.shape = {info.shape[1], info.shape[0]};
      const std::string key = info.name;
      e.get = [file, key]() -> StatusOr<at::Tensor> {
        ASSIGN_OR_RETURN(at::Tensor t, file->Get(key));
        return t.t().contiguous();
      };
      RETURN_IF_ERROR(src->Add(std::move(e)));
      continue;
    }
    if (k == "text_projection" || k == "logit_scale" || StartsWith(k, "visual.") || EndsWith(k, "position_ids")) {
      src->Ignore(info.name);
      continue;
    }
    if (k == "token_embedding.weight") {
      RETURN_IF_ERROR(src->Add(TensorSource::FileEntry(file, info, "text_model.embeddings.token_embedding.weight")));
      continue;
    }
    if (k == "positional_embedding") {
      RETURN_IF_ERROR(
          src->Add(TensorSource::FileEntry(file, info, "text_model.embeddings.position_embedding.weight")));
      continue;
    }
    if (ReplacePrefix(&k, "ln_final.", "text_model.final_layer_norm.")) {
      RETURN_IF_ERROR(src->Add(TensorSource::FileEntry(file, info, k)));
      continue;
    }
    std::string rest = k;
    if (ReplacePrefix(&rest, "transformer.resblocks.", "")) {
      auto a = SplitIndex(rest);
      if (a && a->first >= layers) {  // SD 2.x uses the penultimate layer: the last resblock is unused
        src->Ignore(info.name);
        continue;
      }
      if (a) {
        const std::string layer = "text_model.encoder.layers." + std::to_string(a->first) + ".";
        std::string r = a->second;
        if (r == "attn.in_proj_weight" || r == "attn.in_proj_bias") {
          if (info.shape.empty() || info.shape[0] % 3 != 0) {
            return InvalidArgumentError(info.name + " in " + file->path() + " is not 3 stacked projections");
          }
          const int64_t d = info.shape[0] / 3;
          const char* kind = r == "attn.in_proj_weight" ? "weight" : "bias";
          const char* names[3] = {"q_proj", "k_proj", "v_proj"};
          for (int64_t part = 0; part < 3; ++part) {
            TensorSource::Entry e = TensorSource::FileEntry(file, info, layer + "self_attn." + names[part] + "." + kind);
            e.shape[0] = d;
            const std::string key = info.name;
            e.get = [file, key, part, d]() -> StatusOr<at::Tensor> {
              ASSIGN_OR_RETURN(at::Tensor t, file->Get(key));
              return t.narrow(0, part * d, d);
            };
            if (part < 2) e.done = nullptr;  // the bytes are still needed for the next part
            RETURN_IF_ERROR(src->Add(std::move(e)));
          }
          continue;
        }
        static const std::pair<const char*, const char*> kMap[] = {{"ln_1.", "layer_norm1."},
                                                                   {"ln_2.", "layer_norm2."},
                                                                   {"attn.out_proj.", "self_attn.out_proj."},
                                                                   {"mlp.c_fc.", "mlp.fc1."},
                                                                   {"mlp.c_proj.", "mlp.fc2."}};
        bool mapped = false;
        for (const auto& [from, to] : kMap) {
          if (ReplacePrefix(&r, from, to)) {
            RETURN_IF_ERROR(src->Add(TensorSource::FileEntry(file, info, layer + r)));
            mapped = true;
            break;
          }
        }
        if (mapped) continue;
      }
    }
    // Unknown: offered under its stored name, so LoadParams names it as unused.
    RETURN_IF_ERROR(src->Add(TensorSource::FileEntry(file, info, info.name)));
  }
  return OkStatus();
}

Status CheckPredictionType(const std::string& p) {
  if (p.empty() || p == "epsilon" || p == "v_prediction") return OkStatus();
  return InvalidArgumentError("unknown prediction type '" + p + "' (epsilon or v_prediction)");
}

std::string ExeDir() {
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string() : exe.parent_path().string();
}

}  // namespace

std::string LdmVaeKeyToDiffusers(const std::string& key, int levels) {
  for (const char* side : {"encoder.", "decoder."}) {
    if (!StartsWith(key, side)) continue;
    std::string rest = key.substr(8);
    const std::string out = side;
    if (ReplacePrefix(&rest, "norm_out.", "conv_norm_out.")) return out + rest;
    if (ReplacePrefix(&rest, "mid.", "")) {
      std::string m = MidName(rest);
      if (!m.empty()) return out + VaeResnetName(m);
      return key;
    }
    const bool enc = out == "encoder.";
    if (ReplacePrefix(&rest, enc ? "down." : "up.", "")) {
      auto a = SplitIndex(rest);
      if (!a) return key;
      const int i = enc ? a->first : levels - 1 - a->first;
      const std::string blk = out + (enc ? "down_blocks." : "up_blocks.") + std::to_string(i) + ".";
      std::string r = a->second;
      if (ReplacePrefix(&r, "block.", "")) {
        auto j = SplitIndex(r);
        if (!j) return key;
        return blk + "resnets." + std::to_string(j->first) + "." + VaeResnetName(j->second);
      }
      if (ReplacePrefix(&r, enc ? "downsample.conv." : "upsample.conv.", "")) {
        return blk + (enc ? "downsamplers.0.conv." : "upsamplers.0.conv.") + r;
      }
      return key;
    }
    return key;
  }
  return key;
}

bool IsPickleCheckpoint(const std::string& path) {
  const std::string ext = fs::path(path).extension().string();
  return ext == ".ckpt" || ext == ".pt" || ext == ".pth" || ext == ".bin";
}

Status PickleRefusal(const std::string& path) {
  const std::string out = fs::path(path).replace_extension(".safetensors").string();
  return InvalidArgumentError(
      path + " is a PyTorch pickle checkpoint; sdfarm does not load pickles (unpickling runs arbitrary code). "
             "Convert it once, on a machine you trust, to .safetensors, e.g.: python3 -c \"import torch, "
             "safetensors.torch as st; sd = torch.load('" + path + "', map_location='cpu', weights_only=True); "
             "sd = sd.get('state_dict', sd); st.save_file({k: v.contiguous() for k, v in sd.items() if "
             "isinstance(v, torch.Tensor)}, '" + out + "')\" (or diffusers' "
             "scripts/convert_original_stable_diffusion_to_diffusers.py --to_safetensors)");
}

StatusOr<std::string> DefaultTokenizerDir() {
  std::vector<std::string> tried;
  if (const char* env = std::getenv("SDFARM_TOKENIZER_DIR"); env != nullptr && *env != '\0') tried.push_back(env);
  const std::string exe = ExeDir();
  if (!exe.empty()) {
    tried.push_back(exe + "/tokenizer");
    tried.push_back(exe + "/../share/sdfarm/tokenizer");
  }
#ifdef SDFARM_SOURCE_TOKENIZER_DIR
  tried.push_back(SDFARM_SOURCE_TOKENIZER_DIR);
#endif
  std::string list;
  for (const auto& dir : tried) {
    std::error_code ec;
    if (fs::is_regular_file(dir + "/vocab.json", ec) && fs::is_regular_file(dir + "/merges.txt", ec)) return dir;
    list += (list.empty() ? "" : ", ") + dir;
  }
  return NotFoundError("no CLIP tokenizer for the single-file checkpoint (looked in " + list +
                       "): set SDFARM_TOKENIZER_DIR to a folder with vocab.json and merges.txt, or pass "
                       "--model-config with a diffusers folder");
}

namespace {

constexpr std::string_view kSdxlText1Prefix = "conditioner.embedders.0.transformer.";
constexpr std::string_view kSdxlText2Prefix = "conditioner.embedders.1.model.";

// An SDXL checkpoint, described by the diffusers folder options.model_config.
StatusOr<SingleFilePlan> PlanSdxlSingleFile(const std::shared_ptr<SafetensorsFile>& file, const std::string& path,
                                            const SingleFileOptions& options) {
  const std::string folder = options.model_config;
  if (folder.empty()) {
    return UnimplementedError(path + " is an SDXL checkpoint (conditioner.embedders.*): pass --model-config with a "
                              "diffusers SDXL folder (e.g. stable-diffusion-xl-base-1.0 without weights) for its "
                              "configs, tokenizers and scheduler; sdfarm does not infer SDXL configs from tensors");
  }
  std::error_code ec;
  for (const char* part : {"unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"}) {
    if (!fs::is_directory(folder + "/" + part, ec)) {
      return InvalidArgumentError("--model-config " + folder + " is not an SDXL folder: it has no " + part + "/");
    }
  }
  if (!options.original_config.empty()) {
    return UnimplementedError(path + ": SDXL checkpoints take their configs from --model-config, not an LDM yaml");
  }
  if (options.ema) return InvalidArgumentError(path + ": --ema is not supported for SDXL checkpoints");
  SingleFilePlan plan;
  plan.path = path;
  plan.sdxl = true;
  ASSIGN_OR_RETURN(plan.unet_config, ReadJsonFile(folder + "/unet/config.json"));
  ASSIGN_OR_RETURN(plan.vae_config, ReadJsonFile(folder + "/vae/config.json"));
  ASSIGN_OR_RETURN(plan.text_config, ReadJsonFile(folder + "/text_encoder/config.json"));
  ASSIGN_OR_RETURN(plan.text_2_config, ReadJsonFile(folder + "/text_encoder_2/config.json"));
  plan.text_2_config["architectures"] = {"CLIPTextModelWithProjection"};
  plan.tokenizer_dir = folder + "/tokenizer";
  plan.tokenizer_2_dir = folder + "/tokenizer_2";
  if (fs::is_regular_file(folder + "/model_index.json", ec)) {
    ASSIGN_OR_RETURN(nlohmann::json index, ReadJsonFile(folder + "/model_index.json"));
    plan.force_zeros_for_empty_prompt = index.value("force_zeros_for_empty_prompt", true);
  }
  StableDiffusionModel tmp;
  RETURN_IF_ERROR(LoadFolderScheduler(folder + "/scheduler/scheduler_config.json", &tmp, /*sd_pipeline_fixups=*/false));
  plan.scheduler_config = tmp.scheduler_config;
  plan.default_sampler = tmp.default_sampler;
  if (!options.prediction_type.empty()) plan.scheduler_config.prediction_type = options.prediction_type;

  ASSIGN_OR_RETURN(UNetConfig unet_cfg, UNetConfig::FromJson(plan.unet_config, path + " (UNet config)"));
  ASSIGN_OR_RETURN(VaeConfig vae_cfg, VaeConfig::FromJson(plan.vae_config, path + " (VAE config)"));
  const int L = static_cast<int>(unet_cfg.layers_per_block.front());
  const int64_t text_2_layers = plan.text_2_config.value("num_hidden_layers", int64_t{0});
  TensorSource text_raw;
  for (const auto& info : file->tensors()) {
    const std::string& name = info.name;
    if (StartsWith(name, kUnetPrefix)) {
      std::string key = name.substr(kUnetPrefix.size());
      std::string target;
      if (ReplacePrefix(&key, "label_emb.0.0.", "add_embedding.linear_1.") ||
          ReplacePrefix(&key, "label_emb.0.2.", "add_embedding.linear_2.")) {
        target = key;
      } else {
        target = UnetKeyToDiffusers(key, L);
      }
      RETURN_IF_ERROR(plan.unet.Add(TensorSource::FileEntry(file, info, target)));
    } else if (StartsWith(name, kSdxlText1Prefix)) {
      if (EndsWith(name, "position_ids")) {
        text_raw.Ignore(name);
        continue;
      }
      RETURN_IF_ERROR(text_raw.Add(TensorSource::FileEntry(file, info, name.substr(kSdxlText1Prefix.size()))));
    } else if (StartsWith(name, kSdxlText2Prefix) || StartsWith(name, kVaePrefix)) {
      continue;  // below
    } else {
      plan.unet.Ignore(name);  // schedule buffers, EMA copies and anything else outside the parts
    }
  }
  ASSIGN_OR_RETURN(plan.text, WithTextModelPrefix(std::move(text_raw)));
  RETURN_IF_ERROR(AddOpenClipText(file, text_2_layers, &plan.text_2, kSdxlText2Prefix, /*projection=*/true));
  ASSIGN_OR_RETURN(plan.vae, LdmVaeSource(file, std::string(kVaePrefix),
                                          static_cast<int>(vae_cfg.block_out_channels.size())));
  return plan;
}

}  // namespace

StatusOr<SingleFilePlan> PlanSingleFile(const std::string& path, const SingleFileOptions& options) {
  RETURN_IF_ERROR(CheckPredictionType(options.prediction_type));
  if (IsPickleCheckpoint(path)) return PickleRefusal(path);
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return NotFoundError("checkpoint " + path + " does not exist");
  StatusOr<std::shared_ptr<SafetensorsFile>> opened = SafetensorsFile::Open(path);
  if (!opened.ok()) {
    return Status(opened.status().code(),
                  path + " is not a readable .safetensors checkpoint (truncated or damaged?): " +
                      opened.status().message());
  }
  std::shared_ptr<SafetensorsFile> file = *opened;

  SingleFilePlan plan;
  plan.path = path;
  const Shapes unet_shapes = ShapesUnder(*file, kUnetPrefix);
  if (unet_shapes.empty()) {
    std::string examples;
    for (size_t i = 0; i < file->tensors().size() && i < 3; ++i) {
      examples += (i ? ", '" : "'") + file->tensors()[i].name + "'";
    }

    return InvalidArgumentError(path + " is not a Stable Diffusion checkpoint: it has no model.diffusion_model.* "
                                "(UNet) tensors" + (examples.empty() ? "" : " (it holds e.g. " + examples + ")"));
  }
  if (!ShapesUnder(*file, kSdxlText2Prefix).empty()) return PlanSdxlSingleFile(file, path, options);
  const bool has_sd1_text = !ShapesUnder(*file, kSd1TextPrefix).empty();
  plan.sd2 = !ShapesUnder(*file, kSd2TextPrefix).empty();
  if (!plan.sd2 && !has_sd1_text) {
    return InvalidArgumentError(path + ": no text encoder (neither cond_stage_model.transformer.* of SD 1.x nor "
                                "cond_stage_model.model.* of SD 2.x)");
  }
  const Shapes vae_shapes = ShapesUnder(*file, kVaePrefix);
  if (vae_shapes.empty()) return InvalidArgumentError(path + ": no first_stage_model.* (VAE) tensors");

  // Which configs describe it.
  std::string yaml_path = options.original_config;
  if (yaml_path.empty() && options.model_config.empty()) {
    const std::string beside = fs::path(path).replace_extension(".yaml").string();
    if (fs::is_regular_file(beside, ec)) yaml_path = beside;
  }
  std::optional<LdmYaml> yaml;
  if (!yaml_path.empty()) {
    if (!fs::is_regular_file(yaml_path, ec)) return NotFoundError("original config " + yaml_path + " does not exist");
    ASSIGN_OR_RETURN(yaml, ReadLdmYaml(yaml_path));
    plan.original_config = yaml_path;
  }
  const std::string folder = options.model_config;
  if (!folder.empty() && !fs::is_directory(folder, ec)) {
    return NotFoundError("model config folder " + folder + " does not exist");
  }

  // Prediction type.
  std::string prediction = options.prediction_type;
  if (prediction.empty() && yaml) {
    ASSIGN_OR_RETURN(auto param, YamlGet<std::string>(yaml->params(), "parameterization", yaml->path));
    prediction = param && *param == "v" ? "v_prediction" : "epsilon";
  }

  // UNet, VAE and scheduler.
  if (yaml || folder.empty()) {
    ASSIGN_OR_RETURN(UnetDims ud, UnetDimsFromTensors(unet_shapes, path));
    std::optional<int64_t> num_heads, head_channels;
    if (yaml) RETURN_IF_ERROR(ApplyUnetYaml(*yaml, &ud, &num_heads, &head_channels));
    if (prediction.empty() && !folder.empty()) {
      ASSIGN_OR_RETURN(SchedulerConfig sc, SchedulerConfig::FromFile(folder + "/scheduler/scheduler_config.json"));
      prediction = sc.prediction_type;
    }
    if (prediction.empty()) {
      if (plan.sd2) {
        return InvalidArgumentError(
            path + " is an SD 2.x checkpoint, which may predict epsilon (512-base) or v (768-v): pass "
                   "--prediction-type epsilon|v_prediction or --original-config with its LDM yaml "
                   "(parameterization: \"v\" for v-prediction)");
      }
      prediction = "epsilon";
    }
    nlohmann::json heads;
    if (num_heads) {
      heads = *num_heads;
    } else {
      const int64_t head_dim = head_channels ? *head_channels : (plan.sd2 ? 64 : 0);
      if (head_dim == 0) {
        heads = 8;  // SD 1.x: 8 heads in every block
      } else {
        std::vector<int64_t> per_block;
        for (int64_t m : ud.channel_mult) {
          const int64_t ch = ud.model_channels * m;
          if (ch % head_dim != 0) {
            return InvalidArgumentError(path + ": UNet block width " + std::to_string(ch) +
                                        " is not a multiple of the head size " + std::to_string(head_dim) +
                                        "; pass --original-config (num_head_channels) or --model-config");
          }
          per_block.push_back(ch / head_dim);
        }
        heads = per_block;
      }
    }
    int64_t sample_size = plan.sd2 && prediction == "v_prediction" ? 96 : 64;
    double scale_factor = 0.18215;
    double beta_start = 0.00085, beta_end = 0.012;
    int64_t timesteps = 1000;
    if (yaml) {
      ASSIGN_OR_RETURN(auto image_size, YamlGet<int64_t>(yaml->params(), "image_size", yaml->path));
      ASSIGN_OR_RETURN(auto sf, YamlGet<double>(yaml->params(), "scale_factor", yaml->path));
      ASSIGN_OR_RETURN(auto ls, YamlGet<double>(yaml->params(), "linear_start", yaml->path));
      ASSIGN_OR_RETURN(auto le, YamlGet<double>(yaml->params(), "linear_end", yaml->path));
      ASSIGN_OR_RETURN(auto ts, YamlGet<int64_t>(yaml->params(), "timesteps", yaml->path));
      if (image_size) sample_size = *image_size;
      if (sf) scale_factor = *sf;
      if (ls) beta_start = *ls;
      if (le) beta_end = *le;
      if (ts) timesteps = *ts;
    }
    plan.unet_config = UnetJson(ud, heads, sample_size, plan.sd2);

    Shapes vs = vae_shapes;
    ASSIGN_OR_RETURN(VaeDims vd, VaeDimsFromTensors(vs, path));
    if (yaml) RETURN_IF_ERROR(ApplyVaeYaml(*yaml, &vd));
    const int64_t vae_factor = int64_t{1} << (vd.ch_mult.size() - 1);
    plan.vae_config = VaeJson(vd, sample_size * vae_factor, scale_factor);

    nlohmann::json sched = {{"_class_name", "PNDMScheduler"},
                            {"num_train_timesteps", timesteps},
                            {"beta_start", beta_start},
                            {"beta_end", beta_end},
                            {"beta_schedule", "scaled_linear"},
                            {"trained_betas", nullptr},
                            {"skip_prk_steps", true},
                            {"set_alpha_to_one", false},
                            {"steps_offset", 1},
                            {"clip_sample", false},
                            {"prediction_type", prediction},
                            {"timestep_spacing", "leading"}};
    ASSIGN_OR_RETURN(plan.scheduler_config, SchedulerConfig::FromJson(sched.dump()));
    plan.default_sampler = "pndm";
  } else {
    ASSIGN_OR_RETURN(plan.unet_config, ReadJsonFile(folder + "/unet/config.json"));
    ASSIGN_OR_RETURN(plan.vae_config, ReadJsonFile(folder + "/vae/config.json"));
    StableDiffusionModel tmp;
    RETURN_IF_ERROR(LoadFolderScheduler(folder + "/scheduler/scheduler_config.json", &tmp));
    plan.scheduler_config = tmp.scheduler_config;
    plan.default_sampler = tmp.default_sampler;
    if (!prediction.empty()) plan.scheduler_config.prediction_type = prediction;
  }

  // Text encoder and tokenizer.
  const Shapes text_shapes = ShapesUnder(*file, plan.sd2 ? kSd2TextPrefix : kSd1TextPrefix);
  if (!folder.empty()) {
    ASSIGN_OR_RETURN(plan.text_config, ReadJsonFile(folder + "/text_encoder/config.json"));
    plan.tokenizer_dir = folder + "/tokenizer";
  } else {
    nlohmann::json t;
    const std::string emb = plan.sd2 ? "token_embedding.weight" : "text_model.embeddings.token_embedding.weight";
    const auto* tok = ShapeOf(text_shapes, emb);
    if (tok == nullptr) tok = ShapeOf(text_shapes, "embeddings.token_embedding.weight");
    if (tok == nullptr || tok->size() != 2) {
      return InvalidArgumentError(path + ": the text encoder has no token embedding");
    }
    const int64_t width = (*tok)[1];
    int64_t layers = 0, intermediate = 0, positions = 77;
    if (plan.sd2) {
      const int resblocks = CountIndexed(text_shapes, "transformer.resblocks.");
      // SD 2.x runs the OpenCLIP ViT-H tower up to its penultimate layer (diffusers' config: 23 of 24).
      layers = resblocks == 24 ? 23 : resblocks;
      if (const auto* fc = ShapeOf(text_shapes, "transformer.resblocks.0.mlp.c_fc.weight")) intermediate = (*fc)[0];
      if (const auto* pos = ShapeOf(text_shapes, "positional_embedding")) positions = (*pos)[0];
    } else {
      std::string p = ShapeOf(text_shapes, "text_model.embeddings.token_embedding.weight") ? "text_model." : "";
      layers = CountIndexed(text_shapes, p + "encoder.layers.");
      if (const auto* fc = ShapeOf(text_shapes, p + "encoder.layers.0.mlp.fc1.weight")) intermediate = (*fc)[0];
      if (const auto* pos = ShapeOf(text_shapes, p + "embeddings.position_embedding.weight")) positions = (*pos)[0];
    }
    t["vocab_size"] = (*tok)[0];
    t["hidden_size"] = width;
    t["intermediate_size"] = intermediate;
    // Head counts do not show in the tensors; the standard CLIP / OpenCLIP towers use 64-wide heads. Other
    // widths stay unknown (null) and LoadSingleFile asks for --model-config.
    t["num_attention_heads"] = width % 64 == 0 ? nlohmann::json(width / 64) : nlohmann::json(nullptr);
    t["num_hidden_layers"] = layers;
    t["max_position_embeddings"] = positions;
    t["hidden_act"] = plan.sd2 ? "gelu" : "quick_gelu";
    t["layer_norm_eps"] = 1e-5;
    plan.text_config = t;
    ASSIGN_OR_RETURN(plan.tokenizer_dir, DefaultTokenizerDir());
    if (plan.sd2) plan.pad_token = "!";
  }

  // The tensors, renamed.
  ASSIGN_OR_RETURN(UNetConfig unet_cfg, UNetConfig::FromJson(plan.unet_config, path + " (UNet config)"));
  ASSIGN_OR_RETURN(VaeConfig vae_cfg, VaeConfig::FromJson(plan.vae_config, path + " (VAE config)"));
  const int64_t text_layers = plan.text_config.value("num_hidden_layers", int64_t{0});
  const int L = static_cast<int>(unet_cfg.layers_per_block.front());

  std::map<std::string, const StTensorInfo*> ema;
  for (const auto& info : file->tensors()) {
    if (StartsWith(info.name, kEmaPrefix)) ema.emplace(info.name, &info);
  }
  if (options.ema && ema.size() <= 2) {  // model_ema.decay / num_updates alone are no weights
    return InvalidArgumentError(path + " has no EMA weights (model_ema.*): load it without --ema");
  }
  std::set<std::string> ema_used;
  TensorSource text_raw;
  for (const auto& info : file->tensors()) {
    const std::string& name = info.name;
    if (StartsWith(name, kUnetPrefix)) {
      const std::string key = name.substr(kUnetPrefix.size());
      const std::string target = UnetKeyToDiffusers(key, L);
      if (!options.ema) {
        RETURN_IF_ERROR(plan.unet.Add(TensorSource::FileEntry(file, info, target)));
        continue;
      }
      // LitEma: "model_ema." + the key without "model." and without dots.
      std::string flat = "diffusion_model." + key;
      flat.erase(std::remove(flat.begin(), flat.end(), '.'), flat.end());
      auto it = ema.find(std::string(kEmaPrefix) + flat);
      if (it == ema.end()) {
        return InvalidArgumentError(path + ": --ema, but the EMA weights lack " + std::string(kEmaPrefix) + flat +
                                    " (for " + name + ")");
      }
      ema_used.insert(it->first);
      plan.unet.Ignore(name);
      RETURN_IF_ERROR(plan.unet.Add(TensorSource::FileEntry(file, *it->second, target)));
    } else if (StartsWith(name, kVaePrefix)) {
      continue;  // below
    } else if (StartsWith(name, kSd1TextPrefix) && !plan.sd2) {
      if (EndsWith(name, "position_ids")) {
        text_raw.Ignore(name);
        continue;
      }
      RETURN_IF_ERROR(text_raw.Add(TensorSource::FileEntry(file, info, name.substr(kSd1TextPrefix.size()))));
    } else if (StartsWith(name, kTextPrefix)) {
      continue;  // SD 2.x tower below
    } else if (StartsWith(name, kEmaPrefix)) {
      if (!options.ema || ema_used.count(name) == 0) plan.unet.Ignore(name);
    } else {
      plan.unet.Ignore(name);  // DDPM schedule buffers and anything else outside the three parts
    }
  }
  if (options.ema) {
    for (const auto& [name, info] : ema) {
      if (ema_used.count(name) == 0 && name != "model_ema.decay" && name != "model_ema.num_updates") {
        return InvalidArgumentError("tensor '" + name + "' in " + path + " matches no UNet weight");
      }
    }
  }
  if (plan.sd2) {
    RETURN_IF_ERROR(AddOpenClipText(file, text_layers, &plan.text));
  } else {
    ASSIGN_OR_RETURN(plan.text, WithTextModelPrefix(std::move(text_raw)));
  }
  ASSIGN_OR_RETURN(plan.vae, LdmVaeSource(file, std::string(kVaePrefix),
                                          static_cast<int>(vae_cfg.block_out_channels.size())));
  return plan;
}

StatusOr<std::unique_ptr<StableDiffusionModel>> LoadSingleFile(const std::string& path,
                                                               const SingleFileOptions& options,
                                                               const at::Device& device, at::ScalarType dtype) {
  const auto start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(SingleFilePlan plan, PlanSingleFile(path, options));
  auto m = std::make_unique<StableDiffusionModel>();
  m->dir = path;
  m->name = fs::path(path).stem().string();
  m->single_file = true;
  m->device = device;
  m->dtype = dtype;
  if (plan.text_config["num_attention_heads"].is_null()) {
    return InvalidArgumentError(
        path + ": the text encoder is " + plan.text_config["hidden_size"].dump() +
        " wide, not a multiple of 64, so its head count (standard: width / 64) cannot be inferred from the tensors "
        "or an LDM yaml; pass --model-config with a diffusers folder whose text_encoder/config.json describes it");
  }
  ASSIGN_OR_RETURN(ClipTokenizer tok, ClipTokenizer::Load(plan.tokenizer_dir, plan.pad_token));
  m->tokenizer = std::make_unique<ClipTokenizer>(std::move(tok));
  ASSIGN_OR_RETURN(ClipTextConfig text_cfg, ClipTextConfig::FromJson(plan.text_config, path + " (text config)"));
  ASSIGN_OR_RETURN(UNetConfig unet_cfg, UNetConfig::FromJson(plan.unet_config, path + " (UNet config)"));
  ASSIGN_OR_RETURN(VaeConfig vae_cfg, VaeConfig::FromJson(plan.vae_config, path + " (VAE config)"));
  ASSIGN_OR_RETURN(m->text_encoder, MakeTextEncoder(std::move(text_cfg), plan.text, device, dtype, &m->text_encoder_params));
  ASSIGN_OR_RETURN(m->unet, MakeUNet(std::move(unet_cfg), plan.unet, device, dtype, &m->unet_params));
  m->sample_size = m->unet->config().sample_size;
  m->vae_dtype = (dtype == at::kHalf && vae_cfg.force_upcast) ? at::kFloat : dtype;
  ASSIGN_OR_RETURN(m->vae, MakeVae(std::move(vae_cfg), plan.vae, device, m->vae_dtype));
  m->scheduler_config = plan.scheduler_config;
  m->default_sampler = plan.default_sampler;
  if (plan.sdxl) {
    ASSIGN_OR_RETURN(ClipTokenizer tok2, ClipTokenizer::Load(plan.tokenizer_2_dir));
    m->tokenizer_2 = std::make_unique<ClipTokenizer>(std::move(tok2));
    ASSIGN_OR_RETURN(ClipTextConfig text_2_cfg,
                     ClipTextConfig::FromJson(plan.text_2_config, path + " (text_encoder_2 config)"));
    ASSIGN_OR_RETURN(m->text_encoder_2, MakeTextEncoder(std::move(text_2_cfg), plan.text_2, device, dtype));
    m->force_zeros_for_empty_prompt = plan.force_zeros_for_empty_prompt;
  }
  RETURN_IF_ERROR(CheckModelParts(*m, path));
  ASSIGN_OR_RETURN(m->hash, ModelHash({path}));
  m->load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return m;
}

StatusOr<ExternalVae> LoadExternalVae(const std::string& path, const VaeConfig& model_vae, const UNetConfig& unet,
                                      const at::Device& device, at::ScalarType dtype) {
  ExternalVae out;
  std::error_code ec;
  std::string weights;
  if (fs::is_directory(path, ec)) {
    std::string dir = path;
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    out.name = fs::path(dir).filename().string();
    if (!fs::is_regular_file(dir + "/config.json", ec)) {
      return InvalidArgumentError("VAE folder " + dir + " has no config.json (a diffusers VAE folder needs "
                                  "config.json and diffusion_pytorch_model.safetensors)");
    }
    ASSIGN_OR_RETURN(weights, FindWeightsFile(dir, "diffusion_pytorch_model", dtype == at::kHalf ? "fp16" : ""));
    ASSIGN_OR_RETURN(out.vae, LoadVae(dir, device, dtype));
  } else {
    if (IsPickleCheckpoint(path)) return PickleRefusal(path);
    if (!fs::is_regular_file(path, ec)) return NotFoundError("VAE " + path + " does not exist");
    out.name = fs::path(path).stem().string();
    weights = path;
    StatusOr<std::shared_ptr<SafetensorsFile>> opened = SafetensorsFile::Open(path);
    if (!opened.ok()) {
      return Status(opened.status().code(), "VAE " + path + " is not a readable .safetensors file: " +
                                                opened.status().message());
    }
    std::shared_ptr<SafetensorsFile> file = *opened;
    const std::string prefix = file->Find(std::string(kVaePrefix) + "encoder.conv_in.weight") != nullptr ||
                                       file->Find(std::string(kVaePrefix) + "decoder.conv_in.weight") != nullptr
                                   ? std::string(kVaePrefix)
                                   : "";
    const Shapes shapes = ShapesUnder(*file, prefix);
    VaeConfig cfg;
    TensorSource source;
    if (AnyWithPrefix(shapes, "decoder.up_blocks.") || AnyWithPrefix(shapes, "encoder.down_blocks.")) {
      // Already diffusers names: the model's config, checked by the perfect match.
      cfg = model_vae;
      source = TensorSource::FromFile(file);
    } else {
      ASSIGN_OR_RETURN(VaeDims d, VaeDimsFromTensors(shapes, "VAE " + path));
      ASSIGN_OR_RETURN(VaeConfig inferred,
                       VaeConfig::FromJson(VaeJson(d, model_vae.sample_size, 0.18215), path + " (VAE config)"));
      const bool same = inferred.block_out_channels == model_vae.block_out_channels &&
                        inferred.layers_per_block == model_vae.layers_per_block &&
                        inferred.latent_channels == model_vae.latent_channels &&
                        inferred.in_channels == model_vae.in_channels && inferred.out_channels == model_vae.out_channels;
      cfg = same ? model_vae : inferred;
      ASSIGN_OR_RETURN(source, LdmVaeSource(file, prefix, static_cast<int>(cfg.block_out_channels.size())));
      for (const auto& info : file->tensors()) {
        if (!StartsWith(info.name, prefix)) source.Ignore(info.name);
      }
    }
    RETURN_IF_ERROR(CheckVaeFitsUNet(cfg, unet, "VAE " + path));
    auto loaded = MakeVae(std::move(cfg), source, device, dtype);
    if (!loaded.ok()) {
      return Status(loaded.status().code(), "VAE " + path + " does not fit: " + loaded.status().message());
    }
    out.vae = std::move(*loaded);
  }
  RETURN_IF_ERROR(CheckVaeFitsUNet(out.vae->config(), unet, "VAE " + path));
  if (out.vae->config().downscale_factor() != model_vae.downscale_factor()) {
    return InvalidArgumentError("VAE " + path + " scales images by " +
                                std::to_string(out.vae->config().downscale_factor()) + ", the model's VAE by " +
                                std::to_string(model_vae.downscale_factor()));
  }
  ASSIGN_OR_RETURN(std::string hex, Sha256File(weights));
  out.hash = hex.substr(0, 10);
  return out;
}

}  // namespace sdfarm::engine
