#include "worker/tools/mkmodel_command.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "worker/engine/json_util.h"
#include "worker/engine/safetensors.h"
#include "worker/engine/text_encoder.h"
#include "worker/engine/unet.h"
#include "worker/engine/vae.h"
#include "worker/engine/weights.h"
#include "worker/tools/cli_flags.h"

namespace sdfarm::tools {
namespace {

namespace fs = std::filesystem;
using engine::ParamSet;
using engine::Status;

constexpr char kProgram[] = "sdfarm-mkmodel";

int Fail(const Status& s, int code = 1) {
  std::fprintf(stderr, "%s: error: %s\n", kProgram, s.message().c_str());
  return code;
}

// With count_only, only the module's declared parameter shapes are counted:
// nothing is allocated or written (seconds for SDXL instead of 10 GB).
template <typename Module, typename Config>
Status WriteRandomModule(const std::string& config_dir, const std::string& out_dir, const std::string& file_name,
                         uint64_t seed, at::ScalarType dtype, int64_t* num_params, bool count_only = false) {
  const std::string config_path = config_dir + "/config.json";
  auto j = engine::ReadJsonFile(config_path);
  if (!j.ok()) return j.status();
  auto config = Config::FromJson(*j, config_path);
  if (!config.ok()) return config.status();
  if (count_only) {
    try {
      auto module = std::make_unique<Module>(std::move(config).value());
      ParamSet params;
      module->Declare(params.Root());
      *num_params = params.NumElements();
      return engine::OkStatus();
    } catch (const std::exception& e) {
      return engine::StatusFromException(e, "declaring " + config_path);
    }
  }
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return engine::UnavailableError("cannot create " + out_dir + ": " + ec.message());
  fs::copy_file(config_path, out_dir + "/config.json", fs::copy_options::overwrite_existing, ec);
  if (ec) return engine::UnavailableError("cannot copy " + config_path + ": " + ec.message());
  try {
    c10::InferenceMode guard;
    auto module = std::make_unique<Module>(std::move(config).value());
    ParamSet params;
    module->Declare(params.Root());
    engine::RandomizeParams(params, seed, at::kCPU, dtype);
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    tensors.reserve(params.slots().size());
    for (const auto& slot : params.slots()) tensors.emplace_back(slot.name, *slot.tensor);
    *num_params = params.NumElements();
    return engine::WriteSafetensors(out_dir + "/" + file_name, tensors, {{"format", "pt"}});
  } catch (const std::exception& e) {
    return engine::StatusFromException(e, "creating " + out_dir);
  }
}

Status CopyTree(const std::string& from, const std::string& to) {
  std::error_code ec;
  fs::create_directories(to, ec);
  if (!ec) fs::copy(from, to, fs::copy_options::recursive | fs::copy_options::overwrite_existing, ec);
  if (ec) return engine::UnavailableError("cannot copy " + from + " to " + to + ": " + ec.message());
  return engine::OkStatus();
}

}  // namespace

int RunMkModel(int argc, char** argv) {
  CliFlags flags(kProgram,
                 "Writes a Stable Diffusion model with seeded random weights in the diffusers layout, from a\n"
                 "folder of configs. The images it renders are noise; it exists so that benchmarks, tests and\n"
                 "demos run at real model scale without downloading weights. SDXL configs (with text_encoder_2/)\n"
                 "give an SDXL pipeline folder (text_encoder_2 with its projection, tokenizer_2).");
  flags.Add("config", "DIR", "folder with model_index.json and {unet,vae,text_encoder}/config.json, "
                             "scheduler/scheduler_config.json (e.g. ../shared/models/configs/sd15)");
  flags.Add("out", "DIR", "output model folder (created)");
  flags.Add("tokenizer", "DIR", "CLIP tokenizer folder to copy (default: DIR/tokenizer of --config)");
  flags.Add("tokenizer-2", "DIR", "SDXL: the second tokenizer folder to copy (pads with \"!\"; default: "
                                  "DIR/tokenizer_2 of --config)");
  flags.AddBool("count-only", "print each network's parameter count (from the configs) and write nothing");
  flags.Add("dtype", "TYPE", "weight dtype: fp32, fp16 or bf16", "fp32");
  flags.Add("seed", "N", "random seed", "0");
  flags.SetEpilog(
      "Example:\n"
      "  sdfarm-mkmodel --config ../shared/models/configs/sd15 --tokenizer ../shared/models/tiny-sd/tokenizer \\\n"
      "                 --out models/sd15-random --dtype fp16\n"
      "  sdfarm-mkmodel --config ../shared/models/configs/sdxl --tokenizer ../shared/models/tiny-sdxl/tokenizer \\\n"
      "                 --tokenizer-2 ../shared/models/tiny-sdxl/tokenizer_2 --out models/sdxl-random --dtype fp16\n"
      "  sdfarm-mkmodel --config ../shared/models/configs/sdxl --count-only\n");
  if (auto s = flags.Parse(argc, argv); !s.ok()) return Fail(s, 2);
  if (flags.help_requested()) {
    std::cout << flags.Usage();
    return 0;
  }
  const bool count_only = flags.GetBool("count-only");
  if (!flags.Has("config") || (!flags.Has("out") && !count_only)) {
    return Fail(engine::InvalidArgumentError("--config DIR and --out DIR are required (see --help)"), 2);
  }
  const std::string config = flags.Get("config");
  const bool sdxl = fs::is_regular_file(config + "/text_encoder_2/config.json");
  if (count_only) {
    struct Part {
      const char* name;
      int64_t count = 0;
    };
    std::vector<Part> parts = {{"unet"}, {"vae"}, {"text_encoder"}};
    if (sdxl) parts.push_back({"text_encoder_2"});
    for (Part& p : parts) {
      const std::string dir = config + "/" + p.name;
      const std::string part = p.name;
      Status s = part == "unet" ? WriteRandomModule<engine::UNet, engine::UNetConfig>(dir, "", "", 0, at::kFloat,
                                                                                      &p.count, true)
                 : part == "vae" ? WriteRandomModule<engine::Vae, engine::VaeConfig>(dir, "", "", 0, at::kFloat,
                                                                                   &p.count, true)
                                 : WriteRandomModule<engine::ClipTextModel, engine::ClipTextConfig>(
                                       dir, "", "", 0, at::kFloat, &p.count, true);
      if (!s.ok()) return Fail(s);
      std::printf("%s %lld\n", p.name, static_cast<long long>(p.count));
    }
    return 0;
  }
  const std::string out = flags.Get("out");
  uint64_t seed = 0;
  if (!ParseUint64(flags.Get("seed"), &seed)) {
    return Fail(engine::InvalidArgumentError("--seed must be a non-negative integer"), 2);
  }
  at::ScalarType dtype;
  const std::string d = flags.Get("dtype");
  if (d == "fp32") dtype = at::kFloat;
  else if (d == "fp16") dtype = at::kHalf;
  else if (d == "bf16") dtype = at::kBFloat16;
  else return Fail(engine::InvalidArgumentError("--dtype must be fp32, fp16 or bf16"), 2);

  const std::string tokenizer = flags.Has("tokenizer") ? flags.Get("tokenizer") : config + "/tokenizer";
  if (!fs::is_regular_file(tokenizer + "/vocab.json") || !fs::is_regular_file(tokenizer + "/merges.txt")) {
    return Fail(engine::InvalidArgumentError("no CLIP tokenizer (vocab.json, merges.txt) in " + tokenizer +
                                             ": pass --tokenizer DIR, e.g. an existing model's tokenizer/ folder"),
                2);
  }
  const std::string tokenizer_2 = flags.Has("tokenizer-2") ? flags.Get("tokenizer-2") : config + "/tokenizer_2";
  if (sdxl && (!fs::is_regular_file(tokenizer_2 + "/vocab.json") || !fs::is_regular_file(tokenizer_2 + "/merges.txt"))) {
    return Fail(engine::InvalidArgumentError("an SDXL config needs a second tokenizer: no vocab.json / merges.txt in " +
                                             tokenizer_2 + "; pass --tokenizer-2 DIR (e.g. tiny-sdxl/tokenizer_2, "
                                             "which pads with \"!\")"),
                2);
  }
  for (const char* f : {"/model_index.json", "/scheduler/scheduler_config.json"}) {
    if (!fs::is_regular_file(config + f)) return Fail(engine::NotFoundError("missing " + config + f), 2);
  }

  const auto start = std::chrono::steady_clock::now();
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec) return Fail(engine::UnavailableError("cannot create " + out + ": " + ec.message()));
  fs::copy_file(config + "/model_index.json", out + "/model_index.json", fs::copy_options::overwrite_existing, ec);
  if (ec) return Fail(engine::UnavailableError("cannot write " + out + "/model_index.json: " + ec.message()));
  if (auto s = CopyTree(config + "/scheduler", out + "/scheduler"); !s.ok()) return Fail(s);
  if (auto s = CopyTree(tokenizer, out + "/tokenizer"); !s.ok()) return Fail(s);
  if (sdxl) {
    if (auto s = CopyTree(tokenizer_2, out + "/tokenizer_2"); !s.ok()) return Fail(s);
  }

