// Engine: loading, request validation and the diffusers pipelines
// (StableDiffusionPipeline, ...Img2ImgPipeline, ...InpaintPipeline at 0.21.4),
// reproduced step for step, including the order of every random draw.
#include "worker/engine/engine.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/version.h>

#include <dlfcn.h>
#include <malloc.h>

#include <array>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>

#include "common/status_macros.h"
#include "worker/engine/lora.h"
#include "worker/engine/model_loader.h"
#include "worker/engine/scheduler.h"
#include "worker/engine/sdxl_conditioning.h"
#include "worker/engine/single_file.h"
#include "worker/engine/text_conditioning.h"
#include "worker/engine/weights.h"

namespace sdfarm::engine {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

StatusOr<at::ScalarType> ParseDtype(const std::string& name, bool cuda) {
  if (name.empty()) return cuda ? at::kHalf : at::kFloat;
  if (name == "fp32" || name == "float32" || name == "float") return at::kFloat;
  if (name == "fp16" || name == "float16" || name == "half") {
    if (!cuda) return InvalidArgumentError("fp16 is for CUDA devices; on the CPU use fp32 or bf16");
    return at::kHalf;
  }
  if (name == "bf16" || name == "bfloat16") return at::kBFloat16;
  return InvalidArgumentError("unknown dtype '" + name + "' (fp32, fp16, bf16)");
}

std::string DtypeName(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return "fp16";
    case at::kBFloat16: return "bf16";
    default: return "fp32";
  }
}

// HWC uint8 -> [1, C, H, W] float32 in [-1, 1], computed as diffusers'
// VaeImageProcessor does (x / 255 in float32, then 2x - 1).
at::Tensor ImageToTensor(const Image& img) {
  at::Tensor t = at::from_blob(const_cast<uint8_t*>(img.pixels.data()), {img.height, img.width, img.channels},
                               at::kByte)
                     .to(at::kFloat);
  t = t / 255.0f;
  return (t * 2.0f - 1.0f).permute({2, 0, 1}).unsqueeze(0).contiguous();
}

Image TensorToImage(const at::Tensor& chw_unit) {  // [3, H, W] in [0, 1], CPU float32
  at::Tensor u8 = (chw_unit * 255.0f).round().to(at::kByte).permute({1, 2, 0}).contiguous();
  Image img;
  img.height = static_cast<int>(u8.size(0));
  img.width = static_cast<int>(u8.size(1));
  img.channels = 3;
  img.pixels.assign(u8.data_ptr<uint8_t>(), u8.data_ptr<uint8_t>() + u8.numel());
  return img;
}

// The random draws of one request, in diffusers' order. Per-image mode keeps
// one generator per item and draws each image's slice from its own generator;
// shared mode draws whole-batch tensors from one generator.
class NoiseSource {
 public:
  NoiseSource(const RenderRequest& req) : mode_(req.seed_mode) {
    if (mode_ == SeedMode::kShared) {
      gens_.push_back(at::detail::createCPUGenerator(req.shared_seed));
    } else {
      for (const auto& item : req.items) gens_.push_back(at::detail::createCPUGenerator(item.seed));
    }
  }

  // A batch draw: shape[0] == number of items.
  at::Tensor Batch(at::IntArrayRef shape) {
    if (mode_ == SeedMode::kShared) return at::randn(shape, gens_[0], at::kFloat);
    std::vector<int64_t> one(shape.begin(), shape.end());
    one[0] = 1;
    std::vector<at::Tensor> parts;
    parts.reserve(gens_.size());
    for (auto& g : gens_) parts.push_back(at::randn(one, g, at::kFloat));
    return at::cat(parts, 0);
  }

  // A draw for something diffusers computes once for the single input image
  // (the VAE posterior sample): [1, ...] from the shared generator, repeated;
  // per image, one slice from each image's generator.
  at::Tensor ForInputImage(at::IntArrayRef one_shape, int64_t batch) {
    if (mode_ == SeedMode::kShared) {
      return at::randn(one_shape, gens_[0], at::kFloat).repeat({batch, 1, 1, 1});
    }
    std::vector<int64_t> shape(one_shape.begin(), one_shape.end());
    shape[0] = batch;
    return Batch(shape);
  }

 private:
  SeedMode mode_;
  std::vector<at::Generator> gens_;
};

