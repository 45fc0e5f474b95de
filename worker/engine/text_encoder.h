// CLIPTextModel (transformers): the text encoder of Stable Diffusion; with
// `with_projection`, CLIPTextModelWithProjection (SDXL's text_encoder_2): the
// same tower plus `text_projection` (no bias) applied to the pooled output.
//
// Token + position embeddings, N pre-norm transformer layers with a causal
// mask (quick_gelu for OpenAI CLIP / SD 1.x, gelu for OpenCLIP / SD 2.x), and
// the final layer norm. Built from text_encoder/config.json.
//
//   ClipTextModel te(config);  te.Declare(params.Root());  LoadParams(...);
//   at::Tensor embeds = te.Encode(ids, /*clip_skip=*/1);     // [B, 77, hidden]
#ifndef SDFARM_WORKER_ENGINE_TEXT_ENCODER_H_
#define SDFARM_WORKER_ENGINE_TEXT_ENCODER_H_

#include <nlohmann/json.hpp>
#include <vector>

#include "worker/engine/layers.h"

namespace sdfarm::engine {

struct ClipTextConfig {  // defaults: transformers' CLIPTextConfig.__init__
  int64_t vocab_size = 49408;
  int64_t hidden_size = 512;
  int64_t intermediate_size = 2048;
  int64_t num_attention_heads = 8;
  int64_t num_hidden_layers = 12;
  int64_t max_position_embeddings = 77;
  std::string hidden_act = "quick_gelu";
  double layer_norm_eps = 1e-5;
  // CLIPTextModelWithProjection: set when config.json's "architectures" names
  // it (or by the loader for SDXL's text_encoder_2).
  bool with_projection = false;
  int64_t projection_dim = 512;

  friend bool operator==(const ClipTextConfig&, const ClipTextConfig&) = default;
  static StatusOr<ClipTextConfig> FromJson(const nlohmann::json& j, const std::string& where);
};

class ClipTextModel {
 public:
  explicit ClipTextModel(ClipTextConfig config) : config_(std::move(config)) {}
  const ClipTextConfig& config() const { return config_; }

  // Names as in transformers' CLIPTextModel state dict ("text_model.…").
  void Declare(const ParamSet::Scope& scope);

  struct Output {
    at::Tensor last_hidden_state;            // final_layer_norm(last layer)
    std::vector<at::Tensor> hidden_states;   // [0] embeddings, [l] after layer l (when requested)
    at::Tensor pooler_output;                // last_hidden_state at the first eos (argmax id)
    at::Tensor text_embeds;                  // with_projection: text_projection(pooler_output)
  };
  // input_ids: int64 [B, L], L <= max_position_embeddings.
  Output Forward(const at::Tensor& input_ids, bool output_hidden_states = false) const;

  // The prompt embeddings the pipelines use. clip_skip = n >= 1 takes the
  // n-th last layer's output and applies the final layer norm (1 = the normal
  // last_hidden_state; 2 = penultimate layer, AUTOMATIC1111's "Clip skip: 2").
  at::Tensor Encode(const at::Tensor& input_ids, int clip_skip = 1) const;

  // The output of the first `layers` layers, without the final layer norm
  // (transformers' hidden_states[layers]); SDXL uses hidden_states[-2], i.e.
  // layers = num_hidden_layers - 1. Runs only those layers.
  at::Tensor LayerOutput(const at::Tensor& input_ids, int64_t layers) const;

 private:
  struct Layer {
    LayerNorm layer_norm1, layer_norm2;
    Linear q_proj, k_proj, v_proj, out_proj, fc1, fc2;
  };
  at::Tensor RunLayer(const Layer& layer, const at::Tensor& x) const;

  ClipTextConfig config_;
  at::Tensor token_embedding_, position_embedding_;
  std::vector<Layer> layers_;
  LayerNorm final_layer_norm_;
  at::Tensor text_projection_;  // [projection_dim, hidden], with_projection only
};

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_TEXT_ENCODER_H_
