// The schedulers reproduce diffusers 0.21.4 to 1e-5 relative error: every
// golden scheduler run (timesteps, sigmas, init_noise_sigma, every model
// input and sample), the training noise schedule, and the scheduler part of
// every golden pipeline run (txt2img, img2img add_noise and the shortened
// timestep list, generator lists), replayed from the recorded model outputs.
#include "worker/engine/scheduler.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "tests/engine/golden.h"
#include "worker/engine/scheduler_config.h"

namespace sdfarm::engine {
namespace {

using ::sdfarm::testing::GoldenPath;
using ::sdfarm::testing::LoadGolden;
using ::sdfarm::testing::LoadGoldenMetadata;
using ::sdfarm::testing::MaxRelDiff;
using ::sdfarm::testing::ModelPath;
using Json = nlohmann::json;

constexpr double kTolerance = 1e-5;

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// The golden files were made with `<Class>.from_config(<model>/scheduler/
// scheduler_config.json, **overrides)`; merge the overrides into the file.
StatusOr<SchedulerConfig> ConfigFor(const std::string& base_config, const Json& overrides) {
  Json j = Json::parse(ReadText(ModelPath(base_config)), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgumentError("cannot parse " + base_config);
  for (const auto& [key, value] : overrides.items()) j[key] = value;
  return SchedulerConfig::FromJson(j.dump());
}

StatusOr<Sampler> SamplerForClass(const std::string& cls, const Json& overrides) {
  const bool karras = overrides.value("use_karras_sigmas", false);
  if (cls == "PNDMScheduler") return Sampler::kPndm;
  if (cls == "DDIMScheduler") return Sampler::kDdim;
  if (cls == "DDPMScheduler") return Sampler::kDdpm;
  if (cls == "EulerDiscreteScheduler") return Sampler::kEuler;
  if (cls == "EulerAncestralDiscreteScheduler") return Sampler::kEulerAncestral;
  if (cls == "LMSDiscreteScheduler") return Sampler::kLms;
  if (cls == "DPMSolverMultistepScheduler") return karras ? Sampler::kDpmpp2mKarras : Sampler::kDpmpp2m;
  return InvalidArgumentError("no sampler for scheduler class " + cls);
}

at::Generator CpuGenerator(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

// torch.randn(shape, generator=g) for one generator, or diffusers'
// randn_tensor with a generator list: one (1, ...) draw per image.
NoiseFn NoiseFrom(std::vector<at::Generator>* gens) {
  return [gens](at::IntArrayRef shape) {
    if (gens->size() == 1) return at::randn(shape, (*gens)[0], at::kFloat);
    std::vector<int64_t> one(shape.begin(), shape.end());
    one[0] = 1;
    std::vector<at::Tensor> parts;
    for (at::Generator& g : *gens) parts.push_back(at::randn(one, g, at::kFloat));
    return at::cat(parts, 0);
  };
}

std::vector<std::string> SchedulerGoldenCases() {
  std::vector<std::string> names;
  const std::filesystem::path dir = GoldenPath("schedulers");
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string file = entry.path().filename().string();
    if (entry.path().extension() != ".safetensors" || file == "sd_betas.safetensors") continue;
    names.push_back(entry.path().stem().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

struct CaseResult {
  Sampler sampler = Sampler::kPndm;
  std::string prediction_type;
  double max_rel = 0;
};

void Track(double* worst, double err, const std::string& what) {
  *worst = std::max(*worst, err);
  EXPECT_LE(err, kTolerance) << what;
}

// Runs the README's fake-model loop and compares everything it recorded.
void RunSchedulerCase(const std::string& name, CaseResult* result) {
  const std::string rel = "schedulers/" + name + ".safetensors";
  std::map<std::string, at::Tensor> g = LoadGolden(rel);
  std::map<std::string, std::string> md = LoadGoldenMetadata(rel);
  ASSERT_FALSE(g.empty());
  for (const char* key : {"scheduler_class", "overrides", "base_config", "num_inference_steps", "sample_seed",
                          "noise_seed", "shape", "generator_passed_to_step"}) {
    ASSERT_TRUE(md.count(key)) << "metadata lacks " << key;
  }
  const Json overrides = Json::parse(md["overrides"]);
  const std::vector<int64_t> shape = Json::parse(md["shape"]).get<std::vector<int64_t>>();
  const int steps = std::stoi(md["num_inference_steps"]);
  const bool generator_passed = md["generator_passed_to_step"] == "true";

  ASSERT_OK_AND_ASSIGN(const Sampler sampler, SamplerForClass(md["scheduler_class"], overrides));
  ASSERT_OK_AND_ASSIGN(const SchedulerConfig config, ConfigFor(md["base_config"], overrides));
  result->sampler = sampler;
  result->prediction_type = config.prediction_type;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Scheduler> s, MakeScheduler(sampler, config));
  ASSERT_OK(s->SetTimesteps(steps));

  double worst = 0;
  // Timesteps: same dtype and (integer or float32) values.
  const at::Tensor& ts = s->timesteps();
  ASSERT_EQ(ts.scalar_type(), g["timesteps"].scalar_type());
  ASSERT_EQ(ts.sizes(), g["timesteps"].sizes());
  Track(&worst, MaxRelDiff(ts, g["timesteps"]), "timesteps");
  if (g.count("sigmas")) {
    ASSERT_TRUE(s->sigmas().defined());
    Track(&worst, MaxRelDiff(s->sigmas(), g["sigmas"]), "sigmas");
  }
  Track(&worst, MaxRelDiff(at::tensor({s->init_noise_sigma()}, at::kDouble), g["init_noise_sigma"]),
        "init_noise_sigma");

  // The generator reproduces torch.Generator("cpu").manual_seed(seed).
  at::Tensor x0 = at::randn(shape, CpuGenerator(std::stoull(md["sample_seed"])), at::kFloat);
  ASSERT_TRUE(at::equal(x0, g["x0"])) << "at::randn with a seeded CPUGeneratorImpl differs from torch's draws";

  std::vector<at::Generator> noise_gen = {CpuGenerator(std::stoull(md["noise_seed"]))};
  const NoiseFn noise = generator_passed ? NoiseFrom(&noise_gen) : NoiseFn();

  at::Tensor sample = x0 * s->init_noise_sigma();
  Track(&worst, MaxRelDiff(sample, g["samples"][0]), "samples[0]");
  for (int64_t i = 0; i < ts.numel(); ++i) {
    SCOPED_TRACE("step " + std::to_string(i));
    const at::Tensor x_in = s->ScaleModelInput(sample, i);
    Track(&worst, MaxRelDiff(x_in, g["model_inputs"][i]), "model_inputs");
    const double t = ts[i].item<double>();
    const at::Tensor model_output = x_in * 0.1 + 0.05 * t / 1000.0;
    Track(&worst, MaxRelDiff(model_output, g["model_outputs"][i]), "model_outputs");
    sample = s->Step(model_output, i, sample, noise);
    ASSERT_EQ(sample.scalar_type(), at::kFloat);
    Track(&worst, MaxRelDiff(sample, g["samples"][i + 1]), "samples[i + 1]");
  }
  Track(&worst, MaxRelDiff(sample, g["final"]), "final");
  result->max_rel = worst;
}

TEST(SchedulerGolden, EveryCaseMatchesDiffusers) {
  const std::vector<std::string> cases = SchedulerGoldenCases();
  ASSERT_FALSE(cases.empty()) << "no scheduler golden files under " << GoldenPath("schedulers");
  std::set<Sampler> covered;
  bool v_prediction_covered = false;
  for (const std::string& name : cases) {
    SCOPED_TRACE(name);
    CaseResult result;
    RunSchedulerCase(name, &result);
    covered.insert(result.sampler);
    v_prediction_covered |= result.prediction_type == "v_prediction";
    std::cout << "[ scheduler golden ] " << name << ": max relative error " << result.max_rel << "\n";
  }
  // A missing fixture must fail, not shrink the test.
  for (Sampler sampler : AllSamplers()) {
    EXPECT_TRUE(covered.count(sampler)) << "no golden case for " << SamplerName(sampler);
  }
  EXPECT_TRUE(v_prediction_covered) << "no v_prediction golden case";
}

TEST(SchedulerGolden, TrainingScheduleMatchesSdBetas) {
  std::map<std::string, at::Tensor> g = LoadGolden("schedulers/sd_betas.safetensors");
  ASSERT_TRUE(g.count("betas") && g.count("alphas_cumprod"));
  ASSERT_OK_AND_ASSIGN(SchedulerConfig config,
                       SchedulerConfig::FromFile(ModelPath("tiny-sd/scheduler/scheduler_config.json")));
  for (Sampler sampler : AllSamplers()) {
    SCOPED_TRACE(SamplerName(sampler));
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Scheduler> s, MakeScheduler(sampler, config));
    EXPECT_LE(MaxRelDiff(s->betas(), g["betas"]), 1e-7);
    EXPECT_LE(MaxRelDiff(s->alphas_cumprod(), g["alphas_cumprod"]), 1e-7);
  }
}

// The "scheduler" metadata of a pipeline case: the class used, or the model's own.
StatusOr<Sampler> PipelineSampler(const Json& c) {
  if (!c["scheduler"].is_null()) return ParseSampler(c["scheduler"].get<std::string>());
  return c["model"] == "tiny-sd-v2" ? Sampler::kDdim : Sampler::kPndm;
}

// Replays the scheduler calls of each golden pipeline run from its recorded
// model outputs: txt2img from latents_init, img2img from the add_noise
// output at diffusers' first index, with the run's generator(s) advanced past
// the pipeline's own draws so that ancestral noise lines up.
TEST(SchedulerGolden, ReplaysEveryPipelineRun) {
  std::vector<std::string> cases;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(GoldenPath("pipelines"), ec)) {
    if (entry.path().extension() == ".safetensors") cases.push_back(entry.path().stem().string());
  }
  std::sort(cases.begin(), cases.end());
  ASSERT_FALSE(cases.empty());
  bool img2img_covered = false;
  for (const std::string& name : cases) {
    SCOPED_TRACE(name);
    const std::string rel = "pipelines/" + name + ".safetensors";
    std::map<std::string, at::Tensor> g = LoadGolden(rel);
    std::map<std::string, std::string> md = LoadGoldenMetadata(rel);
    const Json c = Json::parse(md["case"]);
    const Json& kwargs = c["kwargs"];
    const int steps = kwargs["num_inference_steps"].get<int>();

    ASSERT_OK_AND_ASSIGN(const Sampler sampler, PipelineSampler(c));
    ASSERT_OK_AND_ASSIGN(SchedulerConfig config,
                         SchedulerConfig::FromFile(ModelPath(c["model"].get<std::string>() +
                                                             "/scheduler/scheduler_config.json")));
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Scheduler> s, MakeScheduler(sampler, config));
    ASSERT_OK(s->SetTimesteps(steps));
    EXPECT_TRUE(at::equal(s->timesteps().to(at::kDouble), g["scheduler_timesteps"].to(at::kDouble)));
    EXPECT_NEAR(s->init_noise_sigma(), std::stod(md["init_noise_sigma"]), 1e-6);

    // Generators as the pipeline left them before its denoising loop.
    std::vector<at::Generator> gens;
    if (c.contains("seeds")) {
      for (uint64_t seed : c["seeds"].get<std::vector<uint64_t>>()) gens.push_back(CpuGenerator(seed));
    } else {
      gens.push_back(CpuGenerator(c["seed"].get<uint64_t>()));
    }
    const NoiseFn noise = NoiseFrom(&gens);
    const bool img2img = g.count("add_noise_out") > 0;
    int64_t first = 0;
    at::Tensor latents;
    if (img2img) {
      img2img_covered = true;
      // diffusers' get_timesteps.
      const double strength = kwargs["strength"].get<double>();
      const int init_timestep = std::min(static_cast<int>(steps * strength), steps);
      first = static_cast<int64_t>(std::max(steps - init_timestep, 0)) * s->order();
      EXPECT_EQ(s->timesteps()[first].item<double>(), g["add_noise_timesteps"][0].item<double>());
      // Generator draws: the VAE posterior sample of the one input image, then the noise.
      std::vector<int64_t> one_image = g["add_noise_noise"].sizes().vec();
      one_image[0] = 1;
      (void)noise(one_image);
      EXPECT_TRUE(at::equal(noise(g["add_noise_noise"].sizes()), g["add_noise_noise"])) << "the pipeline's noise draw";
      latents = s->AddNoise(g["add_noise_original"], g["add_noise_noise"], first);
      EXPECT_LE(MaxRelDiff(latents, g["add_noise_out"]), kTolerance);
      EXPECT_LE(MaxRelDiff(latents, g["latents_init"]), kTolerance);
    } else {
      const at::Tensor& init = g.count("noise_init") ? g["noise_init"] : g["prepare_latents_noise"];
      EXPECT_TRUE(at::equal(noise(init.sizes()), init)) << "the pipeline's first draw";
      if (g.count("masked_image_latents")) {  // inpaint: then the masked image's VAE sample
        std::vector<int64_t> one_image = init.sizes().vec();
        one_image[0] = 1;
        (void)noise(one_image);
      }
      latents = g["latents_init"];
      EXPECT_LE(MaxRelDiff(init * s->init_noise_sigma(), latents), kTolerance);
    }

    const int64_t calls = g["timesteps"].size(0);
    ASSERT_EQ(first + calls, s->num_timesteps());
    double worst = 0;
    for (int64_t k = 0; k < calls; ++k) {
      const int64_t i = first + k;
      EXPECT_EQ(s->timesteps()[i].item<double>(), g["timesteps"][k].item<double>());
      latents = s->Step(g["step_model_output"][k], i, latents, noise);
      worst = std::max(worst, MaxRelDiff(latents, g["step_latents"][k]));
    }
    EXPECT_LE(worst, kTolerance);
    std::cout << "[ pipeline replay  ] " << name << " (" << SamplerName(sampler) << "): max relative error "
              << worst << "\n";
  }
  EXPECT_TRUE(img2img_covered);
}

TEST(SchedulerSampler, NamesRoundTrip) {
  ASSERT_EQ(AllSamplers().size(), 8u);
  for (Sampler sampler : AllSamplers()) {
    ASSERT_OK_AND_ASSIGN(Sampler parsed, ParseSampler(SamplerName(sampler)));
    EXPECT_EQ(parsed, sampler);
    EXPECT_FALSE(SamplerDisplayName(sampler).empty());
  }
  EXPECT_EQ(SamplerName(Sampler::kEulerAncestral), "euler_a");
  EXPECT_EQ(SamplerDisplayName(Sampler::kEulerAncestral), "Euler a");
  // A1111 v1.9+ names the schedule apart: "DPM++ 2M" + "Schedule type: Karras".
  EXPECT_EQ(SamplerDisplayName(Sampler::kDpmpp2mKarras), "DPM++ 2M");
  EXPECT_EQ(A1111Name(Sampler::kDpmpp2mKarras).schedule_type, "Karras");
  EXPECT_EQ(SamplerDisplayName(Sampler::kPndm), "PLMS");
}

TEST(SchedulerSampler, UnknownNameListsTheValidOnes) {
  StatusOr<Sampler> s = ParseSampler("k_euler");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("k_euler"), std::string::npos);
  for (Sampler sampler : AllSamplers()) {
    EXPECT_NE(s.status().message().find(SamplerName(sampler)), std::string::npos) << SamplerName(sampler);
  }
  EXPECT_FALSE(ParseSampler("").ok());
  EXPECT_FALSE(ParseSampler("Euler").ok());
}

TEST(SchedulerConfigParsing, ReadsTheSdFilesWithClassDefaultsLeftOpen) {
  ASSERT_OK_AND_ASSIGN(SchedulerConfig c,
                       SchedulerConfig::FromFile(ModelPath("tiny-sd/scheduler/scheduler_config.json")));
  EXPECT_EQ(c.class_name, "PNDMScheduler");
  EXPECT_EQ(c.beta_schedule, "scaled_linear");
  EXPECT_DOUBLE_EQ(c.beta_start, 0.00085);
  EXPECT_DOUBLE_EQ(c.beta_end, 0.012);
  EXPECT_EQ(c.steps_offset, 1);
  EXPECT_TRUE(c.skip_prk_steps);
  EXPECT_EQ(c.set_alpha_to_one, std::optional<bool>(false));
  EXPECT_FALSE(c.trained_betas.has_value());
  EXPECT_FALSE(c.timestep_spacing.has_value());  // each class picks its own
  EXPECT_EQ(c.prediction_type, "epsilon");

  ASSERT_OK_AND_ASSIGN(SchedulerConfig v2,
                       SchedulerConfig::FromFile(ModelPath("tiny-sd-v2/scheduler/scheduler_config.json")));
  EXPECT_EQ(v2.prediction_type, "v_prediction");
}

TEST(SchedulerConfigParsing, RejectsUnknownValuesClearly) {
  StatusOr<SchedulerConfig> bad_schedule = SchedulerConfig::FromJson(R"({"beta_schedule": "cubic"})");
  ASSERT_FALSE(bad_schedule.ok());
  EXPECT_EQ(bad_schedule.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad_schedule.status().message().find("cubic"), std::string::npos);
  EXPECT_NE(bad_schedule.status().message().find("scaled_linear"), std::string::npos);

  StatusOr<SchedulerConfig> bad_prediction = SchedulerConfig::FromJson(R"({"prediction_type": "noise"})");
  ASSERT_FALSE(bad_prediction.ok());
  EXPECT_EQ(bad_prediction.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad_prediction.status().message().find("v_prediction"), std::string::npos);

  EXPECT_FALSE(SchedulerConfig::FromJson(R"({"timestep_spacing": "uniform"})").ok());
  EXPECT_FALSE(SchedulerConfig::FromJson(R"({"num_train_timesteps": "1000"})").ok());
  EXPECT_FALSE(SchedulerConfig::FromJson(R"({"steps_offset": 1.5})").ok());
  EXPECT_FALSE(SchedulerConfig::FromJson(R"({"trained_betas": [0.1, 0.2]})").ok());  // not 1000 of them
  EXPECT_FALSE(SchedulerConfig::FromJson("{not json").ok());
  EXPECT_FALSE(SchedulerConfig::FromJson("[]").ok());
  EXPECT_EQ(SchedulerConfig::FromFile("/nonexistent/scheduler_config.json").status().code(), StatusCode::kNotFound);
  // Unknown keys are ignored, as from_config does; null means "class default".
  EXPECT_OK(SchedulerConfig::FromJson(R"({"some_future_key": 3, "timestep_spacing": null})").status());
}

TEST(SchedulerFactory, RejectsWhatDiffusersDoesNotSupport) {
  ASSERT_OK_AND_ASSIGN(SchedulerConfig c, SchedulerConfig::FromJson(R"({"prediction_type": "sample"})"));
  EXPECT_EQ(MakeScheduler(Sampler::kEulerAncestral, c).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeScheduler(Sampler::kPndm, c).status().code(), StatusCode::kInvalidArgument);
  EXPECT_OK(MakeScheduler(Sampler::kDdim, c).status());
  ASSERT_OK_AND_ASSIGN(SchedulerConfig sigmoid, SchedulerConfig::FromJson(R"({"beta_schedule": "sigmoid"})"));
  EXPECT_OK(MakeScheduler(Sampler::kDdpm, sigmoid).status());
  EXPECT_EQ(MakeScheduler(Sampler::kEuler, sigmoid).status().code(), StatusCode::kInvalidArgument);
}

TEST(SchedulerSteps, RejectsBadStepCountsAndIndices) {
  ASSERT_OK_AND_ASSIGN(SchedulerConfig config,
                       SchedulerConfig::FromFile(ModelPath("tiny-sd/scheduler/scheduler_config.json")));
  for (Sampler sampler : AllSamplers()) {
    SCOPED_TRACE(SamplerName(sampler));
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Scheduler> s, MakeScheduler(sampler, config));
    at::Tensor x = at::zeros({1, 4, 2, 2});
    EXPECT_THROW(s->Step(x, 0, x, NoiseFn()), std::exception);  // SetTimesteps not called
    EXPECT_FALSE(s->SetTimesteps(0).ok());
    EXPECT_FALSE(s->SetTimesteps(1001).ok());
    ASSERT_OK(s->SetTimesteps(4));
    EXPECT_THROW(s->ScaleModelInput(x, s->num_timesteps()), std::exception);
    EXPECT_THROW(s->AddNoise(x, x, -1), std::exception);
  }
}

