// The diffusion engine's public API: load a Stable Diffusion pipeline folder
// once, then render requests (txt2img, img2img, inpainting) that give the
// same images as Hugging Face diffusers for the same model, seed and settings.
//
//   ASSIGN_OR_RETURN(auto engine, Engine::Load("models/sd15", {.device = "cuda"}));
//   RenderRequest req;
//   req.items = {{.prompt = "a red fox", .seed = 42, .guidance_scale = 7.5}};
//   req.steps = 30;
//   ASSIGN_OR_RETURN(RenderResult out, engine->Render(req, [](const StepInfo& s) {
//     return !cancelled;   // false stops between steps with a Cancelled status
//   }));
//
// Each item is one image with its own seed: the item with seed s starts from
// torch.randn((1,4,h,w), generator=torch.Generator("cpu").manual_seed(s)) and
// every later random draw of that image comes from its own generator, so an
// image never depends on what else was in its batch. SeedMode::kShared
// reproduces diffusers' default of one generator for the whole batch.
//
// Nothing in this header needs LibTorch; errors are Status values and no
// exception leaves the engine. An Engine is used by one thread at a time (the
// worker gives the model to one thread, as llama.cpp's server does).
#ifndef SDFARM_WORKER_ENGINE_ENGINE_H_
#define SDFARM_WORKER_ENGINE_ENGINE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "worker/engine/a1111_parameters.h"
#include "worker/engine/png_io.h"
#include "worker/engine/status.h"

namespace at {
class Tensor;
}  // namespace at

namespace sdfarm::engine {

struct EngineOptions {
  std::string device = "cpu";  // "cpu", "cuda", "cuda:1"
  std::string dtype;           // "fp32", "fp16", "bf16"; empty: fp32 on CPU, fp16 on CUDA
  int threads = 0;             // intra-op CPU threads; 0: OMP_NUM_THREADS if set, else one per core

  // What a single-file checkpoint (a model path naming a .safetensors file in
  // the original LDM / A1111 layout) cannot say about itself. The architecture
  // is inferred from the tensors (SD 1.x, SD 2.x, 9-channel inpainting) with
  // the standard configs of those architectures, unless:
  std::string model_config;     // a diffusers folder whose component configs, tokenizer and scheduler describe it
  std::string original_config;  // the LDM yaml (default: <checkpoint>.yaml beside the file, as A1111 does)
  std::string prediction_type;  // "epsilon" or "v_prediction": overrides what the file and configs say
  bool ema = false;             // take the UNet from the file's EMA weights (model_ema.*)

  // A VAE used for every encode and decode instead of the model's own: a
  // diffusers VAE folder (config.json + weights) or a single-file VAE.
  std::string vae;
};

// A LoRA applied to one request: kohya/A1111 files (lora_unet_*, lora_te_*,
// .alpha) or diffusers-format files / folders. Each adapted layer computes
// W x + b + scale * (alpha / rank) * up(down(x)), as diffusers 0.21.4 does with
// cross_attention_kwargs={"scale": scale}, in the UNet and the text encoder.
struct LoraRef {
  std::string path;    // a .safetensors file, or a folder holding pytorch_lora_weights.safetensors
  double scale = 1.0;  // 0: exactly the base model
  friend bool operator==(const LoraRef&, const LoraRef&) = default;
};

// What A1111 writes about a LoRA ("Lora hashes: name: hash").
struct LoraInfo {
  std::string name;  // the file's stem, e.g. "add_detail"
  std::string hash;  // A1111's: the first 12 hex digits of the SHA-256 of the tensor data (after the header)
};

enum class SeedMode {
  kPerImage,  // one generator per item, seeded with the item's seed (sdfarm's default)
  kShared,    // one generator seeded with `shared_seed` for the batch (diffusers' default)
};

// SDXL micro-conditioning of one image (diffusers' original_size,
// crops_coords_top_left and target_size, which diffusers gives as (height,
// width) and (top, left)), in pixels.
struct MicroConditioning {
  int original_width = 0, original_height = 0;  // 0: the render size (diffusers' default)
  int crop_top = 0, crop_left = 0;
  int target_width = 0, target_height = 0;      // 0: the render size
  bool is_default() const { return *this == MicroConditioning{}; }
  friend bool operator==(const MicroConditioning&, const MicroConditioning&) = default;
};

struct RenderItem {
  std::string prompt;
  std::string negative_prompt;
  uint64_t seed = 0;
  double guidance_scale = 7.5;  // <= 1 runs the text branch only (no classifier-free guidance)