// CPU settings that LibTorch leaves to the process, measured on SD 1.5 at
// 256x256 on 2 cores (tests/bench): 2.71 s/step with both tweaks, 3.5 without.
//  - Intra-op threads: libgomp here often starts with one thread; use every core
//    unless told otherwise.
//  - OpenBLAS runs its own thread pool inside LibTorch's parallel regions; two
//    pools competing for the same cores cost ~25%. LibTorch parallelises
//    around BLAS calls, so OpenBLAS gets one thread.
//  - LibTorch's CPU allocator has no cache, and glibc hands large blocks back
//    to the kernel on free, so every step page-faults its activations in again
//    (~8% of step time). Keep blocks up to glibc's mmap maximum in the heap.
void ConfigureCpu(int threads) {
  if (threads > 0) {
    at::set_num_threads(threads);
  } else if (std::getenv("OMP_NUM_THREADS") == nullptr) {  // an explicit environment wins
    at::set_num_threads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  }
  static std::once_flag once;
  std::call_once(once, [] {
    using SetThreads = void (*)(int);
    if (auto set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) set(1);
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
  });
}

// The VAE at `path` for `model` (whose own VAE is `base`), in the precision
// the model runs its VAE in: float32 for fp16 models when the VAE's config
// asks for force_upcast, as diffusers' pipelines do.
StatusOr<ExternalVae> LoadVaeFor(const StableDiffusionModel& model, const Vae& base, const std::string& path) {
  const at::ScalarType dtype = model.dtype;
  const at::ScalarType upcast = dtype == at::kHalf ? at::kFloat : dtype;  // SD VAEs force_upcast
  ASSIGN_OR_RETURN(ExternalVae vae, LoadExternalVae(path, base.config(), model.unet->config(), model.device, upcast));
  const at::ScalarType wanted = (dtype == at::kHalf && vae.vae->config().force_upcast) ? at::kFloat : dtype;
  if (wanted != upcast) {
    ASSIGN_OR_RETURN(vae, LoadExternalVae(path, base.config(), model.unet->config(), model.device, wanted));
  }
  return vae;
}

// A diffusers folder or a single-file checkpoint, then the --vae swap.
StatusOr<std::unique_ptr<StableDiffusionModel>> LoadModel(const std::string& path, const EngineOptions& options,
                                                          const at::Device& device, at::ScalarType dtype) {
  std::error_code ec;
  const bool folder = std::filesystem::is_directory(path, ec);
  std::unique_ptr<StableDiffusionModel> model;
  if (folder) {
    if (!options.model_config.empty() || !options.original_config.empty() || options.ema) {
      return InvalidArgumentError(path + " is a diffusers folder: --model-config, --original-config and --ema apply "
                                  "to single-file checkpoints only");
    }
    ASSIGN_OR_RETURN(model, LoadStableDiffusion(path, device, dtype));
    if (!options.prediction_type.empty()) {
      if (options.prediction_type != "epsilon" && options.prediction_type != "v_prediction") {
        return InvalidArgumentError("unknown prediction type '" + options.prediction_type +
                                    "' (epsilon or v_prediction)");
      }
      model->scheduler_config.prediction_type = options.prediction_type;
    }
  } else if (IsPickleCheckpoint(path)) {
    return PickleRefusal(path);
  } else if (std::filesystem::is_regular_file(path, ec)) {
    SingleFileOptions sf;
    sf.model_config = options.model_config;
    sf.original_config = options.original_config;
    sf.prediction_type = options.prediction_type;
    sf.ema = options.ema;
    ASSIGN_OR_RETURN(model, LoadSingleFile(path, sf, device, dtype));
  } else {
    return NotFoundError("model " + path + " does not exist (a diffusers folder or a .safetensors checkpoint)");
  }
  if (!options.vae.empty()) {
    ASSIGN_OR_RETURN(ExternalVae vae, LoadVaeFor(*model, *model->vae, options.vae));
    model->vae_dtype = (dtype == at::kHalf && vae.vae->config().force_upcast) ? at::kFloat : dtype;
    model->vae = std::move(vae.vae);
    model->vae_name = vae.name;
    model->vae_hash = vae.hash;
  }
  return model;
}

}  // namespace