// Every scheduler runs a whole schedule from half-precision model outputs and
// hands back float32, and the stochastic ones fail loudly without a NoiseFn.
TEST(SchedulerSteps, AcceptsHalfModelOutputsAndReturnsFloat) {
  ASSERT_OK_AND_ASSIGN(SchedulerConfig config,
                       SchedulerConfig::FromFile(ModelPath("tiny-sd/scheduler/scheduler_config.json")));
  for (Sampler sampler : AllSamplers()) {
    SCOPED_TRACE(SamplerName(sampler));
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Scheduler> s, MakeScheduler(sampler, config));
    ASSERT_OK(s->SetTimesteps(7));
    std::vector<at::Generator> gens = {CpuGenerator(3)};
    const NoiseFn noise = NoiseFrom(&gens);
    at::Tensor x = at::randn({2, 4, 3, 5}, gens[0]) * s->init_noise_sigma();
    for (int64_t i = 0; i < s->num_timesteps(); ++i) {
      const at::Tensor out = (s->ScaleModelInput(x, i) * 0.1).to(at::kHalf);
      x = s->Step(out, i, x, noise);
      ASSERT_EQ(x.scalar_type(), at::kFloat);
    }
    EXPECT_TRUE(at::isfinite(x).all().item<bool>());
    if (sampler == Sampler::kEulerAncestral || sampler == Sampler::kDdpm) {
      ASSERT_OK(s->SetTimesteps(7));
      EXPECT_THROW(s->Step(x, 0, x, NoiseFn()), std::exception);
    }
  }
}

