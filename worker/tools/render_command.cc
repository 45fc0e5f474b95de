#include "worker/tools/render_command.h"

#include <ATen/ATen.h>
#include <unistd.h>

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <utility>

#include "worker/engine/a1111_parameters.h"
#include "worker/engine/engine.h"
#include "worker/engine/image_resize.h"
#include "worker/engine/safetensors.h"
#include "worker/engine/scheduler.h"
#include "worker/tools/cli_flags.h"

namespace sdfarm::tools {
namespace {

namespace fs = std::filesystem;
using engine::Engine;
using engine::EngineOptions;
using engine::Image;
using engine::RenderItem;
using engine::RenderRequest;

constexpr char kProgram[] = "sdfarm-render";

int Fail(const engine::Status& s, int code = 1) {
  std::fprintf(stderr, "%s: error: %s\n", kProgram, s.message().c_str());
  return code;
}

void DefineFlags(CliFlags& f) {
  f.Add("model", "PATH", "diffusers pipeline folder (model_index.json, unet/, vae/, text_encoder/, ...) or a "
        "single-file checkpoint (.safetensors in the original LDM / A1111 / CivitAI layout)");
  f.Add("model-config", "DIR", "single file: a diffusers folder whose configs, tokenizer and scheduler describe it "
        "(required for SDXL checkpoints)");
  f.Add("original-config", "YAML", "single file: its LDM config (default: <checkpoint>.yaml beside it, if present)");
  f.Add("prediction-type", "TYPE", "epsilon or v_prediction: overrides the configs (needed for an SD 2.x file "
        "without a yaml: 512-base is epsilon, 768-v is v_prediction)");
  f.AddBool("ema", "single file: use its EMA UNet weights (model_ema.*)");
  f.Add("vae", "PATH", "VAE to use instead of the model's: a diffusers VAE folder or a .safetensors VAE");
  f.Add("prompt", "TEXT", "what to render; give it several times for several prompts", std::nullopt, true);
  f.Add("negative", "TEXT", "negative prompt (used when --guidance > 1); on SDXL models, leaving it out gives zero "
        "negative embeddings (force_zeros_for_empty_prompt) while --negative '' encodes the empty text, as diffusers",
        "");
  f.Add("prompt-2", "TEXT", "SDXL: the prompt for the second text encoder (default: --prompt)");
  f.Add("negative-2", "TEXT", "SDXL: the negative prompt for the second text encoder (default: --negative)");
  f.Add("original-size", "WxH", "SDXL micro-conditioning: the original image size the model should imitate "
        "(default: the render size)");
  f.Add("target-size", "WxH", "SDXL micro-conditioning: the target size (default: the render size)");
  f.Add("crop-top-left", "TOP,LEFT", "SDXL micro-conditioning: crop coordinates (default: 0,0)");
  f.Add("negative-original-size", "WxH", "SDXL: micro-conditioning of the negative branch; used together with "
        "--negative-target-size (both or neither, as diffusers)");
  f.Add("negative-target-size", "WxH", "SDXL: see --negative-original-size");
  f.Add("negative-crop-top-left", "TOP,LEFT", "SDXL: negative crop coordinates (default 0,0; needs both negative "
        "sizes)");
  f.Add("guidance-rescale", "R", "diffusers' guidance_rescale in [0, 1] (rescales the guided prediction towards "
        "the text prediction's std; 0.7 is common for v-prediction/zero-SNR models)", "0");
  f.Add("seed", "N", "seed of the first image; image k of a prompt uses N+k", "0");
  f.Add("seeds", "LIST", "explicit seeds, e.g. 0-9,42: one image per seed for each prompt");
  f.Add("guidance", "SCALE", "classifier-free guidance scale; <= 1 runs without guidance",
        engine::FormatNumber(kRenderDefaultGuidance));
  f.Add("steps", "N", "denoising steps", std::to_string(kRenderDefaultSteps));
  f.Add("sampler", "NAME",
        "pndm ddim euler euler_a lms dpmpp_2m dpmpp_2m_karras ddpm, or 'model': the model's own scheduler config, "
        "as diffusers' pipeline uses it (PNDM for SD 1.x)",
        kRenderDefaultSampler);
  f.Add("size", "WxH", "image size, multiples of 8, e.g. 512x768 (default: the model's, or the init image's "
        "rounded down to multiples of 8); an init image and mask of another size are resized to it (Lanczos)");
  f.Add("width", "PX", "image width, a multiple of 8 (instead of --size)");
  f.Add("height", "PX", "image height, a multiple of 8 (instead of --size)");
  f.Add("images-per-prompt", "N", "images per prompt (seeds N, N+1, ...)", "1");
  f.Add("batch", "N", "images rendered together in one pass (more is faster on a GPU, needs more memory)", "1");
  f.Add("device", "DEV", "cpu, cuda or cuda:N", "cpu");
  f.Add("dtype", "TYPE", "fp32, fp16 or bf16 (default: fp32 on cpu, fp16 on cuda)");
  f.Add("threads", "N", "CPU threads (0: one per core)", "0");
  f.Add("init-image", "PNG", "img2img / inpainting source image");
  f.Add("strength", "S", "img2img denoising strength in (0, 1]", "0.8");
  f.Add("mask", "PNG", "inpainting mask (white = repaint); needs an inpainting model");
  f.Add("clip-skip", "N", "use the N-th last text encoder layer (1 = last, 2 = AUTOMATIC1111's 'Clip skip 2')", "1");
  f.AddBool("prompt-chunking",
            "prompts over 75 tokens are encoded in chunks of 75 and concatenated, as AUTOMATIC1111 does (without "
            "its (emphasis:1.2) syntax); default: cut at CLIP's 77 tokens, as diffusers does");
  f.Add("lora", "PATH[:SCALE]",
        "apply a LoRA (kohya/A1111 .safetensors, or a diffusers LoRA file or folder) with SCALE (default 1.0) to "
        "the UNet and the text encoder; repeat for several",
        std::nullopt, true);
  f.Add("out", "DIR", "output folder", "out");
  f.AddBool("overwrite", "replace images (and --latents-out) left in --out by an earlier run; without it such a "
            "file is an error, reported before anything is rendered");
  f.Add("latents-out", "FILE", "also write the final latents (before VAE decoding) as safetensors");
  f.AddBool("shared-generator", "one generator for each batch, as diffusers' default (for parity checks)");
  f.AddBool("quiet", "no progress output");
  f.SetEpilog(
      "Examples:\n"
      "  sdfarm-render --model models/sd15 --prompt 'a red fox in the snow' --seeds 0-3 --steps 25\n"
      "  sdfarm-render --model models/sd15 --prompt 'a lighthouse, storm, oil painting, ...' --prompt-chunking "
      "--size 512x768\n"
      "  sdfarm-render --model models/sd15 --prompt 'a red fox' --sampler model   # as diffusers' pipeline defaults\n"
      "  sdfarm-render --model models/sd15 --prompt 'oil painting' --init-image in.png --strength 0.6\n"
      "  sdfarm-render --model models/sd15-inpaint --prompt 'a cat' --init-image in.png --mask mask.png\n"
      "  sdfarm-render --model models/sd15 --prompt 'a castle' --lora loras/add_detail.safetensors:0.7 --lora style\n"
      "  sdfarm-render --model v1-5-pruned-emaonly.safetensors --vae vae-ft-mse-840000.safetensors --prompt 'a fox'\n"
      "  sdfarm-render --model v2-1_768-ema-pruned.safetensors --prediction-type v_prediction --prompt 'a fox'\n"
      "  sdfarm-render --model models/sdxl-base --prompt 'a bowl of fruit' --prompt-2 'oil painting' --sampler model\n"
      "  sdfarm-render --model models/sdxl-base --prompt 'a fox' --original-size 2048x2048 --crop-top-left 0,0\n"
      "\nSDXL models (diffusers StableDiffusionXLPipeline folders) render at their native size (1024x1024 for\n"
      "SDXL base) unless --size says otherwise. --prompt-2/--negative-2 feed the second text encoder; the\n"
      "micro-conditioning flags take WIDTHxHEIGHT (diffusers' original_size/target_size are (height, width))\n"
      "and default to the render size. SDXL-only flags on other models are an error. --sampler model gives\n"
      "the model's scheduler (Euler, \"leading\" spacing for SDXL base), i.e. diffusers' pipeline default.\n"
      "\nPickle checkpoints (.ckpt, .pt) are refused: convert them to .safetensors first.\n"
      "\nEach image is written as <out>/<index>-seed<seed>-cfg<guidance>.png with its parameters embedded\n"
      "in AUTOMATIC1111's format (PNG Info, Civitai and other tools read it). Files of an earlier run are\n"
      "never replaced without --overwrite.\n"
      "\nThe default sampler is euler_a, as the farm's (so the same settings give the same image on both);\n"
      "--sampler model uses the model's scheduler config, which is what diffusers' pipelines do.\n"
      "\nOn a CPU, time grows with the pixel count (and attention with its square): the model's default size\n"
      "is the quick one; 512x512 with SD 1.5 takes minutes per image.\n");
}

// "512x768" -> {512, 768}; `sep` separates the two numbers.
engine::StatusOr<std::pair<int, int>> ParsePair(const std::string& flag, const std::string& text, const char* sep,
                                                int min, int max, const std::string& what) {
  const size_t x = text.find_first_of(sep);
  auto dim = [&](const std::string& part, int* out) {
    if (part.empty() || part.size() > 5 || part.find_first_not_of("0123456789") != std::string::npos) return false;
    *out = std::stoi(part);
    return *out >= min && *out <= max;
  };
  std::pair<int, int> pair;
  if (x == std::string::npos || !dim(text.substr(0, x), &pair.first) || !dim(text.substr(x + 1), &pair.second)) {
    return engine::InvalidArgumentError("--" + flag + " must be " + what + ", each in [" + std::to_string(min) + ", " +
                                        std::to_string(max) + "]; got '" + text + "'");
  }
  return pair;
}

engine::StatusOr<std::pair<int, int>> ParseSize(const std::string& text) {
  auto size = ParsePair("size", text, "xX", 8, 8192, "WIDTHxHEIGHT in pixels, e.g. 512x768");
  if (size.ok() && (size->first % 8 != 0 || size->second % 8 != 0)) {
    return engine::InvalidArgumentError("--size must be multiples of 8 (the VAE's scale), got '" + text + "'");
  }
  return size;
}

// The SDXL micro-conditioning flags (sizes WxH, crops TOP,LEFT) into `item`.
engine::Status ParseMicroConditioning(const CliFlags& flags, engine::RenderItem* item) {
  struct SizeFlag {
    const char* flag;
    int* width;
    int* height;
  };
  engine::MicroConditioning& m = item->micro;
  engine::MicroConditioning& n = item->negative_micro;
  for (const SizeFlag& f : {SizeFlag{"original-size", &m.original_width, &m.original_height},
                            SizeFlag{"target-size", &m.target_width, &m.target_height},
                            SizeFlag{"negative-original-size", &n.original_width, &n.original_height},
                            SizeFlag{"negative-target-size", &n.target_width, &n.target_height}}) {
    if (!flags.Has(f.flag)) continue;
    auto v = ParsePair(f.flag, flags.Get(f.flag), "xX", 1, 65536, "WIDTHxHEIGHT in pixels, e.g. 1024x1024");
    if (!v.ok()) return v.status();
    *f.width = v->first;
    *f.height = v->second;
  }
  for (const SizeFlag& f : {SizeFlag{"crop-top-left", &m.crop_top, &m.crop_left},
                            SizeFlag{"negative-crop-top-left", &n.crop_top, &n.crop_left}}) {
    if (!flags.Has(f.flag)) continue;
    auto v = ParsePair(f.flag, flags.Get(f.flag), ",", 0, 65536, "TOP,LEFT in pixels, e.g. 0,0");
    if (!v.ok()) return v.status();
    *f.width = v->first;   // top
    *f.height = v->second;  // left
  }
  const bool neg_orig = flags.Has("negative-original-size"), neg_target = flags.Has("negative-target-size");
  if (neg_orig != neg_target || (flags.Has("negative-crop-top-left") && !neg_orig)) {
    return engine::InvalidArgumentError("--negative-original-size and --negative-target-size go together (diffusers "
                                        "ignores either one, and --negative-crop-top-left, without the other)");
  }
  return engine::OkStatus();
}

// The input image or mask at the size being rendered: resized as diffusers
// does (Pillow's Lanczos), with a one-line note.
Image FitToSize(const Image& image, int width, int height, const char* what, bool quiet) {
  if (image.width == width && image.height == height) return image;
  if (!quiet) {
    std::fprintf(stderr, "note: resizing the %s from %dx%d to %dx%d (Lanczos, as diffusers does)\n", what,
                 image.width, image.height, width, height);
  }
  return engine::ResizeLanczos(image, width, height);
}

std::string FileName(size_t index, const RenderItem& item) {
  char buf[160];
  std::snprintf(buf, sizeof(buf), "%04zu-seed%" PRIu64 "-cfg%s.png", index, item.seed,
                engine::FormatNumber(item.guidance_scale).c_str());
  return buf;
}

}  // namespace

engine::StatusOr<engine::LoraRef> ParseLoraArg(const std::string& arg) {
  engine::LoraRef ref;
  ref.path = arg;
  const size_t colon = arg.rfind(':');
  if (colon != std::string::npos && colon + 1 < arg.size()) {
    const std::string tail = arg.substr(colon + 1);
    char* end = nullptr;
    const double v = std::strtod(tail.c_str(), &end);
    if (end != nullptr && *end == '\0' && tail.find_first_of("0123456789") != std::string::npos &&
        tail.find_first_of("xXpP") == std::string::npos) {
      if (!std::isfinite(v)) return engine::InvalidArgumentError("--lora " + arg + ": the scale is not finite");
      ref.path = arg.substr(0, colon);
      ref.scale = v;
    }
  }
  if (ref.path.empty()) return engine::InvalidArgumentError("--lora '" + arg + "': no path (PATH[:SCALE])");
  return ref;
}

int RunRender(int argc, char** argv) {
  CliFlags flags(kProgram, "Renders Stable Diffusion images on this machine (txt2img, img2img, inpainting).");
  DefineFlags(flags);
  if (auto s = flags.Parse(argc, argv); !s.ok()) return Fail(s, 2);
  if (flags.help_requested()) {
    std::cout << flags.Usage();
    return 0;
  }
  if (!flags.Has("model")) return Fail(engine::InvalidArgumentError("--model PATH is required (see --help)"), 2);
  const std::vector<std::string> prompts = flags.GetAll("prompt");
  if (prompts.empty()) return Fail(engine::InvalidArgumentError("--prompt TEXT is required (see --help)"), 2);

  // Parse everything before loading the model: bad input costs nothing.
  auto steps = flags.GetInt("steps", 1, 1000);
  auto guidance = flags.GetDouble("guidance", 0, 100);
  auto nipp = flags.GetInt("images-per-prompt", 1, 10000);
  auto batch = flags.GetInt("batch", 1, 1024);
  auto threads = flags.GetInt("threads", 0, 1024);
  auto strength = flags.GetDouble("strength", 0, 1);
  auto clip_skip = flags.GetInt("clip-skip", 1, 64);
  auto guidance_rescale = flags.GetDouble("guidance-rescale", 0, 1);
  for (const engine::Status& s : {steps.status(), guidance.status(), nipp.status(), batch.status(), threads.status(),
                                  strength.status(), clip_skip.status(), guidance_rescale.status()}) {
    if (!s.ok()) return Fail(s, 2);
  }
  std::vector<uint64_t> seeds;
  if (flags.Has("seeds")) {
    if (flags.Has("seed") || flags.Has("images-per-prompt")) {
      return Fail(engine::InvalidArgumentError("--seeds replaces --seed and --images-per-prompt; give one or the other"),
                  2);
    }
    auto list = engine::StatusOr<std::vector<uint64_t>>(ParseSeedList(flags.Get("seeds")));
    if (!list.ok()) return Fail(list.status(), 2);
    seeds = *list;
  } else {
    uint64_t first = 0;
    if (!ParseUint64(flags.Get("seed"), &first)) {
      return Fail(engine::InvalidArgumentError("--seed must be an integer in [0, 2^64-1], got '" + flags.Get("seed") +
                                               "'"),
                  2);
    }
    for (int64_t k = 0; k < *nipp; ++k) seeds.push_back(first + static_cast<uint64_t>(k));
  }
  // "model": the model's scheduler config (the engine's empty sampler).
  const std::string sampler_flag = flags.Get("sampler") == "model" ? "" : flags.Get("sampler");
  if (!sampler_flag.empty()) {
    if (auto s = engine::ParseSampler(sampler_flag); !s.ok()) {
      return Fail(engine::InvalidArgumentError(s.status().message() + "; or 'model' for the model's own"), 2);
    }
  }

  RenderRequest base;
  for (const std::string& arg : flags.GetAll("lora")) {
    auto ref = ParseLoraArg(arg);
    if (!ref.ok()) return Fail(ref.status(), 2);
    base.loras.push_back(*ref);
  }
  base.steps = static_cast<int>(*steps);
  base.sampler = sampler_flag;
  base.clip_skip = static_cast<int>(*clip_skip);
  base.keep_latents = flags.Has("latents-out");
  base.prompt_chunking = flags.GetBool("prompt-chunking");
  const bool quiet = flags.GetBool("quiet");
  if (flags.Has("size")) {
    if (flags.Has("width") || flags.Has("height")) {
      return Fail(engine::InvalidArgumentError("--size replaces --width and --height; give one or the other"), 2);
    }
    auto size = ParseSize(flags.Get("size"));
    if (!size.ok()) return Fail(size.status(), 2);
    base.width = size->first;
    base.height = size->second;
  }
  for (const char* dim : {"width", "height"}) {
    if (!flags.Has(dim)) continue;
    auto v = flags.GetInt(dim, 8, 8192);
    if (!v.ok()) return Fail(v.status(), 2);
    (std::string(dim) == "width" ? base.width : base.height) = static_cast<int>(*v);
  }
  if (flags.Has("init-image")) {
    auto img = engine::ReadPng(flags.Get("init-image"), 3);
    if (!img.ok()) return Fail(img.status(), 2);
    // Unless told otherwise, the image's size rounded down to multiples of 8
    // (diffusers' VaeImageProcessor); the image is then resized to it.
    if (base.width == 0) base.width = img->width - img->width % 8;
    if (base.height == 0) base.height = img->height - img->height % 8;
    if (base.width < 8 || base.height < 8) {
      return Fail(engine::InvalidArgumentError("the init image " + flags.Get("init-image") + " is " +
                                               std::to_string(img->width) + "x" + std::to_string(img->height) +
                                               ": at least 8x8 pixels are needed"),
                  2);
    }
    base.init_image = FitToSize(*img, base.width, base.height, "init image", quiet);
    base.strength = *strength;
  } else if (flags.Has("strength")) {
    return Fail(engine::InvalidArgumentError("--strength needs --init-image"), 2);
  }
  if (flags.Has("mask")) {
    if (!base.init_image) return Fail(engine::InvalidArgumentError("--mask needs --init-image"), 2);
    auto mask = engine::ReadPng(flags.Get("mask"), 1);
    if (!mask.ok()) return Fail(mask.status(), 2);
    if (mask->width != base.width || mask->height != base.height) {
      // diffusers' prepare_mask_and_masked_image: Lanczos on the L mask, then
      // binarised at 0.5 (the engine binarises every mask the same way).
      Image fitted = FitToSize(*mask, base.width, base.height, "mask", quiet);
      for (uint8_t& v : fitted.pixels) v = v >= 128 ? 255 : 0;
      base.mask = std::move(fitted);
    } else {
      base.mask = std::move(mask).value();
    }
    if (!flags.Has("strength")) base.strength = 1.0;  // inpainting repaints fully unless told otherwise
  }

  RenderItem item_base;
  item_base.negative_prompt = flags.Get("negative");
  item_base.empty_negative_is_text = flags.Has("negative");  // --negative '' is the text "", not "none"
  item_base.prompt_2 = flags.Get("prompt-2");
  item_base.negative_prompt_2 = flags.Get("negative-2");
  item_base.guidance_scale = *guidance;
  item_base.guidance_rescale = *guidance_rescale;
  if (auto s = ParseMicroConditioning(flags, &item_base); !s.ok()) return Fail(s, 2);
  std::vector<RenderItem> items;
  for (const auto& p : prompts) {
    for (uint64_t seed : seeds) {
      RenderItem item = item_base;
      item.prompt = p;
      item.seed = seed;
      items.push_back(std::move(item));
    }
  }

  const std::string out_dir = flags.Get("out");
  // Never replace an earlier run's files by accident; checked before any compute.
  if (!flags.GetBool("overwrite")) {
    std::vector<std::string> outputs;
    for (size_t i = 0; i < items.size(); ++i) outputs.push_back(out_dir + "/" + FileName(i, items[i]));
    if (flags.Has("latents-out")) outputs.push_back(flags.Get("latents-out"));
    for (const std::string& path : outputs) {
      std::error_code exists_ec;
      if (fs::exists(fs::symlink_status(path, exists_ec))) {
        return Fail(engine::Status(engine::StatusCode::kAlreadyExists, path + " already exists (from an earlier run?); pass --overwrite to "
                                               "replace it, or choose another --out"),
                    2);
      }
    }
  }

  EngineOptions options;
  options.device = flags.Get("device");
  options.dtype = flags.Get("dtype");
  options.threads = static_cast<int>(*threads);
  options.model_config = flags.Get("model-config");
  options.original_config = flags.Get("original-config");
  options.prediction_type = flags.Get("prediction-type");
  options.ema = flags.GetBool("ema");
  options.vae = flags.Get("vae");
  const bool tty = isatty(STDERR_FILENO);
  if (!quiet) std::fprintf(stderr, "loading %s on %s...\n", flags.Get("model").c_str(), options.device.c_str());
  auto engine = Engine::Load(flags.Get("model"), options);
  if (!engine.ok()) return Fail(engine.status());
  const engine::ModelInfo& info = (*engine)->info();
  if (!quiet) {
    std::fprintf(stderr, "loaded %s (hash %s, %s %s) in %.1f s\n", info.name.c_str(), info.hash.c_str(),
                 info.device.c_str(), info.dtype.c_str(), info.load_seconds);
    if (!info.vae_name.empty()) std::fprintf(stderr, "VAE %s (hash %s)\n", info.vae_name.c_str(), info.vae_hash.c_str());
  }

  // Validate the whole run up front so a bad request fails before any compute.
  {
    RenderRequest probe = base;
    probe.items = items;
    if (auto s = (*engine)->Validate(probe); !s.ok()) return Fail(s, 2);
  }
  // Only now: a refused request leaves nothing behind.
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return Fail(engine::UnavailableError("cannot create output folder " + out_dir + ": " + ec.message()));
  if (!quiet) {
    for (const engine::LoraRef& l : base.loras) {
      auto lora = (*engine)->LoadLora(l.path);  // cached by Validate
      if (lora.ok()) {
        std::fprintf(stderr, "LoRA %s (hash %s) at scale %s\n", lora->name.c_str(), lora->hash.c_str(),
                     engine::FormatNumber(l.scale).c_str());
      }
    }
  }
  const std::string sampler_name = base.sampler.empty() ? info.default_sampler : base.sampler;
  auto sampler = engine::ParseSampler(sampler_name);
  if (!sampler.ok()) return Fail(sampler.status());

  std::vector<at::Tensor> all_latents;
  const size_t batch_size = static_cast<size_t>(*batch);
  const size_t num_batches = (items.size() + batch_size - 1) / batch_size;
  size_t written = 0;
  for (size_t b = 0; b < num_batches; ++b) {
    RenderRequest req = base;
    const size_t begin = b * batch_size, end = std::min(items.size(), begin + batch_size);
    req.items.assign(items.begin() + begin, items.begin() + end);
    if (flags.GetBool("shared-generator")) {
      req.seed_mode = engine::SeedMode::kShared;
      req.shared_seed = req.items.front().seed;
    }
    auto progress = [&](const engine::StepInfo& s) {
      if (!quiet && tty) {
        const double eta = s.step_seconds * (s.total_steps - s.step - 1);
        std::fprintf(stderr, "\r[%zu/%zu] step %d/%d  %.2f s/it  eta %.0f s   ", b + 1, num_batches, s.step + 1,
                     s.total_steps, s.step_seconds, eta);
        std::fflush(stderr);
      }
      return true;
    };
    auto result = (*engine)->Render(req, progress);
    if (!quiet && tty) std::fprintf(stderr, "\n");
    if (!result.ok()) return Fail(result.status());
    for (size_t i = 0; i < req.items.size(); ++i) {
      const RenderItem& item = req.items[i];
      if (result->dropped_tokens[i] > 0 && !quiet) {
        std::fprintf(stderr,
                     "warning: prompt of image %zu is longer than 77 tokens; %d tokens were dropped "
                     "(--prompt-chunking keeps them, as AUTOMATIC1111 does)\n",
                     begin + i, result->dropped_tokens[i]);
      }
      const engine::GenerationParameters p = engine::ParametersFor(
          info, req, item, result->images[i].width, result->images[i].height, "sdfarm " SDFARM_VERSION,
          result->loras);
      const std::string path = out_dir + "/" + FileName(begin + i, item);
      if (auto s = engine::WritePngAtomic(path, result->images[i], {{"parameters", engine::FormatA1111Parameters(p)}});
          !s.ok()) {
        return Fail(s);
      }
      ++written;
      if (!quiet) std::printf("%s\n", path.c_str());
    }
    if (req.keep_latents) {
      all_latents.push_back(at::from_blob(result->latents.data(), result->latents_shape, at::kFloat).clone());
    }
    if (!quiet) {
      if (result->lora_seconds > 0.0005) std::fprintf(stderr, "LoRAs merged in %.3f s\n", result->lora_seconds);
      std::fprintf(stderr, "batch %zu/%zu: %zu images, text %.2f s, denoise %.2f s, decode %.2f s\n", b + 1,
                   num_batches, req.items.size(), result->text_seconds, result->denoise_seconds,
                   result->decode_seconds);
    }
  }
  if (flags.Has("latents-out")) {
    at::Tensor latents = at::cat(all_latents, 0);
    if (auto s = engine::WriteSafetensors(flags.Get("latents-out"), {{"latents", latents}}, {{"format", "pt"}});
        !s.ok()) {
      return Fail(s);
    }
  }
  if (!quiet) std::fprintf(stderr, "wrote %zu images to %s\n", written, out_dir.c_str());
  return 0;
}

}  // namespace sdfarm::tools
