// End-to-end parity with diffusers: every golden pipeline case (txt2img,
// img2img, inpainting, CFG on and off, negative prompts, batches, several
// images per prompt, non-square sizes, SD 2.x v-prediction) rebuilt from the
// case description in the file's metadata and rendered by the engine:
// initial latents equal, final latents within 1e-3, pixels within 2/255.
// Also the hubcfg/ cases: the same models with configs holding only the keys
// of the real SD 1.5 / 2.1 hub files (every other key takes diffusers' default).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "tests/engine/golden.h"
#include "worker/engine/engine.h"

namespace sdfarm::engine {
namespace {

using ::sdfarm::testing::GoldenPath;
using ::sdfarm::testing::LoadGolden;
using ::sdfarm::testing::LoadGoldenMetadata;
using ::sdfarm::testing::MaxAbsDiff;
using ::sdfarm::testing::ModelPath;

// "group/name" of every case in golden/<group>/.
std::vector<std::string> GoldenPipelineCases(const std::string& group) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(std::string(SDFARM_SHARED_DIR) + "/golden/" + group, ec)) {
    if (e.path().extension() == ".safetensors") names.push_back(group + "/" + e.path().stem().string());
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

class PipelineGoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(PipelineGoldenTest, MatchesDiffusers) {
  const std::string file = GetParam() + ".safetensors";
  auto g = LoadGolden(file);
  auto meta = LoadGoldenMetadata(file);
  ASSERT_FALSE(g.empty());
  const nlohmann::json c = nlohmann::json::parse(meta.at("case"));
  ASSERT_OK_AND_ASSIGN(auto engine, Engine::Load(ModelPath(c["model"].get<std::string>())));
  RenderRequest req = RequestFromCase(c, g);

  std::vector<at::Tensor> steps;
  std::vector<double> timesteps;
  ASSERT_OK_AND_ASSIGN(RenderResult out, engine->Render(req, [&](const StepInfo& s) {
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

std::string CaseName(const ::testing::TestParamInfo<std::string>& info) {
  return info.param.substr(info.param.find('/') + 1);
}

INSTANTIATE_TEST_SUITE_P(Golden, PipelineGoldenTest, ::testing::ValuesIn(GoldenPipelineCases("pipelines")), CaseName);
INSTANTIATE_TEST_SUITE_P(HubConfigs, PipelineGoldenTest, ::testing::ValuesIn(GoldenPipelineCases("hubcfg")),
                         CaseName);

TEST(PipelineGolden, AllCasesArePresent) {
  // The cases above are discovered from the folders; an empty folder must fail, not pass.
  EXPECT_GE(GoldenPipelineCases("pipelines").size(), 15u) << GoldenPath("pipelines");
  EXPECT_GE(GoldenPipelineCases("hubcfg").size(), 2u) << GoldenPath("hubcfg");
}

}  // namespace
}  // namespace sdfarm::engine