struct Engine::Impl {
  std::unique_ptr<StableDiffusionModel> model;
  ModelInfo info;
  // SetVae: the VAE the model was loaded with while another one is in use.
  std::unique_ptr<Vae> loaded_vae;
  at::ScalarType loaded_vae_dtype = at::kFloat;
  std::string loaded_vae_name, loaded_vae_hash;
  std::string vae_path;  // SetVae's current path ("": the loaded VAE)
  std::unique_ptr<LoraMerger> loras;  // the LoRA file cache and the set merged into `model` now
};

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() = default;

const ModelInfo& Engine::info() const { return impl_->info; }

StatusOr<std::unique_ptr<Engine>> Engine::Load(const std::string& model_dir, const EngineOptions& options) {
  try {
    c10::InferenceMode guard;
    at::Device device(at::kCPU);
    try {
      device = at::Device(options.device);
    } catch (const std::exception&) {
      return InvalidArgumentError("unknown device '" + options.device + "' (cpu, cuda, cuda:N)");
    }
    if (device.is_cuda() && !at::hasCUDA()) {
      return UnavailableError("device '" + options.device + "' requested, but this LibTorch build has no CUDA "
                              "support or no GPU is visible");
    }
    if (!device.is_cpu() && !device.is_cuda()) {
      return InvalidArgumentError("unsupported device '" + options.device + "' (cpu, cuda, cuda:N)");
    }
    ASSIGN_OR_RETURN(at::ScalarType dtype, ParseDtype(options.dtype, device.is_cuda()));
    if (options.threads < 0) return InvalidArgumentError("threads must be >= 0");
    if (device.is_cpu() || options.threads > 0) ConfigureCpu(options.threads);

    ASSIGN_OR_RETURN(auto model, LoadModel(model_dir, options, device, dtype));
    auto impl = std::make_unique<Impl>();
    ModelInfo& info = impl->info;
    info.dir = model->dir;
    info.name = model->name;
    info.hash = model->hash;
    info.single_file = model->single_file;
    info.vae_name = model->vae_name;
    info.vae_hash = model->vae_hash;
    info.device = device.str();
    info.dtype = DtypeName(dtype);
    const auto& uc = model->unet->config();
    const int64_t factor = model->vae->config().downscale_factor();
    info.default_width = info.default_height = static_cast<int>(model->sample_size * factor);
    info.unet_in_channels = static_cast<int>(uc.in_channels);
    info.sdxl = model->sdxl();
    info.text_layers = static_cast<int>(model->text_encoder->config().num_hidden_layers);
    info.prediction_type = model->scheduler_config.prediction_type;
    info.default_sampler = model->default_sampler;
    info.load_seconds = model->load_seconds;
    impl->loras = std::make_unique<LoraMerger>(model->unet_params, model->text_encoder_params, device);
    impl->model = std::move(model);
    return std::unique_ptr<Engine>(new Engine(std::move(impl)));
  } catch (const std::exception& e) {
    return StatusFromException(e, "loading " + model_dir);
  }
}

Status Engine::SetVae(const std::string& path) {
  Impl& impl = *impl_;
  StableDiffusionModel& m = *impl.model;
  if (path == impl.vae_path) return OkStatus();
  try {
    c10::InferenceMode guard;
    if (path.empty()) {
      m.vae = std::move(impl.loaded_vae);
      m.vae_dtype = impl.loaded_vae_dtype;
      m.vae_name = impl.loaded_vae_name;
      m.vae_hash = impl.loaded_vae_hash;
    } else {
      const Vae& base = impl.loaded_vae ? *impl.loaded_vae : *m.vae;
      ASSIGN_OR_RETURN(ExternalVae vae, LoadVaeFor(m, base, path));
      if (!impl.loaded_vae) {
        impl.loaded_vae = std::move(m.vae);
        impl.loaded_vae_dtype = m.vae_dtype;
        impl.loaded_vae_name = m.vae_name;
        impl.loaded_vae_hash = m.vae_hash;
      }
      m.vae_dtype = (m.dtype == at::kHalf && vae.vae->config().force_upcast) ? at::kFloat : m.dtype;
      m.vae = std::move(vae.vae);
      m.vae_name = vae.name;
      m.vae_hash = vae.hash;
    }
  } catch (const std::exception& e) {
    return StatusFromException(e, "loading the VAE " + path);
  }
  impl.vae_path = path;
  impl.info.vae_name = m.vae_name;
  impl.info.vae_hash = m.vae_hash;
  return OkStatus();
}

