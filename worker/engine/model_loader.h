// Loading a whole Stable Diffusion pipeline folder in the diffusers layout:
//
//   model_index.json
//   text_encoder/config.json  model.safetensors
//   tokenizer/vocab.json merges.txt tokenizer_config.json special_tokens_map.json
//   unet/config.json          diffusion_pytorch_model.safetensors
//   vae/config.json           diffusion_pytorch_model.safetensors
//   scheduler/scheduler_config.json
//
// and the StableDiffusionXLPipeline layout, which adds
//   text_encoder_2/ (CLIPTextModelWithProjection)   tokenizer_2/
// (an SDXL folder: model_index.json names text_encoder_2 or the XL pipeline).
//
// The networks load through component_loader.h; this adds the tokenizer, the
// scheduler config, cross-checks between the parts and the model hash.
#ifndef SDFARM_WORKER_ENGINE_MODEL_LOADER_H_
#define SDFARM_WORKER_ENGINE_MODEL_LOADER_H_

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "worker/engine/clip_tokenizer.h"
#include "worker/engine/component_loader.h"
#include "worker/engine/scheduler_config.h"
#include "worker/engine/text_encoder.h"
#include "worker/engine/unet.h"
#include "worker/engine/vae.h"

namespace sdfarm::engine {

struct StableDiffusionModel {
  std::string dir;
  std::string name;            // folder name, e.g. "stable-diffusion-v1-5"
  std::string hash;            // A1111's: 10 hex digits of the SHA-256 (see ModelHash)
  bool single_file = false;    // loaded from one LDM checkpoint (single_file.h)
  std::string vae_name, vae_hash;  // set when an external VAE replaced the model's
  at::Device device = at::kCPU;
  at::ScalarType dtype = at::kFloat;        // UNet and text encoder
  at::ScalarType vae_dtype = at::kFloat;    // float32 when force_upcast and dtype is fp16
  std::unique_ptr<ClipTokenizer> tokenizer;
  std::unique_ptr<ClipTextModel> text_encoder;
  // SDXL: the second tokenizer (pads with "!") and text encoder
  // (CLIPTextModelWithProjection); null for SD 1.x/2.x.
  std::unique_ptr<ClipTokenizer> tokenizer_2;
  std::unique_ptr<ClipTextModel> text_encoder_2;
  // SDXL's model_index.json flag (diffusers' default: true): with guidance and
  // no negative prompt, the negative embeddings are zeros instead of "" encoded.
  bool force_zeros_for_empty_prompt = true;
  bool sdxl() const { return text_encoder_2 != nullptr; }
  std::unique_ptr<UNet> unet;
  std::unique_ptr<Vae> vae;
  // The UNet's sample_size as StableDiffusionPipeline uses it (its default
  // image size is this x 8): see LoadStableDiffusion.
  int64_t sample_size = 64;
  // Parameter name -> tensor of the loaded text encoder and UNet, under the
  // diffusers / transformers names (LoRA merging, lora.h).
  std::map<std::string, at::Tensor*> text_encoder_params, unet_params;
  SchedulerConfig scheduler_config;
  std::string default_sampler;  // from scheduler/scheduler_config.json's _class_name, e.g. "pndm"
  double load_seconds = 0;
};

StatusOr<std::unique_ptr<StableDiffusionModel>> LoadStableDiffusion(const std::string& dir, const at::Device& device,
                                                                   at::ScalarType dtype);

// Pieces shared with the single-file loader (single_file.h):
// The sampler name for a scheduler class ("DDIMScheduler" -> "ddim").
std::string SamplerFromClassName(const std::string& cls, bool karras);
// scheduler_config and default_sampler from a scheduler_config.json. With
// `sd_pipeline_fixups`, StableDiffusionPipeline.__init__'s steps_offset 1 and
// clip_sample false (the SDXL pipeline keeps the file's values).
Status LoadFolderScheduler(const std::string& scheduler_config_path, StableDiffusionModel* m,
                           bool sd_pipeline_fixups = true);
// The cross-checks between the networks (text width vs cross-attention,
// VAE latent channels vs UNet); `where` prefixes the message.
Status CheckModelParts(const StableDiffusionModel& m, const std::string& where);
Status CheckVaeFitsUNet(const VaeConfig& vae, const UNetConfig& unet, const std::string& where);
// A1111's model hash: the first 10 hex digits of one SHA-256 over the files'
// bytes in order (one checkpoint file; or a folder's UNet, text encoder and
// VAE weights).
StatusOr<std::string> ModelHash(const std::vector<std::string>& files);

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_MODEL_LOADER_H_
