#include "worker/engine/model_loader.h"

#include <cctype>
#include <chrono>
#include <filesystem>
#include <vector>

#include "common/status_macros.h"
#include "worker/engine/json_util.h"
#include "worker/engine/sha256.h"

namespace sdfarm::engine {
namespace fs = std::filesystem;

std::string SamplerFromClassName(const std::string& cls, bool karras) {
  if (cls == "DDIMScheduler") return "ddim";
  if (cls == "EulerDiscreteScheduler") return "euler";
  if (cls == "EulerAncestralDiscreteScheduler") return "euler_a";
  if (cls == "LMSDiscreteScheduler") return "lms";
  if (cls == "DPMSolverMultistepScheduler") return karras ? "dpmpp_2m_karras" : "dpmpp_2m";
  if (cls == "DDPMScheduler") return "ddpm";
  return "pndm";  // PNDMScheduler, the SD 1.x default, and anything we do not know
}

Status LoadFolderScheduler(const std::string& sched_path, StableDiffusionModel* m, bool sd_pipeline_fixups) {
  ASSIGN_OR_RETURN(m->scheduler_config, SchedulerConfig::FromFile(sched_path));
  // StableDiffusionPipeline.__init__ (diffusers 0.21.4) replaces two outdated
  // scheduler settings, for the pipeline's scheduler and every one made from
  // its config: steps_offset becomes 1 and clip_sample false.
  if (sd_pipeline_fixups) {
    m->scheduler_config.steps_offset = 1;
    m->scheduler_config.clip_sample = false;
  }
  ASSIGN_OR_RETURN(nlohmann::json sched_json, ReadJsonFile(sched_path));
  m->default_sampler = SamplerFromClassName(sched_json.value("_class_name", std::string()),
                                            sched_json.value("use_karras_sigmas", false));
  return OkStatus();
}

Status CheckModelParts(const StableDiffusionModel& m, const std::string& where) {
  const UNetConfig& u = m.unet->config();
  int64_t width = m.text_encoder->config().hidden_size;
  if (m.sdxl()) width += m.text_encoder_2->config().hidden_size;  // both hidden states, concatenated
  if (width != u.cross_attention_dim.front()) {
    return InvalidArgumentError(where + ": text encoder width " + std::to_string(width) +
                                (m.sdxl() ? " (both encoders)" : "") + " does not match the UNet's cross_attention_dim " +
                                std::to_string(u.cross_attention_dim.front()));
  }
  if (u.addition_embed_type == "text_time" && !m.sdxl()) {
    return InvalidArgumentError(where + ": the UNet is an SDXL UNet (addition_embed_type \"text_time\") but there is "
                                "no text_encoder_2 (SDXL's second text encoder)");
  }
  if (m.sdxl()) {
    if (u.addition_embed_type != "text_time") {
      return InvalidArgumentError(where + ": an SDXL pipeline needs a UNet with addition_embed_type \"text_time\"");
    }
    const int64_t pooled = m.text_encoder_2->config().projection_dim;
    if (pooled + 6 * u.addition_time_embed_dim != u.projection_class_embeddings_input_dim) {
      return InvalidArgumentError(where + ": text_encoder_2's projection_dim " + std::to_string(pooled) +
                                  " + 6 x addition_time_embed_dim " + std::to_string(u.addition_time_embed_dim) +
                                  " != the UNet's projection_class_embeddings_input_dim " +
                                  std::to_string(u.projection_class_embeddings_input_dim));
    }
  }
  return CheckVaeFitsUNet(m.vae->config(), m.unet->config(), where);
}

Status CheckVaeFitsUNet(const VaeConfig& vae, const UNetConfig& unet, const std::string& where) {
  if (vae.latent_channels != unet.out_channels) {
    return InvalidArgumentError(where + ": the VAE has " + std::to_string(vae.latent_channels) +
                                " latent channels, the UNet denoises " + std::to_string(unet.out_channels));
  }
  return OkStatus();
}

StatusOr<std::string> ModelHash(const std::vector<std::string>& files) {
  Sha256 h;
  for (const auto& f : files) {
    ASSIGN_OR_RETURN(std::string ignored, Sha256File(f, /*addnet=*/false, &h));
    (void)ignored;
  }
  return h.HexDigest().substr(0, 10);
}

namespace {

// "0.10.0.dev0" < "0.9.0"? Compares the numeric release parts only.
bool VersionBelow(const std::string& version, std::vector<int> than) {
  std::vector<int> parts;
  size_t i = 0;
  while (i < version.size() && parts.size() < than.size()) {
    size_t j = i;
    while (j < version.size() && std::isdigit(static_cast<unsigned char>(version[j]))) ++j;
    if (j == i) break;
    parts.push_back(std::stoi(version.substr(i, j - i)));
    if (j >= version.size() || version[j] != '.') break;
    i = j + 1;
  }
  parts.resize(than.size(), 0);
  return parts < than;
}

}  // namespace

StatusOr<std::unique_ptr<StableDiffusionModel>> LoadStableDiffusion(const std::string& dir_in,
                                                                   const at::Device& device, at::ScalarType dtype) {
  const auto start = std::chrono::steady_clock::now();
  std::string dir = dir_in;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (!fs::is_directory(dir)) return NotFoundError("model folder " + dir + " does not exist");
  if (!fs::exists(dir + "/model_index.json")) {
    return InvalidArgumentError(dir + " is not a diffusers pipeline folder (no model_index.json)");
  }
  ASSIGN_OR_RETURN(nlohmann::json index, ReadJsonFile(dir + "/model_index.json"));
  // StableDiffusionXLPipeline: model_index.json names the second text encoder.
  const std::string pipeline_class = index.value("_class_name", std::string());
  const bool sdxl = (index.contains("text_encoder_2") && !index["text_encoder_2"].is_null()) ||
                    pipeline_class.find("StableDiffusionXL") != std::string::npos;
  for (const char* part : {"text_encoder", "tokenizer", "unet", "vae", "scheduler"}) {
    if (!fs::is_directory(dir + "/" + part)) {
      return InvalidArgumentError(dir + ": missing the " + std::string(part) + "/ folder");
    }
  }
  if (sdxl) {
    for (const char* part : {"text_encoder_2", "tokenizer_2"}) {
      if (!fs::is_directory(dir + "/" + part)) {
        return InvalidArgumentError(dir + ": missing the " + std::string(part) +
                                    "/ folder, which an SDXL pipeline (" +
                                    (pipeline_class.empty() ? std::string("model_index.json") : pipeline_class) +
                                    ") needs for its second text encoder");
      }
    }
  }
  auto m = std::make_unique<StableDiffusionModel>();
  m->dir = dir;
  m->name = fs::path(dir).filename().string();
  m->device = device;
  m->dtype = dtype;

  ASSIGN_OR_RETURN(ClipTokenizer tok, ClipTokenizer::Load(dir + "/tokenizer"));
  m->tokenizer = std::make_unique<ClipTokenizer>(std::move(tok));
  ASSIGN_OR_RETURN(m->text_encoder, LoadTextEncoder(dir + "/text_encoder", device, dtype, &m->text_encoder_params));
  if (sdxl) {
    ASSIGN_OR_RETURN(ClipTokenizer tok2, ClipTokenizer::Load(dir + "/tokenizer_2"));
    m->tokenizer_2 = std::make_unique<ClipTokenizer>(std::move(tok2));
    ASSIGN_OR_RETURN(m->text_encoder_2, LoadTextEncoder(dir + "/text_encoder_2", device, dtype, nullptr,
                                                        /*with_projection=*/true));
    m->force_zeros_for_empty_prompt = index.value("force_zeros_for_empty_prompt", true);
  }
  ASSIGN_OR_RETURN(m->unet, LoadUNet(dir + "/unet", device, dtype, &m->unet_params));
  // StableDiffusionPipeline.__init__ (diffusers 0.21.4) raises a UNet
  // sample_size below 64 to 64 for configs written before diffusers 0.9.0.
  m->sample_size = m->unet->config().sample_size;
  if (!sdxl) {  // StableDiffusionXLPipeline has no such rule
    ASSIGN_OR_RETURN(nlohmann::json unet_json, ReadJsonFile(dir + "/unet/config.json"));
    const auto v = unet_json.find("_diffusers_version");
    if (v != unet_json.end() && v->is_string() && VersionBelow(v->get<std::string>(), {0, 9, 0}) &&
        m->sample_size < 64) {
      m->sample_size = 64;
    }
  }

  ASSIGN_OR_RETURN(nlohmann::json vae_json, ReadJsonFile(dir + "/vae/config.json"));
  ASSIGN_OR_RETURN(VaeConfig vae_config, VaeConfig::FromJson(vae_json, dir + "/vae/config.json"));
  m->vae_dtype = (dtype == at::kHalf && vae_config.force_upcast) ? at::kFloat : dtype;
  ASSIGN_OR_RETURN(m->vae, LoadVae(dir + "/vae", device, m->vae_dtype));

  RETURN_IF_ERROR(LoadFolderScheduler(dir + "/scheduler/scheduler_config.json", m.get(), /*sd_pipeline_fixups=*/!sdxl));
  RETURN_IF_ERROR(CheckModelParts(*m, dir));

  std::vector<std::string> weight_files;
  for (const auto& [part, base] : std::vector<std::pair<std::string, std::string>>{
           {"unet", "diffusion_pytorch_model"}, {"text_encoder", "model"}, {"text_encoder_2", "model"},
           {"vae", "diffusion_pytorch_model"}}) {
    if (part == "text_encoder_2" && !sdxl) continue;
    ASSIGN_OR_RETURN(std::string file, FindWeightsFile(dir + "/" + part, base, dtype == at::kHalf ? "fp16" : ""));
    weight_files.push_back(file);
  }
  ASSIGN_OR_RETURN(m->hash, ModelHash(weight_files));
  m->load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return m;
}

}  // namespace sdfarm::engine