StatusOr<LoraInfo> Engine::LoadLora(const std::string& path) const {
  try {
    ASSIGN_OR_RETURN(std::shared_ptr<const LoraFile> file, impl_->loras->Load(path));
    return file->info;
  } catch (const std::exception& e) {
    return StatusFromException(e, "loading LoRA " + path);
  }
}

Status Engine::Validate(const RenderRequest& r) const {
  const ModelInfo& info = impl_->info;
  if (r.items.empty()) return InvalidArgumentError("no prompt: the request has no items");
  for (size_t i = 0; i < r.items.size(); ++i) {
    const RenderItem& it = r.items[i];
    if (it.prompt.find_first_not_of(" \t\r\n") == std::string::npos) {
      return InvalidArgumentError("item " + std::to_string(i) + ": the prompt is empty");
    }
    if (!std::isfinite(it.guidance_scale) || it.guidance_scale < 0 || it.guidance_scale > 100) {
      return InvalidArgumentError("item " + std::to_string(i) + ": guidance scale must be in [0, 100]");
    }
    if (!std::isfinite(it.guidance_rescale) || it.guidance_rescale < 0 || it.guidance_rescale > 1) {
      return InvalidArgumentError("item " + std::to_string(i) + ": guidance rescale must be in [0, 1]");
    }
    const bool sdxl_only = !it.prompt_2.empty() || !it.negative_prompt_2.empty() || !it.micro.is_default() ||
                           !it.negative_micro.is_default();
    if (sdxl_only && !info.sdxl) {
      return InvalidArgumentError("item " + std::to_string(i) + ": prompt_2, negative_prompt_2 and the micro-"
                                  "conditioning (original size, crop top-left, target size and their negatives) "
                                  "are for SDXL models; " + info.name + " is not an SDXL model");
    }
    for (const MicroConditioning* mc : {&it.micro, &it.negative_micro}) {
      for (int v : {mc->original_width, mc->original_height, mc->target_width, mc->target_height, mc->crop_top,
                    mc->crop_left}) {
        if (v < 0 || v > 65536) {
          return InvalidArgumentError("item " + std::to_string(i) + ": micro-conditioning sizes and crop "
                                      "coordinates must be in [0, 65536], got " + std::to_string(v));
        }
      }
    }
  }
  if (info.sdxl) {
    if (r.clip_skip != 1) {
      return InvalidArgumentError(info.name + " is an SDXL model: it always uses the penultimate layer of both text "
                                  "encoders (as diffusers does); clip skip is not supported");
    }
    if (r.prompt_chunking) {
      return UnimplementedError(info.name + " is an SDXL model: prompt chunking is not supported for SDXL yet");
    }
    if (r.init_image || r.mask) {
      return UnimplementedError(info.name + " is an SDXL model: img2img and inpainting are not supported for SDXL "
                                "yet (txt2img only)");
    }
  }
  const int width = r.width == 0 ? info.default_width : r.width;
  const int height = r.height == 0 ? info.default_height : r.height;
  if (width % 8 != 0 || height % 8 != 0 || width < 8 || height < 8) {
    return InvalidArgumentError("width and height must be positive multiples of 8, got " + std::to_string(width) +
                                "x" + std::to_string(height));
  }
  if (width > 8192 || height > 8192) {
    return InvalidArgumentError("width and height must be at most 8192, got " + std::to_string(width) + "x" +
                                std::to_string(height));
  }
  if (r.steps <= 0 || r.steps > 1000) {
    return InvalidArgumentError("steps must be in [1, 1000], got " + std::to_string(r.steps));
  }
  if (!r.sampler.empty()) RETURN_IF_ERROR(ParseSampler(r.sampler).status());
  if (r.clip_skip < 1 || r.clip_skip > info.text_layers) {
    return InvalidArgumentError("clip skip must be in [1, " + std::to_string(info.text_layers) + "], got " +
                                std::to_string(r.clip_skip));
  }
  const bool inpaint_model = info.unet_in_channels == 9;
  if (r.mask && !r.init_image) return InvalidArgumentError("a mask needs an init image (inpainting)");
  if (inpaint_model && !(r.init_image && r.mask)) {
    return InvalidArgumentError(info.name + " is an inpainting model (9-channel UNet): it needs an init image "
                                "and a mask");
  }
  if (r.mask && !inpaint_model) {
    return InvalidArgumentError("inpainting needs an inpainting model (9-channel UNet); " + info.name + " has " +
                                std::to_string(info.unet_in_channels) + " input channels");
  }
  if (!inpaint_model && info.unet_in_channels != 4) {
    return UnimplementedError("UNets with " + std::to_string(info.unet_in_channels) +
                              " input channels are not supported");
  }
  if (r.init_image) {
    const Image& img = *r.init_image;
    if (img.channels != 3 || img.pixels.size() != static_cast<size_t>(img.width) * img.height * 3) {
      return InvalidArgumentError("the init image must be 8-bit RGB");
    }
    if (img.width != width || img.height != height) {
      return InvalidArgumentError("the init image is " + std::to_string(img.width) + "x" + std::to_string(img.height) +
                                  " but the request renders " + std::to_string(width) + "x" + std::to_string(height));
    }
    if (!(r.strength > 0.0 && r.strength <= 1.0)) {
      return InvalidArgumentError("strength must be in (0, 1], got " + std::to_string(r.strength));
    }
    if (static_cast<int>(r.steps * r.strength) < 1) {
      return InvalidArgumentError("steps x strength is below 1: no denoising step would run");
    }
  }
  if (r.mask) {
    const Image& m = *r.mask;
    if ((m.channels != 1 && m.channels != 3) ||
        m.pixels.size() != static_cast<size_t>(m.width) * m.height * m.channels) {
      return InvalidArgumentError("the mask must be an 8-bit L or RGB image");
    }
    if (m.width != width || m.height != height) {
      return InvalidArgumentError("the mask is " + std::to_string(m.width) + "x" + std::to_string(m.height) +
                                  " but the init image is " + std::to_string(width) + "x" + std::to_string(height));
    }
  }
  for (const LoraRef& l : r.loras) {
    if (l.path.empty()) return InvalidArgumentError("a LoRA has an empty path");
    if (!std::isfinite(l.scale) || std::abs(l.scale) > 10) {
      return InvalidArgumentError("LoRA " + l.path + ": the scale must be in [-10, 10], got " + FormatNumber(l.scale));
    }
    RETURN_IF_ERROR(LoadLora(l.path).status());  // read once and cached: Render uses the same
  }
  return OkStatus();
}