// Settings the golden files do not reach (spacings, step counts, PRK warm-up,
// Karras sigmas for Euler/LMS, every prediction type) still give a schedule
// that runs to the end with finite values.
TEST(SchedulerSteps, EveryConfigurationRunsToTheEnd) {
  for (const char* spacing : {"linspace", "leading", "trailing"}) {
    for (const char* prediction : {"epsilon", "v_prediction", "sample"}) {
      for (bool karras : {false, true}) {
        Json j = Json::parse(ReadText(ModelPath("tiny-sd/scheduler/scheduler_config.json")));
        j["timestep_spacing"] = spacing;
        j["prediction_type"] = prediction;
        j["use_karras_sigmas"] = karras;
        j["skip_prk_steps"] = !karras;  // PNDM's Runge-Kutta warm-up too
        ASSERT_OK_AND_ASSIGN(SchedulerConfig config, SchedulerConfig::FromJson(j.dump()));
        for (Sampler sampler : AllSamplers()) {
          StatusOr<std::unique_ptr<Scheduler>> made = MakeScheduler(sampler, config);
          if (!made.ok()) {  // pndm and euler_a have no "sample" prediction, as in diffusers
            EXPECT_EQ(std::string(prediction), "sample");
            continue;
          }
          Scheduler& s = **made;
          for (int steps : {1, 4, 7, 50}) {
            SCOPED_TRACE(std::string(SamplerName(sampler)) + " " + spacing + " " + prediction +
                         (karras ? " karras " : " ") + std::to_string(steps) + " steps");
            if (sampler == Sampler::kPndm && !config.skip_prk_steps && steps < 4) {
              EXPECT_FALSE(s.SetTimesteps(steps).ok());
              continue;
            }
            ASSERT_OK(s.SetTimesteps(steps));
            ASSERT_GT(s.num_timesteps(), 0);
            std::vector<at::Generator> gens = {CpuGenerator(11)};
            const NoiseFn noise = NoiseFrom(&gens);
            at::Tensor x = at::randn({1, 4, 4, 4}, gens[0]) * s.init_noise_sigma();
            for (int64_t i = 0; i < s.num_timesteps(); ++i) {
              x = s.Step(s.ScaleModelInput(x, i) * 0.1, i, x, noise);
            }
            EXPECT_TRUE(at::isfinite(x).all().item<bool>());
          }
        }
      }
    }
  }
}

