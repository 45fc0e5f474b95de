// Loading one network of a diffusers pipeline folder (text_encoder/, unet/,
// vae/) from its config.json and weights file, and the weight-file lookup
// shared with the whole-model loader (model_loader.h).
//
// Weights may be fp32, fp16 or bf16, in the plain files or the
// `*.fp16.safetensors` variants (preferred when loading in fp16, used as a
// fallback otherwise). Each module is built from its config.json and must
// match its file exactly (weights.h).
#ifndef SDFARM_WORKER_ENGINE_COMPONENT_LOADER_H_
#define SDFARM_WORKER_ENGINE_COMPONENT_LOADER_H_

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>

#include "worker/engine/text_encoder.h"
#include "worker/engine/unet.h"
#include "worker/engine/vae.h"

namespace sdfarm::engine {

// The weight file of one component: `<dir>/<base>.safetensors` or
// `<dir>/<base>.<variant>.safetensors`. NotFound (naming both and any .bin
// file found instead) when neither exists.
StatusOr<std::string> FindWeightsFile(const std::string& component_dir, const std::string& base,
                                      const std::string& preferred_variant);

// `params`, when given, receives every parameter name -> the loaded module's
// tensor (LoRA merging, lora.h); the pointers live as long as the module.
StatusOr<std::unique_ptr<ClipTextModel>> LoadTextEncoder(const std::string& component_dir, const at::Device& device,
                                                         at::ScalarType dtype,
                                                         std::map<std::string, at::Tensor*>* params = nullptr);
StatusOr<std::unique_ptr<UNet>> LoadUNet(const std::string& component_dir, const at::Device& device,
                                         at::ScalarType dtype, std::map<std::string, at::Tensor*>* params = nullptr);
StatusOr<std::unique_ptr<Vae>> LoadVae(const std::string& component_dir, const at::Device& device,
                                       at::ScalarType dtype);

// 64-bit content hash (XXH64) of a file, streamed; chained through `seed`
// over a model's weight files to give its model hash.
StatusOr<uint64_t> HashFile(const std::string& path, uint64_t seed = 0);

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_COMPONENT_LOADER_H_
