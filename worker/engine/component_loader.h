// Loading one network of a diffusers pipeline folder (text_encoder/, unet/,
// vae/) from its config.json and weights file, and the weight-file lookup
// shared with the whole-model loader (model_loader.h).
//
// Text encoders with or without the "text_model." prefix load alike.
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

#include "worker/engine/tensor_source.h"
#include "worker/engine/text_encoder.h"
#include "worker/engine/unet.h"
#include "worker/engine/vae.h"

namespace sdfarm::engine {

// The weight file of one component: `<dir>/<base>.safetensors` or
// `<dir>/<base>.<variant>.safetensors`. NotFound (naming both and any .bin
// file found instead) when neither exists.
StatusOr<std::string> FindWeightsFile(const std::string& component_dir, const std::string& base,
                                      const std::string& preferred_variant);

// Parameter name -> the loaded module's tensor (LoRA merging, lora.h); the
// pointers live as long as the module. Filled when a loader is given one.
using NamedParams = std::map<std::string, at::Tensor*>;

// with_projection: a CLIPTextModelWithProjection (SDXL's text_encoder_2)
// whatever its config's "architectures" says.
StatusOr<std::unique_ptr<ClipTextModel>> LoadTextEncoder(const std::string& component_dir, const at::Device& device,
                                                         at::ScalarType dtype, NamedParams* params = nullptr,
                                                         bool with_projection = false);
StatusOr<std::unique_ptr<UNet>> LoadUNet(const std::string& component_dir, const at::Device& device,
                                         at::ScalarType dtype, NamedParams* params = nullptr);
StatusOr<std::unique_ptr<Vae>> LoadVae(const std::string& component_dir, const at::Device& device,
                                       at::ScalarType dtype);

// The same networks from a config and any tensor source (tensor_source.h),
// e.g. the renamed parts of a single-file checkpoint.
StatusOr<std::unique_ptr<ClipTextModel>> MakeTextEncoder(ClipTextConfig config, const TensorSource& source,
                                                         const at::Device& device, at::ScalarType dtype,
                                                         NamedParams* params = nullptr);
StatusOr<std::unique_ptr<UNet>> MakeUNet(UNetConfig config, const TensorSource& source, const at::Device& device,
                                         at::ScalarType dtype, NamedParams* params = nullptr);
StatusOr<std::unique_ptr<Vae>> MakeVae(VaeConfig config, const TensorSource& source, const at::Device& device,
                                       at::ScalarType dtype);

// Text encoders saved by transformers 5 (and old CLIP exports) name their
// tensors without the "text_model." prefix ("embeddings.token_embedding.weight",
// "encoder.layers.0...", "final_layer_norm..."): this adds it when the source
// has that layout, and returns any other source unchanged.
StatusOr<TensorSource> WithTextModelPrefix(TensorSource source);

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_COMPONENT_LOADER_H_