TEST(SchedulerSteps, KarrasSigmasForEulerAndLms) {
  ASSERT_OK_AND_ASSIGN(SchedulerConfig config,
                       SchedulerConfig::FromFile(ModelPath("tiny-sd/scheduler/scheduler_config.json")));
  config.use_karras_sigmas = true;
  for (Sampler sampler : {Sampler::kEuler, Sampler::kLms}) {
    SCOPED_TRACE(SamplerName(sampler));
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Scheduler> s, MakeScheduler(sampler, config));
    ASSERT_OK(s->SetTimesteps(20));
    const at::Tensor sig = s->sigmas().to(at::kDouble);
    ASSERT_EQ(sig.numel(), 21);
    // From the largest to the smallest interpolated training sigma, then 0.
    EXPECT_NEAR(sig[0].item<double>(), 14.614645, 1e-5);
    EXPECT_NEAR(sig[19].item<double>(), 0.0291675, 1e-6);
    EXPECT_EQ(sig[20].item<double>(), 0.0);
    EXPECT_TRUE((sig.slice(0, 1) < sig.slice(0, 0, -1)).all().item<bool>());
    // Fractional timesteps, float64 as diffusers keeps them, from 999 down to 0.
    EXPECT_EQ(s->timesteps().scalar_type(), at::kDouble);
    EXPECT_NEAR(s->timesteps()[0].item<double>(), 999.0, 1e-6);
    EXPECT_NEAR(s->timesteps()[19].item<double>(), 0.0, 1e-6);
  }
}