StatusOr<RenderResult> Engine::Render(const RenderRequest& r, const StepCallback& on_step) const {
  RETURN_IF_ERROR(Validate(r));
  const StableDiffusionModel& m = *impl_->model;
  const auto start = Clock::now();
  try {
    c10::InferenceMode guard;
    RenderResult result;
    RETURN_IF_ERROR(impl_->loras->Apply(r.loras));
    result.lora_seconds = Seconds(start);
    const auto text_start = Clock::now();
    for (const LoraRef& l : r.loras) {
      ASSIGN_OR_RETURN(LoraInfo info, LoadLora(l.path));
      result.loras.push_back(std::move(info));
    }
    const int64_t batch = static_cast<int64_t>(r.items.size());
    const int width = r.width == 0 ? impl_->info.default_width : r.width;
    const int height = r.height == 0 ? impl_->info.default_height : r.height;
    const int64_t factor = m.vae->config().downscale_factor();
    const int64_t lh = height / factor, lw = width / factor;
    const int64_t latent_ch = m.vae->config().latent_channels;
    const double scaling = m.vae->config().scaling_factor;
    const auto dev = m.device;

    // 1. Text: every distinct prompt (or prompt chunk) is encoded once.
    const TextConditioning text = m.sdxl() ? EncodeTextSdxl(m, r, width, height, dev)
                                           : EncodeText(*m.tokenizer, *m.text_encoder, r, dev);
    const bool cfg = text.cfg;
    result.dropped_tokens = text.dropped_tokens;
    std::vector<float> g_values;
    for (const auto& it : r.items) g_values.push_back(static_cast<float>(it.guidance_scale));
    at::Tensor guidance = at::tensor(g_values, at::kFloat).view({batch, 1, 1, 1}).to(dev);
    at::Tensor use_cfg = (guidance > 1.0f);
    std::vector<float> rescale_values;
    bool any_rescale = false;
    for (const auto& it : r.items) {
      rescale_values.push_back(static_cast<float>(it.guidance_rescale));
      any_rescale = any_rescale || it.guidance_rescale > 0;
    }
    at::Tensor rescale = at::tensor(rescale_values, at::kFloat).view({batch, 1, 1, 1}).to(dev);
    result.text_seconds = Seconds(text_start);

    // 2. Scheduler and the starting latents.
    ASSIGN_OR_RETURN(Sampler sampler, ParseSampler(r.sampler.empty() ? m.default_sampler : r.sampler));
    ASSIGN_OR_RETURN(std::unique_ptr<Scheduler> sched, MakeScheduler(sampler, m.scheduler_config));
    RETURN_IF_ERROR(sched->SetTimesteps(r.steps));
    const int64_t num_timesteps = sched->timesteps().size(0);
    NoiseSource noise(r);
    const NoiseFn noise_fn = [&noise](at::IntArrayRef shape) { return noise.Batch(shape); };
    const std::vector<int64_t> latent_shape = {batch, latent_ch, lh, lw};

    int64_t first = 0;
    if (r.init_image && (impl_->info.unet_in_channels == 4 || r.strength < 1.0)) {
      const int init_steps = std::min(static_cast<int>(r.steps * r.strength), r.steps);
      const int t_start = std::max(r.steps - init_steps, 0);
      first = static_cast<int64_t>(t_start) * sched->order();
      if (first >= num_timesteps) return InvalidArgumentError("strength leaves no denoising step to run");
    }

    at::Tensor latents;
    at::Tensor mask_latents, masked_image_latents;  // inpainting
    auto encode_sample = [&](const at::Tensor& image) {
      Vae::LatentDist dist = m.vae->Encode(image.to(dev, m.vae_dtype));
      at::Tensor eps = noise.ForInputImage(dist.mean.sizes(), batch).to(dev);
      return (dist.mean.to(at::kFloat) + dist.std.to(at::kFloat) * eps) * scaling;
    };
    if (!r.init_image) {
      latents = noise.Batch(latent_shape).to(dev) * sched->init_noise_sigma();
    } else {
      at::Tensor image = ImageToTensor(*r.init_image);
      if (impl_->info.unet_in_channels == 4) {  // img2img
        at::Tensor init = encode_sample(image);
        at::Tensor eps = noise.Batch(latent_shape).to(dev);
        latents = sched->AddNoise(init, eps, first);
      } else {  // inpainting, 9-channel UNet
        if (r.strength >= 1.0) {
          latents = noise.Batch(latent_shape).to(dev) * sched->init_noise_sigma();
        } else {
          at::Tensor init = encode_sample(image);
          latents = sched->AddNoise(init, noise.Batch(latent_shape).to(dev), first);
        }
        const Image& mk = *r.mask;
        at::Tensor mask = at::from_blob(const_cast<uint8_t*>(mk.pixels.data()), {mk.height, mk.width, mk.channels},
                                        at::kByte).to(at::kFloat);
        if (mk.channels == 3) {  // PIL's convert("L")
          mask = ((mask.select(2, 0) * 19595 + mask.select(2, 1) * 38470 + mask.select(2, 2) * 7471 + 32768) / 65536)
                     .floor()
                     .unsqueeze(2);
        }
        mask = (mask.permute({2, 0, 1}).unsqueeze(0) / 255.0f >= 0.5f).to(at::kFloat);
        at::Tensor masked_image = image * (mask < 0.5f);
        at::Tensor small_mask = at::upsample_nearest2d(mask, {lh, lw});
        mask_latents = small_mask.to(dev).repeat({batch, 1, 1, 1});
        masked_image_latents = encode_sample(masked_image);
        if (cfg) {
          mask_latents = at::cat({mask_latents, mask_latents}, 0);
          masked_image_latents = at::cat({masked_image_latents, masked_image_latents}, 0);
        }
      }
    }
    latents = latents.to(at::kFloat);
    if (r.keep_latents) {
      at::Tensor cpu = latents.to(at::kCPU).contiguous();
      result.initial_latents.assign(cpu.data_ptr<float>(), cpu.data_ptr<float>() + cpu.numel());
    }

    // 3. Denoising.
    const auto denoise_start = Clock::now();
    const int total = static_cast<int>(num_timesteps - first);
    at::Tensor timesteps_cpu = sched->timesteps().to(at::kDouble);
    for (int64_t idx = first; idx < num_timesteps; ++idx) {
      const auto step_start = Clock::now();
      at::Tensor t = sched->timesteps()[idx];
      at::Tensor x = sched->ScaleModelInput(latents, idx);
      if (cfg) x = at::cat({x, x}, 0);
      if (mask_latents.defined()) x = at::cat({x, mask_latents.to(x.scalar_type()), masked_image_latents}, 1);
      at::Tensor out = RunUNetWithText(*m.unet, x.to(m.dtype), t.to(dev), text).to(at::kFloat);
      if (cfg) {
        std::vector<at::Tensor> parts = out.chunk(2, 0);
        at::Tensor guided = parts[0] + guidance * (parts[1] - parts[0]);
        if (any_rescale) {
          // diffusers' rescale_noise_cfg: per image, std over (C, H, W), unbiased.
          at::Tensor std_text = parts[1].std({1, 2, 3}, /*unbiased=*/true, /*keepdim=*/true);
          at::Tensor std_cfg = guided.std({1, 2, 3}, /*unbiased=*/true, /*keepdim=*/true);
          at::Tensor rescaled = guided * (std_text / std_cfg);
          guided = at::where(rescale > 0.0f, rescale * rescaled + (1.0f - rescale) * guided, guided);
        }
        out = at::where(use_cfg, guided, parts[1]);
      }
      latents = sched->Step(out, idx, latents, noise_fn);
      if (on_step) {
        if (dev.is_cuda()) (void)latents.sum().item<float>();  // so the step time is real
        StepInfo info;
        info.step = static_cast<int>(idx - first);
        info.total_steps = total;
        info.timestep = timesteps_cpu[idx].item<double>();
        info.elapsed_seconds = Seconds(start);
        info.step_seconds = Seconds(step_start);
        info.latents = &latents;
        if (!on_step(info)) return CancelledError("render cancelled after step " + std::to_string(info.step + 1));
      }
    }
    result.denoise_seconds = Seconds(denoise_start);

    // 4. Decoding, one image at a time: peak memory stays that of one image.
    const auto decode_start = Clock::now();
    if (r.keep_latents) {
      at::Tensor cpu = latents.to(at::kCPU).contiguous();
      result.latents.assign(cpu.data_ptr<float>(), cpu.data_ptr<float>() + cpu.numel());
      result.latents_shape = cpu.sizes().vec();
    }
    for (int64_t i = 0; i < batch; ++i) {
      at::Tensor z = (latents.slice(0, i, i + 1) / scaling).to(m.vae_dtype);
      at::Tensor decoded = m.vae->Decode(z).to(at::kFloat);
      at::Tensor unit = (decoded / 2 + 0.5).clamp(0, 1).to(at::kCPU);
      result.images.push_back(TensorToImage(unit[0]));
    }
    result.decode_seconds = Seconds(decode_start);
    return result;
  } catch (const std::exception& e) {
    return StatusFromException(e, "render");
  }
}

