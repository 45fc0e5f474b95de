// Single-file checkpoints: the original LDM layout that A1111, CivitAI and the
// CompVis / Stability training code write (one .safetensors holding
// `model.diffusion_model.*` = UNet, `first_stage_model.*` = VAE and
// `cond_stage_model.*` = text encoder), loaded into the same networks as a
// diffusers folder, as diffusers 0.21.4's `convert_from_ckpt.py` does; and
// external VAEs (`--vae`: a diffusers VAE folder or a single-file VAE).
//
// What the file cannot say comes from, in order of precedence:
//  - SingleFileOptions::prediction_type (epsilon / v_prediction);
//  - the original LDM yaml (`original_config`, default `<checkpoint>.yaml`
//    beside the file): UNet and VAE dimensions, head counts, scale factor,
//    betas, `parameterization: v`;
//  - `model_config`, a diffusers folder: its UNet, VAE and text-encoder
//    configs, tokenizer and scheduler (with a yaml as well, the folder gives
//    only the text encoder and tokenizer, which a yaml does not describe: the
//    equivalent of from_single_file(original_config_file=..., text_encoder=...,
//    tokenizer=...));
//  - the tensors and the standard SD configs: SD 1.x (OpenAI CLIP text tower
//    `cond_stage_model.transformer.*`, 8 heads per UNet block) or SD 2.x
//    (OpenCLIP tower `cond_stage_model.model.*`, 64-channel UNet heads,
//    upcast attention, gelu, pad token "!"), 4- or 9-channel UNet; text heads
//    = width / 64; the scheduler diffusers' loader builds (PNDM, scaled_linear
//    0.00085..0.012, skip_prk_steps, steps_offset 1, "leading" spacing); the
//    CLIP tokenizer shipped with sdfarm (see DefaultTokenizerDir).
// An SD 2.x file with none of the first three is refused as ambiguous (the
// 512-base model predicts epsilon, the 768 one v).
//
// SDXL files (`conditioner.embedders.0.transformer.*` = CLIP-L in transformers'
// names, `conditioner.embedders.1.model.*` = the OpenCLIP bigG tower with fused
// in_proj and `text_projection` stored transposed, `model.diffusion_model.*`
// with `label_emb.0.0/0.2` = add_embedding, `first_stage_model.*`) need
// `model_config`, a diffusers SDXL folder: its configs, both tokenizers and
// its scheduler (as diffusers' from_single_file takes them from the hub).
//
// Every tensor of the file is either loaded or on the explicit ignore list:
// `model_ema.*` (unless ema), the 12 DDPM schedule buffers, `*position_ids`,
// `logit_scale`, `text_projection`, OpenCLIP resblocks beyond the configured
// layers, `cond_stage_model.model.visual.*`, and keys outside the three
// prefixes. Anything else that maps to no parameter is an error naming it.
#ifndef SDFARM_WORKER_ENGINE_SINGLE_FILE_H_
#define SDFARM_WORKER_ENGINE_SINGLE_FILE_H_

#include <ATen/ATen.h>

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "worker/engine/model_loader.h"
#include "worker/engine/scheduler_config.h"
#include "worker/engine/status.h"
#include "worker/engine/tensor_source.h"
#include "worker/engine/vae.h"

namespace sdfarm::engine {

struct SingleFileOptions {
  std::string model_config;     // diffusers folder
  std::string original_config;  // LDM yaml; empty: <checkpoint stem>.yaml beside it, if present
  std::string prediction_type;  // "", "epsilon", "v_prediction"
  bool ema = false;             // UNet from model_ema.*
};

// Everything decided about a checkpoint before any weight is copied.
struct SingleFilePlan {
  std::string path;
  bool sd2 = false;                   // OpenCLIP text tower
  std::string original_config;        // the yaml used, if any
  nlohmann::json unet_config, vae_config, text_config;  // in diffusers' config.json form
  SchedulerConfig scheduler_config;
  std::string default_sampler;
  std::string tokenizer_dir;
  std::string pad_token;              // overrides the tokenizer's ("!" for SD 2.x); empty: its own
  TensorSource unet, vae, text;       // under the diffusers names
  // SDXL: the second text encoder (CLIPTextModelWithProjection) and tokenizer.
  bool sdxl = false;
  nlohmann::json text_2_config;
  std::string tokenizer_2_dir;
  bool force_zeros_for_empty_prompt = true;
  TensorSource text_2;
};

// True for the PyTorch pickle extensions (.ckpt .pt .pth .bin), which sdfarm
// never loads: unpickling executes code.
bool IsPickleCheckpoint(const std::string& path);
// The message for such a file: what it is and how to convert it.
Status PickleRefusal(const std::string& path);

StatusOr<SingleFilePlan> PlanSingleFile(const std::string& path, const SingleFileOptions& options);
StatusOr<std::unique_ptr<StableDiffusionModel>> LoadSingleFile(const std::string& path,
                                                               const SingleFileOptions& options,
                                                               const at::Device& device, at::ScalarType dtype);

// An LDM VAE key ("decoder.up.3.block.0.nin_shortcut.weight", without the
// "first_stage_model." prefix) under its diffusers name, for a VAE with
// `levels` blocks. Keys it does not know are returned unchanged.
std::string LdmVaeKeyToDiffusers(const std::string& key, int levels);

// The VAE that replaces a model's (EngineOptions::vae).
struct ExternalVae {
  std::unique_ptr<Vae> vae;
  std::string name;  // folder name or file stem
  std::string hash;  // first 10 hex digits of the SHA-256 of the weights file
};
// `path`: a diffusers VAE folder (config.json + diffusion_pytorch_model[.fp16]
// .safetensors) or a .safetensors VAE in LDM names (with or without
// "first_stage_model.") or diffusers names. A file's config is `model_vae`'s
// when the tensors fit it, else the standard SD VAE config with the tensors'
// dimensions. Must fit `unet` (latent channels) and scale images like `model_vae`.
StatusOr<ExternalVae> LoadExternalVae(const std::string& path, const VaeConfig& model_vae, const UNetConfig& unet,
                                      const at::Device& device, at::ScalarType dtype);

// Where the CLIP BPE tokenizer files for single-file checkpoints are:
// $SDFARM_TOKENIZER_DIR if set; else <executable dir>/tokenizer,
// <executable dir>/../share/sdfarm/tokenizer; else the source tree's
// deploy/models/sdfarm-mini/tokenizer (path embedded at build time).
// NotFound naming every place tried.
StatusOr<std::string> DefaultTokenizerDir();

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_SINGLE_FILE_H_