// DPM-Solver drops the repeats that rounding the Karras timesteps creates.
TEST(SchedulerSteps, DpmSolverKarrasDropsRepeatedTimesteps) {
  ASSERT_OK_AND_ASSIGN(SchedulerConfig config,
                       SchedulerConfig::FromFile(ModelPath("tiny-sd/scheduler/scheduler_config.json")));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Scheduler> s, MakeScheduler(Sampler::kDpmpp2mKarras, config));
  ASSERT_OK(s->SetTimesteps(200));
  const at::Tensor ts = s->timesteps();
  EXPECT_LT(ts.numel(), 200);
  EXPECT_EQ(std::get<0>(at::_unique(ts)).numel(), ts.numel());
  EXPECT_TRUE((ts.slice(0, 1) < ts.slice(0, 0, -1)).all().item<bool>());
  EXPECT_EQ(s->sigmas().numel(), 200);
}

// add_noise for the sigma schedulers is x + sigma * noise at that step's sigma.
TEST(SchedulerSteps, SigmaSchedulersAddNoiseAtTheStepSigma) {
  ASSERT_OK_AND_ASSIGN(SchedulerConfig config,
                       SchedulerConfig::FromFile(ModelPath("tiny-sd/scheduler/scheduler_config.json")));
  for (Sampler sampler : {Sampler::kEuler, Sampler::kEulerAncestral, Sampler::kLms}) {
    SCOPED_TRACE(SamplerName(sampler));
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Scheduler> s, MakeScheduler(sampler, config));
    ASSERT_OK(s->SetTimesteps(10));
    const at::Tensor x = at::randn({2, 4, 8, 8});
    const at::Tensor n = at::randn({2, 4, 8, 8});
    const at::Tensor got = s->AddNoise(x, n, 4);
    EXPECT_LE(MaxRelDiff(got, x + n * s->sigmas()[4]), 1e-7);
  }
}

}  // namespace
}  // namespace sdfarm::engine