std::vector<Image> PreviewImages(const at::Tensor& latents) {
  // Linear fit from SD latents to RGB (the factors AUTOMATIC1111 and ComfyUI use).
  static const float kFactors[4][3] = {
      {0.3512f, 0.2297f, 0.3227f},
      {0.3250f, 0.4974f, 0.2350f},
      {-0.2829f, 0.1762f, 0.2721f},
      {-0.2120f, -0.2616f, -0.7177f},
  };
  std::vector<Image> out;
  try {
    c10::InferenceMode guard;
    at::Tensor w = at::from_blob(const_cast<float*>(&kFactors[0][0]), {4, 3}, at::kFloat);
    at::Tensor z = latents.to(at::kCPU, at::kFloat);
    if (z.dim() != 4 || z.size(1) != 4) return out;
    at::Tensor rgb = at::einsum("bchw,cr->brhw", {z, w});
    rgb = ((rgb + 1) / 2).clamp(0, 1);
    for (int64_t i = 0; i < rgb.size(0); ++i) out.push_back(TensorToImage(rgb[i]));
  } catch (const std::exception&) {
    out.clear();
  }
  return out;
}

GenerationParameters ParametersFor(const ModelInfo& model, const RenderRequest& request, const RenderItem& item,
                                   int width, int height, std::string_view version,
                                   const std::vector<LoraInfo>& loras) {
  GenerationParameters p;
  p.prompt = item.prompt;
  // Always, as A1111 does (its create_infotext writes a non-empty negative
  // prompt whatever the CFG scale).
  p.negative_prompt = item.negative_prompt;
  p.steps = request.steps;
  const std::string& sampler_name = request.sampler.empty() ? model.default_sampler : request.sampler;
  auto sampler = ParseSampler(sampler_name);
  A1111SamplerName a1111;
  if (sampler.ok()) {
    a1111 = A1111Name(*sampler);
    p.sampler = std::string(a1111.sampler);
    p.schedule_type = std::string(a1111.schedule_type);
  } else {
    p.sampler = sampler_name;
  }
  p.cfg_scale = item.guidance_scale;
  p.seed = item.seed;
  p.width = width;
  p.height = height;
  p.model_hash = model.hash;
  p.model = model.name;
  p.vae_hash = model.vae_hash;
  p.vae = model.vae_name;
  if (request.init_image) p.denoising_strength = request.strength;
  if (request.clip_skip > 1) p.clip_skip = request.clip_skip;
  if (!loras.empty()) {
    // A1111's "Lora hashes" (its network extension), and the strengths,
    // which A1111 keeps in <lora:name:scale> prompt tags instead: sdfarm
    // takes LoRAs apart from the prompt, so "Lora weights" records them
    // (A1111 keeps an unknown key as it is).
    std::string hashes, weights;
    for (size_t i = 0; i < loras.size(); ++i) {
      std::string name = loras[i].name;  // A1111 drops ':' and ',' from the name (they would break the list)
      std::erase_if(name, [](char c) { return c == ':' || c == ','; });
      hashes += (hashes.empty() ? "" : ", ") + name + ": " + loras[i].hash;
      if (i < request.loras.size()) {
        weights += (weights.empty() ? "" : ", ") + name + ": " + FormatNumber(request.loras[i].scale);
      }
    }
    p.extra.push_back({"Lora hashes", hashes});
    if (!weights.empty()) p.extra.push_back({"Lora weights", weights});
  }
  // SDXL settings A1111 has no field for (its SDXL infotext is the SD one:
  // one prompt, micro-conditioning = the image size), written only when they
  // differ from those defaults, under keys A1111 keeps as they are.
  if (!item.prompt_2.empty() && item.prompt_2 != item.prompt) p.extra.push_back({"Prompt 2", item.prompt_2});
  if (!item.negative_prompt_2.empty() && item.negative_prompt_2 != item.negative_prompt) {
    p.extra.push_back({"Negative prompt 2", item.negative_prompt_2});
  }
  auto micro = [&](const MicroConditioning& m, const std::string& prefix) {
    const std::array<double, 6> v = SdxlTimeIds(m, width, height);  // (orig h, w, top, left, target h, w)
    if (v[0] != height || v[1] != width) {
      p.extra.push_back({prefix + "Original size", FormatNumber(v[1]) + "x" + FormatNumber(v[0])});
    }
    if (v[2] != 0 || v[3] != 0) p.extra.push_back({prefix + "Crop top-left", FormatNumber(v[2]) + "," + FormatNumber(v[3])});
    if (v[4] != height || v[5] != width) {
      p.extra.push_back({prefix + "Target size", FormatNumber(v[5]) + "x" + FormatNumber(v[4])});
    }
  };
  micro(item.micro, "");
  if (HasNegativeMicroConditioning(item)) micro(item.negative_micro, "Negative ");
  if (item.guidance_rescale > 0) p.extra.push_back({"Guidance rescale", FormatNumber(item.guidance_rescale)});
  // A1111 adds "Eta DDIM" while sampling, after the networks' "Lora hashes".
  if (!a1111.eta_ddim.empty()) p.extra.push_back({"Eta DDIM", std::string(a1111.eta_ddim)});
  p.extra.push_back({"Version", std::string(version)});
  return p;
}

}  // namespace sdfarm::engine
