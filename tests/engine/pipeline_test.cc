// End-to-end parity with diffusers: every golden pipeline case (txt2img,
// img2img, inpainting, CFG on and off, negative prompts, batches, several
// images per prompt, non-square sizes, SD 2.x v-prediction) rebuilt from the
// case description in the file's metadata and rendered by the engine:
// initial latents equal, final latents within 1e-3, pixels within 2/255.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "tests/engine/golden.h"
#include "worker/engine/engine.h"

namespace sdfarm::engine {
// single_file_test.cc: tiny-sd-vae-alt's weights written as an LDM VAE file.
std::string WriteLdmVaeForTest(const std::string& prefix);
namespace {

using ::sdfarm::testing::GoldenPath;
using ::sdfarm::testing::LoadGolden;
using ::sdfarm::testing::LoadGoldenMetadata;
using ::sdfarm::testing::MaxAbsDiff;
using ::sdfarm::testing::ModelPath;

std::vector<std::string> GoldenPipelineCases(const std::string& group = "pipelines") {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(std::string(SDFARM_SHARED_DIR) + "/golden/" + group, ec)) {
    if (e.path().extension() == ".safetensors") names.push_back(e.path().stem().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

Image ToImage(const at::Tensor& hwc_or_hw) {
  at::Tensor t = hwc_or_hw.dim() == 2 ? hwc_or_hw.unsqueeze(2) : hwc_or_hw;
  t = t.contiguous();
  Image img;
  img.height = static_cast<int>(t.size(0));
  img.width = static_cast<int>(t.size(1));
  img.channels = static_cast<int>(t.size(2));
  img.pixels.assign(t.data_ptr<uint8_t>(), t.data_ptr<uint8_t>() + t.numel());
  return img;
}

at::Tensor ImagesToTensor(const std::vector<Image>& images) {
  std::vector<at::Tensor> parts;
  for (const auto& img : images) {
    parts.push_back(at::from_blob(const_cast<uint8_t*>(img.pixels.data()), {img.height, img.width, img.channels},
                                  at::kByte).clone());
  }
  return at::stack(parts);
}

std::vector<std::string> StringOrList(const nlohmann::json& j) {
  if (j.is_array()) return j.get<std::vector<std::string>>();
  return {j.get<std::string>()};
}

// The engine request equivalent to the diffusers call the case describes.
RenderRequest RequestFromCase(const nlohmann::json& c, std::map<std::string, at::Tensor>& g) {
  const nlohmann::json& kw = c["kwargs"];
  RenderRequest req;
  std::vector<std::string> prompts = StringOrList(kw["prompt"]);
  std::vector<std::string> negatives(prompts.size());
  if (kw.contains("negative_prompt")) {
    negatives = StringOrList(kw["negative_prompt"]);
    if (negatives.size() == 1) negatives.resize(prompts.size(), negatives[0]);
  }
  const int nipp = kw.value("num_images_per_prompt", 1);
  const double gs = kw.value("guidance_scale", 7.5);
  for (size_t p = 0; p < prompts.size(); ++p) {
    for (int k = 0; k < nipp; ++k) req.items.push_back({prompts[p], negatives[p], 0, gs});
  }
  if (c.contains("seeds")) {
    auto seeds = c["seeds"].get<std::vector<uint64_t>>();
    for (size_t i = 0; i < req.items.size(); ++i) req.items[i].seed = seeds[i];
  } else if (req.items.size() == 1) {
    req.items[0].seed = c["seed"].get<uint64_t>();  // one image: per-image and shared modes coincide
  } else {
    req.seed_mode = SeedMode::kShared;
    req.shared_seed = c["seed"].get<uint64_t>();
  }
  req.steps = kw["num_inference_steps"].get<int>();
  req.width = kw.value("width", 64);
  req.height = kw.value("height", 64);
  req.sampler = c["scheduler"].is_null() ? "" : c["scheduler"].get<std::string>();
  if (kw.contains("strength")) req.strength = kw["strength"].get<double>();
  if (g.count("input_image_uint8")) {
    req.init_image = ToImage(g["input_image_uint8"]);
    req.width = kw.value("width", req.init_image->width);  // img2img renders at the image's size
    req.height = kw.value("height", req.init_image->height);
  }
  if (g.count("input_mask_uint8")) {
    req.mask = ToImage(g["input_mask_uint8"]);
    if (!kw.contains("strength")) req.strength = 1.0;  // the inpainting pipeline's default
  }
  req.keep_latents = true;
  return req;
}

// Renders the case of golden file `file` with `engine` and compares every step.
void ExpectMatchesGolden(const std::string& file, const Engine& engine) {
  auto g = LoadGolden(file);
  auto meta = LoadGoldenMetadata(file);
  ASSERT_FALSE(g.empty());
  const nlohmann::json c = nlohmann::json::parse(meta.at("case"));
  RenderRequest req = RequestFromCase(c, g);

  std::vector<at::Tensor> steps;
  std::vector<double> timesteps;
  ASSERT_OK_AND_ASSIGN(RenderResult out, engine.Render(req, [&](const StepInfo& s) {
    steps.push_back(s.latents->clone());
    timesteps.push_back(s.timestep);
    return true;
  }));

  at::Tensor init = at::from_blob(out.initial_latents.data(), out.latents_shape, at::kFloat);
  at::Tensor final_latents = at::from_blob(out.latents.data(), out.latents_shape, at::kFloat);
  EXPECT_LE(MaxAbsDiff(init, g["latents_init"]), 1e-5) << "initial latents";
  if (g.count("noise_init")) {
    EXPECT_EQ(MaxAbsDiff(init, g["latents_init"]), 0.0) << "txt2img starting noise must be bit-exact";
  }
  ASSERT_EQ(static_cast<int64_t>(steps.size()), g["step_latents"].size(0));
  for (size_t i = 0; i < timesteps.size(); ++i) {
    EXPECT_FLOAT_EQ(timesteps[i], g["timesteps"][i].item<float>()) << "step " << i;
  }
  for (size_t i = 0; i < steps.size(); ++i) {
    EXPECT_LE(MaxAbsDiff(steps[i], g["step_latents"][i]), 1e-3) << "latents after step " << i;
  }
  EXPECT_LE(MaxAbsDiff(final_latents, g["latents_final"]), 1e-3) << "final latents";
  at::Tensor pixels = ImagesToTensor(out.images);
  EXPECT_LE(MaxAbsDiff(pixels.to(at::kInt), g["image_uint8"].to(at::kInt)), 2.0) << "pixels";
}

std::string CaseModel(const std::string& file) {
  auto meta = LoadGoldenMetadata(file);
  return nlohmann::json::parse(meta.at("case"))["model"].get<std::string>();
}

// "folder": the diffusers folder the case names. "single_file": the same model
// from shared/models/single_file/<model>.safetensors (tiny-sd only), with the
// folder as --model-config (its text-encoder head count is not in the tensors).
struct PipelineParam {
  std::string group, name, source;
};
void PrintTo(const PipelineParam& p, std::ostream* os) {
  *os << p.group << "/" << p.name << " (" << p.source << ")";
}

class PipelineGoldenTest : public ::testing::TestWithParam<PipelineParam> {};

TEST_P(PipelineGoldenTest, MatchesDiffusers) {
  const std::string file = GetParam().group + "/" + GetParam().name + ".safetensors";
  const std::string model = CaseModel(file);
  std::unique_ptr<Engine> engine;
  if (GetParam().source == "folder") {
    ASSERT_OK_AND_ASSIGN(engine, Engine::Load(ModelPath(model)));
  } else {
    // The weights of tiny-sd-hubcfg are tiny-sd's.
    const std::string weights = model.substr(0, model.find("-hubcfg"));
    ASSERT_OK_AND_ASSIGN(engine, Engine::Load(ModelPath("single_file/" + weights + ".safetensors"),
                                              {.model_config = ModelPath(model)}));
    EXPECT_TRUE(engine->info().single_file);
  }
  ExpectMatchesGolden(file, *engine);
}

std::vector<PipelineParam> PipelineParams() {
  std::vector<PipelineParam> out;
  for (const auto& name : GoldenPipelineCases("pipelines")) {
    out.push_back({"pipelines", name, "folder"});
    // The cases the golden README lists for tiny-sd.safetensors.
    if (name.rfind("sd_", 0) == 0 || name.rfind("img2img_", 0) == 0) {
      out.push_back({"pipelines", name, "single_file"});
    }
  }
  // hubcfg/: the same weights under configs with only the real hub files'
  // keys; hubcfg_sd15_* also from tiny-sd.safetensors with those configs.
  for (const auto& name : GoldenPipelineCases("hubcfg")) {
    out.push_back({"hubcfg", name, "folder"});
    if (name.rfind("hubcfg_sd15_", 0) == 0) out.push_back({"hubcfg", name, "single_file"});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Golden, PipelineGoldenTest, ::testing::ValuesIn(PipelineParams()),
                         [](const ::testing::TestParamInfo<PipelineParam>& info) {
                           return info.param.name + "_" + info.param.source;
                         });

// single_file/: the fp16 checkpoints, through --model-config and through the LDM yaml.
TEST(SingleFileGolden, Sd15EmaFileDefaultWeightsWithModelConfig) {
  ASSERT_OK_AND_ASSIGN(auto engine, Engine::Load(ModelPath("single_file/tiny-sd-ema.fp16.safetensors"),
                                                 {.model_config = ModelPath("tiny-sd")}));
  ExpectMatchesGolden("single_file/sf_sd15_ema_fp16_default.safetensors", *engine);
}

// The golden loader: from_single_file(original_config_file=yaml, text_encoder=<tiny-sd config>, tokenizer=...):
// the yaml gives UNet, VAE and scheduler; the folder only the text encoder and tokenizer.
TEST(SingleFileGolden, Sd15EmaFileDefaultWeightsWithYaml) {
  ASSERT_OK_AND_ASSIGN(auto engine, Engine::Load(ModelPath("single_file/tiny-sd-ema.fp16.safetensors"),
                                                 {.model_config = ModelPath("tiny-sd"),
                                                  .original_config = ModelPath("single_file/v1-inference-tiny.yaml")}));
  ExpectMatchesGolden("single_file/sf_sd15_ema_fp16_default.safetensors", *engine);
}

TEST(SingleFileGolden, Sd2FileWithModelConfig) {
  ASSERT_OK_AND_ASSIGN(auto engine, Engine::Load(ModelPath("single_file/tiny-sd-v2.fp16.safetensors"),
                                                 {.model_config = ModelPath("tiny-sd-v2")}));
  EXPECT_EQ(engine->info().default_sampler, "ddim");
  EXPECT_EQ(engine->info().prediction_type, "v_prediction");
  ExpectMatchesGolden("single_file/sf_sd2_fp16_ddim_vpred.safetensors", *engine);
}

TEST(SingleFileGolden, Sd2FileWithYaml) {
  ASSERT_OK_AND_ASSIGN(auto engine, Engine::Load(ModelPath("single_file/tiny-sd-v2.fp16.safetensors"),
                                                 {.model_config = ModelPath("tiny-sd-v2"),
                                                  .original_config = ModelPath("single_file/v2-inference-v-tiny.yaml")}));
  EXPECT_EQ(engine->info().prediction_type, "v_prediction");  // parameterization: v
  ExpectMatchesGolden("single_file/sf_sd2_fp16_ddim_vpred.safetensors", *engine);
}

TEST(SingleFileGolden, Sd2FileWithYamlAndPredictionTypeFlag) {
  ASSERT_OK_AND_ASSIGN(auto engine, Engine::Load(ModelPath("single_file/tiny-sd-v2.fp16.safetensors"),
                                                 {.model_config = ModelPath("tiny-sd-v2"),
                                                  .original_config = ModelPath("single_file/v2-inference-v-tiny.yaml"),
                                                  .prediction_type = "v_prediction"}));
  ExpectMatchesGolden("single_file/sf_sd2_fp16_ddim_vpred.safetensors", *engine);
}

// vae_swap/: tiny-sd with tiny-sd-vae-alt, as a folder and as an LDM single-file VAE.
TEST(VaeSwapGolden, DiffusersVaeFolder) {
  ASSERT_OK_AND_ASSIGN(auto engine, Engine::Load(ModelPath("tiny-sd"), {.vae = ModelPath("tiny-sd-vae-alt")}));
  ExpectMatchesGolden("vae_swap/vae_swap_sd15_pndm.safetensors", *engine);
}

TEST(VaeSwapGolden, LdmSingleFileVae) {
  for (const std::string prefix : {"", "first_stage_model."}) {
    ASSERT_OK_AND_ASSIGN(auto engine, Engine::Load(ModelPath("tiny-sd"), {.vae = WriteLdmVaeForTest(prefix)}));
    EXPECT_EQ(engine->info().vae_name, "alt-vae");
    ExpectMatchesGolden("vae_swap/vae_swap_sd15_pndm.safetensors", *engine);
  }
}

TEST(VaeSwapGolden, SingleFileModelWithVaeFolder) {
  ASSERT_OK_AND_ASSIGN(auto engine, Engine::Load(ModelPath("single_file/tiny-sd.safetensors"),
                                                 {.model_config = ModelPath("tiny-sd"),
                                                  .vae = ModelPath("tiny-sd-vae-alt")}));
  ExpectMatchesGolden("vae_swap/vae_swap_sd15_pndm.safetensors", *engine);
}

TEST(PipelineGolden, AllCasesArePresent) {
  // The cases above are discovered from the folder; an empty folder must fail, not pass.
  EXPECT_GE(GoldenPipelineCases("pipelines").size(), 15u) << GoldenPath("pipelines");
  EXPECT_GE(GoldenPipelineCases("hubcfg").size(), 2u) << GoldenPath("hubcfg");
}

}  // namespace
}  // namespace sdfarm::engine