  // SDXL models only (Validate rejects them for others), as
  // StableDiffusionXLPipeline (diffusers 0.21.4) takes them:
  std::string prompt_2;           // text_encoder_2's prompt; empty: `prompt`
  std::string negative_prompt_2;  // text_encoder_2's negative prompt; empty: `negative_prompt`
  MicroConditioning micro;        // original_size, crops_coords_top_left, target_size
  // negative_original_size / negative_crops_coords_top_left /
  // negative_target_size: as in diffusers, used only when both negative sizes
  // are set; otherwise the negative rows get `micro`'s values.
  MicroConditioning negative_micro;
  // An empty negative prompt means "none" (diffusers' negative_prompt=None:
  // on an SDXL model with force_zeros_for_empty_prompt the negative
  // embeddings are zeros). True: it is the text "" and is encoded
  // (negative_prompt=""). SD 1.x/2.x encode "" either way.
  bool empty_negative_is_text = false;
  // diffusers' guidance_rescale (rescale_noise_cfg) in [0, 1], with guidance
  // > 1; any model.
  double guidance_rescale = 0;
};

struct RenderRequest {
  std::vector<RenderItem> items;  // one image each, in output order
  int width = 0;                  // 0: the model's default (unet sample_size x 8); else a multiple of 8
  int height = 0;
  int steps = 30;                 // 1..1000
  std::string sampler;            // pndm ddim euler euler_a lms dpmpp_2m dpmpp_2m_karras ddpm; empty: the model's
  std::optional<Image> init_image;  // img2img / inpainting source, RGB, width x height
  double strength = 0.8;            // img2img (and inpainting) denoising strength in (0, 1]
  std::optional<Image> mask;        // inpainting: L (or RGB), white = repaint; needs a 9-channel UNet
  int clip_skip = 1;                // 1 = last layer; 2 = penultimate (AUTOMATIC1111's "Clip skip")
  SeedMode seed_mode = SeedMode::kPerImage;
  uint64_t shared_seed = 0;         // for SeedMode::kShared
  bool keep_latents = false;        // fill RenderResult::latents
  // AUTOMATIC1111's prompt chunking: a prompt over 75 tokens is split into
  // chunks of 75 (each with its own BOS/EOS, padded to 77; A1111's comma
  // backtrack), encoded one by one and concatenated ([77 * chunks, hidden]);
  // an item's prompt and negative prompt are padded with empty chunks to the
  // same count. No emphasis syntax: every token has weight 1.0. Off: prompts
  // are cut at 77 tokens, as diffusers does (RenderResult::dropped_tokens).
  bool prompt_chunking = false;
  // LoRAs for this request, in order. The engine keeps the base weights and
  // applies a new set only when it differs from the previous request's.
  std::vector<LoraRef> loras;
};

struct StepInfo {
  int step = 0;               // 0-based index of the step just finished
  int total_steps = 0;        // steps this request runs (fewer than `steps` for img2img)
  double timestep = 0;
  double elapsed_seconds = 0;  // since Render started
  double step_seconds = 0;     // this step alone
  const at::Tensor* latents = nullptr;  // current latents [B, 4, h, w], float32, on the device
};
// Called after every denoising step on the rendering thread; return false to
// cancel (Render then returns a Cancelled status).
using StepCallback = std::function<bool(const StepInfo&)>;

struct RenderResult {
  std::vector<Image> images;          // RGB, one per item, in item order
  std::vector<float> latents;         // final latents before VAE decoding, [B, 4, h, w], when kept
  std::vector<float> initial_latents; // the latents entering the first step, when kept
  std::vector<int64_t> latents_shape;
  std::vector<int> dropped_tokens;    // per item: prompt tokens cut at the 77-token limit (0 with prompt_chunking)
  std::vector<LoraInfo> loras;        // per request LoRA, in order (A1111's "Lora hashes")
  double text_seconds = 0, denoise_seconds = 0, decode_seconds = 0;
  double lora_seconds = 0;            // merging the request's LoRA set (0 when it was already applied)
};

struct ModelInfo {
  std::string dir;                    // the folder or single file loaded
  std::string name;                   // folder name or file stem, e.g. "stable-diffusion-v1-5"
  // A1111's "Model hash" (AutoV2): the first 10 hex digits of the SHA-256 of
  // the checkpoint file; for a diffusers folder, of its UNet, text encoder and
  // VAE weight files' bytes in that order.
  std::string hash;
  bool single_file = false;
  std::string vae_name, vae_hash;     // set when EngineOptions::vae swapped the VAE (hash: SHA-256, 10 hex)
  std::string device, dtype;
  int default_width = 512, default_height = 512;
  int unet_in_channels = 4;           // 9: an inpainting model
  bool sdxl = false;                  // StableDiffusionXLPipeline: two text encoders, micro-conditioning
  int text_layers = 12;
  std::string prediction_type;        // "epsilon" or "v_prediction"
  std::string default_sampler;
  int64_t num_parameters = 0;
  double load_seconds = 0;
};

class Engine {
 public:
  // `model_path`: a diffusers pipeline folder or a single-file checkpoint (.safetensors).
  static StatusOr<std::unique_ptr<Engine>> Load(const std::string& model_path, const EngineOptions& options = {});
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const ModelInfo& info() const;