  int64_t n_text = 0, n_text_2 = 0, n_unet = 0, n_vae = 0;
  if (sdxl) {
    std::fprintf(stderr, "text encoder 2...\n");
    if (auto s = WriteRandomModule<engine::ClipTextModel, engine::ClipTextConfig>(
            config + "/text_encoder_2", out + "/text_encoder_2", "model.safetensors", seed + 3, dtype, &n_text_2);
        !s.ok()) {
      return Fail(s);
    }
  }
  std::fprintf(stderr, "text encoder...\n");
  if (auto s = WriteRandomModule<engine::ClipTextModel, engine::ClipTextConfig>(
          config + "/text_encoder", out + "/text_encoder", "model.safetensors", seed, dtype, &n_text);
      !s.ok()) {
    return Fail(s);
  }
  std::fprintf(stderr, "unet...\n");
  if (auto s = WriteRandomModule<engine::UNet, engine::UNetConfig>(config + "/unet", out + "/unet",
                                                                   "diffusion_pytorch_model.safetensors", seed + 1,
                                                                   dtype, &n_unet);
      !s.ok()) {
    return Fail(s);
  }
  std::fprintf(stderr, "vae...\n");
  if (auto s = WriteRandomModule<engine::Vae, engine::VaeConfig>(config + "/vae", out + "/vae",
                                                                 "diffusion_pytorch_model.safetensors", seed + 2,
                                                                 dtype, &n_vae);
      !s.ok()) {
    return Fail(s);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("wrote %s: unet %lld, vae %lld, text encoder %lld%s parameters (%s) in %.1f s; weights are random\n",
              out.c_str(), static_cast<long long>(n_unet), static_cast<long long>(n_vae),
              static_cast<long long>(n_text),
              sdxl ? (", text encoder 2 " + std::to_string(n_text_2)).c_str() : "", d.c_str(), secs);
  return 0;
}

}  // namespace sdfarm::tools
