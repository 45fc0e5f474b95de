#include "worker/engine/component_loader.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <vector>

#include "common/status_macros.h"
#include "worker/engine/json_util.h"
#include "worker/engine/safetensors.h"
#include "worker/engine/weights.h"

namespace sdfarm::engine {
namespace fs = std::filesystem;
namespace {

template <typename Module, typename Config>
StatusOr<std::unique_ptr<Module>> MakeModule(Config config, const TensorSource& source, const std::string& where,
                                             const at::Device& device, at::ScalarType dtype, NamedParams* named) {
  auto module = std::make_unique<Module>(std::move(config));
  ParamSet params;
  try {
    module->Declare(params.Root());
  } catch (const std::exception& e) {
    return StatusFromException(e, where);
  }
  RETURN_IF_ERROR(LoadParams(params, source, device, dtype));
  if (named != nullptr) {
    for (const auto& slot : params.slots()) (*named)[slot.name] = slot.tensor;
  }
  return module;
}

template <typename Module, typename Config>
StatusOr<std::unique_ptr<Module>> LoadModule(const std::string& component_dir, const std::string& weights_base,
                                             const at::Device& device, at::ScalarType dtype, NamedParams* named,
                                             StatusOr<TensorSource> (*adapt)(TensorSource) = nullptr,
                                             void (*adjust)(Config*) = nullptr) {
  const std::string config_path = component_dir + "/config.json";
  ASSIGN_OR_RETURN(nlohmann::json j, ReadJsonFile(config_path));
  ASSIGN_OR_RETURN(Config config, Config::FromJson(j, config_path));
  if (adjust != nullptr) adjust(&config);
  const std::string variant = dtype == at::kHalf ? "fp16" : "";
  ASSIGN_OR_RETURN(std::string weights, FindWeightsFile(component_dir, weights_base, variant));
  ASSIGN_OR_RETURN(std::shared_ptr<SafetensorsFile> file, SafetensorsFile::Open(weights));
  TensorSource source = TensorSource::FromFile(file);
  if (adapt != nullptr) {
    ASSIGN_OR_RETURN(source, adapt(std::move(source)));
  }
  return MakeModule<Module>(std::move(config), source, config_path, device, dtype, named);
}

}  // namespace

StatusOr<TensorSource> WithTextModelPrefix(TensorSource source) {
  if (source.Find("text_model.embeddings.token_embedding.weight") != nullptr ||
      source.Find("embeddings.token_embedding.weight") == nullptr) {
    return source;
  }
  // CLIPTextModelWithProjection keeps its projection at the top level.
  return source.Renamed([](const std::string& name) {
    return name.rfind("text_projection.", 0) == 0 ? name : "text_model." + name;
  });
}

StatusOr<std::unique_ptr<ClipTextModel>> MakeTextEncoder(ClipTextConfig config, const TensorSource& source,
                                                         const at::Device& device, at::ScalarType dtype,
                                                         NamedParams* params) {
  return MakeModule<ClipTextModel>(std::move(config), source, "text encoder", device, dtype, params);
}
StatusOr<std::unique_ptr<UNet>> MakeUNet(UNetConfig config, const TensorSource& source, const at::Device& device,
                                         at::ScalarType dtype, NamedParams* params) {
  return MakeModule<UNet>(std::move(config), source, "unet", device, dtype, params);
}
StatusOr<std::unique_ptr<Vae>> MakeVae(VaeConfig config, const TensorSource& source, const at::Device& device,
                                       at::ScalarType dtype) {
  return MakeModule<Vae>(std::move(config), source, "vae", device, dtype, nullptr);
}

StatusOr<std::string> FindWeightsFile(const std::string& component_dir, const std::string& base,
                                      const std::string& preferred_variant) {
  const std::string plain = component_dir + "/" + base + ".safetensors";
  std::vector<std::string> candidates;
  if (!preferred_variant.empty()) candidates.push_back(component_dir + "/" + base + "." + preferred_variant + ".safetensors");
  candidates.push_back(plain);
  for (const char* v : {"fp16", "bf16"}) candidates.push_back(component_dir + "/" + base + "." + v + ".safetensors");
  for (const auto& c : candidates) {
    if (fs::is_regular_file(c)) return c;
  }
  std::string msg = "no weights in " + component_dir + ": expected " + plain + " (or a .fp16 variant)";
  for (const char* bin : {".bin", ".fp16.bin"}) {
    if (fs::exists(component_dir + "/" + base + bin)) {
      msg += "; found only PyTorch pickle weights (" + base + bin +
             "), which sdfarm does not load: convert them to safetensors";
    }
  }
  return NotFoundError(msg);
}

StatusOr<std::unique_ptr<ClipTextModel>> LoadTextEncoder(const std::string& dir, const at::Device& device,
                                                         at::ScalarType dtype, NamedParams* params,
                                                         bool with_projection) {
  return LoadModule<ClipTextModel, ClipTextConfig>(
      dir, "model", device, dtype, params, &WithTextModelPrefix,
      with_projection ? +[](ClipTextConfig* c) { c->with_projection = true; } : nullptr);
}
StatusOr<std::unique_ptr<UNet>> LoadUNet(const std::string& dir, const at::Device& device, at::ScalarType dtype,
                                         NamedParams* params) {
  return LoadModule<UNet, UNetConfig>(dir, "diffusion_pytorch_model", device, dtype, params);
}
StatusOr<std::unique_ptr<Vae>> LoadVae(const std::string& dir, const at::Device& device, at::ScalarType dtype) {
  return LoadModule<Vae, VaeConfig>(dir, "diffusion_pytorch_model", device, dtype, nullptr);
}

}  // namespace sdfarm::engine