  // Everything Render would reject, checked without any compute.
  Status Validate(const RenderRequest& request) const;

  StatusOr<RenderResult> Render(const RenderRequest& request, const StepCallback& on_step = {}) const;

  // Renders from now on with the VAE at `path` (a diffusers VAE folder or a
  // single-file VAE, as EngineOptions::vae); "" restores the VAE the model
  // was loaded with. info() then names it (vae_name, vae_hash). A VAE that
  // does not fit the model is an error and changes nothing.
  Status SetVae(const std::string& path);

  // Reads (and caches) a LoRA file and checks it against this model: keys
  // that match no module, or shapes that do not fit (naming the first module),
  // are errors. Render calls it for each of a request's LoRAs.
  StatusOr<LoraInfo> LoadLora(const std::string& path) const;

 private:
  struct Impl;
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// A cheap RGB preview of latents [B, 4, h, w] (any device): the linear
// 4-to-3 approximation of the SD 1.x/2.x VAE, at latent resolution (h x w).
std::vector<Image> PreviewImages(const at::Tensor& latents);

// The AUTOMATIC1111 parameters of one rendered image: `item` of `request`,
// rendered by the model `model` describes into a width x height image.
// sdfarm-render and the farm's workers both embed
// FormatA1111Parameters(ParametersFor(...)) in their PNGs, so the same item
// gets the same text from either. `version` is the "Version" value, e.g.
// "sdfarm 0.1.0". The negative prompt is recorded whenever it is non-empty,
// also at guidance <= 1 where it does not affect the image (A1111 does the
// same). The sampler is written as A1111 names it (engine::A1111Name:
// "Sampler", "Schedule type" and, for ddpm, "Eta DDIM" before "Version");
// an unknown sampler name (which Validate rejects) is written as given,
// without a schedule type.
// A swapped VAE is written as "VAE hash" and "VAE", and `loras` (the
// LoraInfo of each of the request's LoRAs, in order) as A1111's
// "Lora hashes: "name: hash, ..."" and their scales as "Lora weights:
// "name: scale, ..."". The prompt is written as given: a `<lora:name:scale>`
// tag appears only when the user wrote one.
// SDXL: A1111 writes SDXL images like SD ones (one prompt; its micro-
// conditioning is always the image size), so only settings that differ from
// that are added, as extra keys A1111 keeps: "Prompt 2", "Negative prompt 2"
// (when set and different from the first), "Original size" / "Target size"
// (WxH) and "Crop top-left" (TOP,LEFT) when not the defaults, the same with a
// "Negative " prefix when the negative micro-conditioning applies, and
// "Guidance rescale" when > 0.
GenerationParameters ParametersFor(const ModelInfo& model, const RenderRequest& request, const RenderItem& item,
                                   int width, int height, std::string_view version,
                                   const std::vector<LoraInfo>& loras = {});

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_ENGINE_H_
