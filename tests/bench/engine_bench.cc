// Engine throughput benchmark. Prints JSON; never a pass/fail test.
//
//   sdfarm-engine-bench                       # default matrix (CPU): tiny-sd and an SD 1.5-shaped
//                                             # random model at 256x256, batch 1 and 4
//   sdfarm-engine-bench --model DIR --width 512 --height 512 --batch 8 --device cuda --dtype fp16
//   sdfarm-engine-bench --cpu-default          # the bundled sdfarm-mini at sdfarm-render's defaults
//                                             # (size, sampler, steps, guidance, threads): is it < 10 s?
//   sdfarm-engine-bench --model DIR --attention-slice-mb 0   # CPU attention unsliced (the old path)
//
// Each configuration runs in its own process so that peak RSS is that
// configuration's alone. Reported per configuration: model load time, median
// seconds per denoising step, images per second over whole renders (text
// encoding, all steps and VAE decoding), peak RSS, and the GPU-free facts
// needed to compare runs (threads, LibTorch version, fused attention).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <sys/resource.h>
#include <torch/version.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "worker/engine/engine.h"
#include "worker/engine/layers.h"
#include "worker/tools/cli_flags.h"
#include "worker/tools/mkmodel_command.h"
#include "worker/tools/render_command.h"

namespace {

namespace fs = std::filesystem;
using sdfarm::engine::Engine;
using sdfarm::tools::CliFlags;

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double PeakRssMb() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;  // KiB on Linux
}

// The GPU's name as nvidia-smi reports it; "" on machines without one. (Read
// through the driver's tool so this file needs no CUDA headers.)
std::string GpuName() {
  FILE* p = popen("nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1", "r");
  if (p == nullptr) return "";
  char buf[256] = {0};
  std::string name = fgets(buf, sizeof(buf), p) ? buf : "";
  pclose(p);
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  return name;
}

int RunOne(const CliFlags& f) {
  sdfarm::engine::EngineOptions opts;
  opts.device = f.Get("device");
  opts.dtype = f.Get("dtype");
  opts.threads = std::stoi(f.Get("threads"));
  if (f.Has("attention-slice-mb")) {
    sdfarm::engine::SetCpuAttentionSliceBytes(static_cast<int64_t>(std::stod(f.Get("attention-slice-mb")) * (1 << 20)));
  }
  auto engine = Engine::Load(f.Get("model"), opts);
  if (!engine.ok()) {
    std::fprintf(stderr, "engine-bench: %s\n", engine.status().ToString().c_str());
    return 1;
  }
  const int batch = std::stoi(f.Get("batch"));
  const int repeats = std::stoi(f.Get("repeats"));
  sdfarm::engine::RenderRequest req;
  req.width = std::stoi(f.Get("width"));
  req.height = std::stoi(f.Get("height"));
  req.steps = std::stoi(f.Get("steps"));
  req.sampler = f.Get("sampler");
  for (int i = 0; i < batch; ++i) {
    req.items.push_back({"a photograph of an astronaut riding a horse", "", static_cast<uint64_t>(i),
                         std::stod(f.Get("guidance"))});
  }
  // One short warm-up render: first-call allocations and kernel selection.
  {
    auto warm = req;
    warm.steps = 1;
    auto r = (*engine)->Render(warm);
    if (!r.ok()) {
      std::fprintf(stderr, "engine-bench: %s\n", r.status().ToString().c_str());
      return 1;
    }
  }
  std::vector<double> step_seconds, render_seconds, decode_seconds, text_seconds;
  for (int rep = 0; rep < repeats; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    auto r = (*engine)->Render(req, [&](const sdfarm::engine::StepInfo& s) {
      step_seconds.push_back(s.step_seconds);
      return true;
    });
    if (!r.ok()) {
      std::fprintf(stderr, "engine-bench: %s\n", r.status().ToString().c_str());
      return 1;
    }
    render_seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    decode_seconds.push_back(r->decode_seconds);
    text_seconds.push_back(r->text_seconds);
  }
  const auto& info = (*engine)->info();
  nlohmann::json out = {
      {"model", info.name},
      {"device", info.device},
      {"dtype", info.dtype},
      {"width", req.width == 0 ? info.default_width : req.width},
      {"height", req.height == 0 ? info.default_height : req.height},
      {"batch", batch},
      {"steps", req.steps},
      {"guidance", req.items[0].guidance_scale},
      {"sampler", req.sampler.empty() ? info.default_sampler : req.sampler},
      {"repeats", repeats},
      {"load_seconds", info.load_seconds},
      {"seconds_per_step_median", Median(step_seconds)},
      {"render_seconds_median", Median(render_seconds)},
      {"text_seconds_median", Median(text_seconds)},
      {"decode_seconds_median", Median(decode_seconds)},
      {"images_per_second", batch / Median(render_seconds)},
      {"peak_rss_mb", PeakRssMb()},
      {"attention_slice_mb", f.Has("attention-slice-mb") ? std::stod(f.Get("attention-slice-mb"))
                                                          : sdfarm::engine::kCpuAttentionSliceBytes / double(1 << 20)},
      {"threads", at::get_num_threads()},
      {"libtorch", TORCH_VERSION},
      {"fused_attention", sdfarm::engine::UsesFusedAttention()},
  };
  if (info.device.rfind("cuda", 0) == 0) out["gpu"] = GpuName();
  std::cout << out.dump() << std::endl;
  return 0;
}

