#include "worker/engine/text_encoder.h"

#include <algorithm>

#include "common/status_macros.h"
#include "worker/engine/json_util.h"

namespace sdfarm::engine {

StatusOr<ClipTextConfig> ClipTextConfig::FromJson(const nlohmann::json& j, const std::string& where) {
  // Absent keys take transformers' CLIPTextConfig defaults (ClipTextConfig's).
  ClipTextConfig c;
  RETURN_IF_ERROR(GetJsonOr(j, "vocab_size", &c.vocab_size, c.vocab_size, where));
  RETURN_IF_ERROR(GetJsonOr(j, "hidden_size", &c.hidden_size, c.hidden_size, where));
  RETURN_IF_ERROR(GetJsonOr(j, "intermediate_size", &c.intermediate_size, c.intermediate_size, where));
  RETURN_IF_ERROR(GetJsonOr(j, "num_attention_heads", &c.num_attention_heads, c.num_attention_heads, where));
  RETURN_IF_ERROR(GetJsonOr(j, "num_hidden_layers", &c.num_hidden_layers, c.num_hidden_layers, where));
  RETURN_IF_ERROR(GetJsonOr(j, "max_position_embeddings", &c.max_position_embeddings, c.max_position_embeddings, where));
  RETURN_IF_ERROR(GetJsonOr(j, "hidden_act", &c.hidden_act, c.hidden_act, where));
  RETURN_IF_ERROR(GetJsonOr(j, "layer_norm_eps", &c.layer_norm_eps, c.layer_norm_eps, where));
  RETURN_IF_ERROR(GetJsonOr(j, "projection_dim", &c.projection_dim, c.projection_dim, where));
  if (auto it = j.find("architectures"); it != j.end() && it->is_array()) {
    for (const auto& a : *it) c.with_projection = c.with_projection || a == "CLIPTextModelWithProjection";
  }
  if (c.hidden_act != "quick_gelu" && c.hidden_act != "gelu") {
    return UnimplementedError(where + ": hidden_act '" + c.hidden_act + "' is not supported (quick_gelu, gelu)");
  }
  if (c.num_attention_heads <= 0 || c.hidden_size % c.num_attention_heads != 0) {
    return InvalidArgumentError(where + ": hidden_size must be a multiple of num_attention_heads");
  }
  if (c.num_hidden_layers <= 0 || c.max_position_embeddings <= 0 || c.vocab_size <= 0) {
    return InvalidArgumentError(where + ": layer, position and vocabulary counts must be positive");
  }
  return c;
}

void ClipTextModel::Declare(const ParamSet::Scope& root) {
  const auto tm = root.Sub("text_model");
  const int64_t d = config_.hidden_size;
  tm.Sub("embeddings").Sub("token_embedding").Add("weight", {config_.vocab_size, d}, &token_embedding_);
  tm.Sub("embeddings").Sub("position_embedding").Add("weight", {config_.max_position_embeddings, d},
                                                     &position_embedding_);
  layers_.resize(config_.num_hidden_layers);
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
    const auto s = tm.Sub("encoder").Sub("layers").Sub(static_cast<int>(i));
    Layer& l = layers_[i];
    l.layer_norm1.Declare(s.Sub("layer_norm1"), d, config_.layer_norm_eps);
    l.layer_norm2.Declare(s.Sub("layer_norm2"), d, config_.layer_norm_eps);
    l.q_proj.Declare(s.Sub("self_attn").Sub("q_proj"), d, d);
    l.k_proj.Declare(s.Sub("self_attn").Sub("k_proj"), d, d);
    l.v_proj.Declare(s.Sub("self_attn").Sub("v_proj"), d, d);
    l.out_proj.Declare(s.Sub("self_attn").Sub("out_proj"), d, d);
    l.fc1.Declare(s.Sub("mlp").Sub("fc1"), d, config_.intermediate_size);
    l.fc2.Declare(s.Sub("mlp").Sub("fc2"), config_.intermediate_size, d);
  }
  final_layer_norm_.Declare(tm.Sub("final_layer_norm"), d, config_.layer_norm_eps);
  if (config_.with_projection) {
    root.Sub("text_projection").Add("weight", {config_.projection_dim, d}, &text_projection_);
  }
}

at::Tensor ClipTextModel::RunLayer(const Layer& l, const at::Tensor& x) const {
  at::Tensor h = l.layer_norm1(x);
  AttentionOptions opts;
  opts.heads = config_.num_attention_heads;
  opts.causal = true;
  h = l.out_proj(MultiHeadAttention(l.q_proj(h), l.k_proj(h), l.v_proj(h), opts));
  at::Tensor r = x + h;
  h = l.fc1(l.layer_norm2(r));
  h = config_.hidden_act == "quick_gelu" ? h * at::sigmoid(h * 1.702) : at::gelu(h);
  return r + l.fc2(h);
}

ClipTextModel::Output ClipTextModel::Forward(const at::Tensor& input_ids, bool output_hidden_states) const {
  const int64_t len = input_ids.size(1);
  at::Tensor x = at::embedding(token_embedding_, input_ids) +
                 position_embedding_.slice(0, 0, len).unsqueeze(0);
  Output out;
  if (output_hidden_states) out.hidden_states.push_back(x);
  for (const Layer& l : layers_) {
    x = RunLayer(l, x);
    if (output_hidden_states) out.hidden_states.push_back(x);
  }
  out.last_hidden_state = final_layer_norm_(x);
  // transformers' legacy pooling rule (eos_token_id == 2 in the config): the
  // position of the highest id, i.e. the first <|endoftext|>.
  at::Tensor eos = input_ids.to(at::kLong).argmax(-1);
  out.pooler_output = out.last_hidden_state.index(
      {at::arange(input_ids.size(0), input_ids.options().dtype(at::kLong)), eos});
  if (config_.with_projection) out.text_embeds = at::linear(out.pooler_output, text_projection_);
  return out;
}

at::Tensor ClipTextModel::Encode(const at::Tensor& input_ids, int clip_skip) const {
  if (clip_skip <= 1) return Forward(input_ids).last_hidden_state;
  // Stop early: the layers after the one we take are never needed.
  const int64_t len = input_ids.size(1);
  at::Tensor x = at::embedding(token_embedding_, input_ids) +
                 position_embedding_.slice(0, 0, len).unsqueeze(0);
  const int64_t run = std::max<int64_t>(0, config_.num_hidden_layers - (clip_skip - 1));
  for (int64_t i = 0; i < run; ++i) x = RunLayer(layers_[i], x);
  return final_layer_norm_(x);
}

at::Tensor ClipTextModel::LayerOutput(const at::Tensor& input_ids, int64_t layers) const {
  const int64_t len = input_ids.size(1);
  at::Tensor x = at::embedding(token_embedding_, input_ids) +
                 position_embedding_.slice(0, 0, len).unsqueeze(0);
  const int64_t run = std::clamp<int64_t>(layers, 0, config_.num_hidden_layers);
  for (int64_t i = 0; i < run; ++i) x = RunLayer(layers_[i], x);
  return x;
}

}  // namespace sdfarm::engine