// Runs `cmd` (this binary in single-configuration mode) and parses its JSON.
nlohmann::json RunChild(const std::string& cmd) {
  std::fprintf(stderr, "engine-bench: %s\n", cmd.c_str());
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return nlohmann::json();
  std::string output;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof(buf), p)) output.append(buf, n);
  if (pclose(p) != 0) {
    std::fprintf(stderr, "engine-bench: configuration failed\n");
    return nlohmann::json();
  }
  auto j = nlohmann::json::parse(output, nullptr, false);
  return j.is_discarded() ? nlohmann::json() : j;
}

// What a new user gets from `sdfarm-render --model <the bundled model>
// --prompt ...` on a CPU: sdfarm-mini (random weights from its configs, as
// scripts/demo makes it) at sdfarm-render's defaults: the model's size
// (sample_size x 8), the default sampler, steps and guidance, and the default
// threads (OMP_NUM_THREADS if set, else one per core). Each render is timed
// whole (text encoding, every step, VAE decoding); the model is loaded once,
// as sdfarm-render does for all its images.
int RunCpuDefault(const CliFlags& f, const char* self) {
  const std::string model = f.Get("cache") + "/sdfarm-mini";
  if (!fs::exists(model + "/unet/diffusion_pytorch_model.safetensors")) {
    std::fprintf(stderr, "engine-bench: creating sdfarm-mini (random weights) in %s (once)...\n", model.c_str());
    std::vector<std::string> args = {"sdfarm-mkmodel", "--config", std::string(SDFARM_SOURCE_DIR) + "/deploy/models/sdfarm-mini",
                                     "--out", model, "--seed", "1"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    if (sdfarm::tools::RunMkModel(static_cast<int>(argv.size()), argv.data()) != 0) return 1;
  }
  const std::string repeats = f.Has("repeats") ? f.Get("repeats") : "5";
  std::string cmd = std::string(self) + " --model '" + model + "' --width 0 --height 0 --batch 1 --steps " +
                    std::to_string(sdfarm::tools::kRenderDefaultSteps) + " --sampler " +
                    sdfarm::tools::kRenderDefaultSampler + " --guidance " +
                    sdfarm::engine::FormatNumber(sdfarm::tools::kRenderDefaultGuidance) + " --repeats " + repeats +
                    " --threads 0";
  nlohmann::json j = RunChild(cmd);
  if (j.is_null()) return 1;
  const double median = j["render_seconds_median"].get<double>();
  nlohmann::json out = {{"benchmark", "cpu_default"},
                        {"median_seconds", median},
                        {"load_seconds", j["load_seconds"]},
                        {"peak_rss_mb", j["peak_rss_mb"]},
                        {"under_10_seconds", median < 10.0},
                        {"details", j}};
  std::cout << out.dump(2) << std::endl;
  return 0;
}

int RunMatrix(const CliFlags& f, const char* self) {
  const std::string shared = f.Get("shared");
  const std::string cache = f.Get("cache");
  const std::string sd15 = cache + "/sd15-random-fp32";
  if (!fs::exists(sd15 + "/unet/diffusion_pytorch_model.safetensors")) {
    std::fprintf(stderr, "engine-bench: creating the SD 1.5-shaped random model in %s (once)...\n", sd15.c_str());
    std::string config = shared + "/models/configs/sd15", tok = shared + "/models/tiny-sd/tokenizer";
    std::vector<std::string> args = {"sdfarm-mkmodel", "--config", config, "--tokenizer", tok, "--out", sd15};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    if (sdfarm::tools::RunMkModel(static_cast<int>(argv.size()), argv.data()) != 0) return 1;
  }
  struct Config {
    std::string model;
    int size, batch, steps;
  };
  const int steps = std::stoi(f.Get("steps"));
  std::vector<Config> configs = {
      {shared + "/models/tiny-sd", 256, 1, steps}, {shared + "/models/tiny-sd", 256, 4, steps},
      {sd15, 256, 1, steps}, {sd15, 256, 4, steps},
  };
  nlohmann::json results = nlohmann::json::array();
  for (const auto& c : configs) {
    std::string cmd = std::string(self) + " --model '" + c.model + "' --width " + std::to_string(c.size) +
                      " --height " + std::to_string(c.size) + " --batch " + std::to_string(c.batch) + " --steps " +
                      std::to_string(c.steps) + " --repeats " + f.Get("repeats") + " --threads " + f.Get("threads");
    nlohmann::json j = RunChild(cmd);
    if (j.is_null()) return 1;
    std::cerr << j.dump() << std::endl;
    results.push_back(j);
  }
  std::cout << nlohmann::json({{"benchmark", "engine"}, {"results", results}}).dump(2) << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CliFlags f("sdfarm-engine-bench", "Measures engine throughput; prints JSON.");
  f.Add("model", "DIR", "run one configuration on this model (else the default matrix)");
  f.Add("width", "PX", "", "256");
  f.Add("height", "PX", "", "256");
  f.Add("batch", "N", "", "1");
  f.Add("steps", "N", "denoising steps per render", "4");
  f.Add("repeats", "N", "renders measured (after one warm-up; --cpu-default: 5)", "2");
  f.Add("guidance", "G", "> 1 means classifier-free guidance (two UNet branches)", "7.5");
  f.Add("sampler", "NAME", "", "euler");
  f.Add("device", "DEV", "", "cpu");
  f.Add("dtype", "TYPE", "");
  f.Add("threads", "N", "0: one per core", "0");
  f.Add("attention-slice-mb", "MB", "CPU attention slice bound (0: never slice; default: the engine's)");
  f.AddBool("cpu-default", "sdfarm-mini at sdfarm-render's defaults on the CPU: median seconds, peak RSS, < 10 s?");
  f.Add("shared", "DIR", "fixtures folder (matrix mode)", SDFARM_SHARED_DIR);
  f.Add("cache", "DIR", "where the random SD 1.5-shaped model is kept (matrix mode)", SDFARM_BENCH_CACHE);
  if (auto s = f.Parse(argc, argv); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.message().c_str());
    return 2;
  }
  if (f.help_requested()) {
    std::cout << f.Usage();
    return 0;
  }
  if (f.Has("model")) return RunOne(f);
  // Re-run this binary per configuration (popen goes through sh, so /proc/self/exe would be sh).
  std::error_code ec;
  const std::string self = fs::read_symlink("/proc/self/exe", ec).string();
  if (f.GetBool("cpu-default")) return RunCpuDefault(f, ec ? argv[0] : self.c_str());
  return RunMatrix(f, ec ? argv[0] : self.c_str());
}
