// LoRA, as diffusers 0.21.4 applies it (pipe.load_lora_weights(...), then
// cross_attention_kwargs={"scale": s}): the text encoder and UNet outputs of
// lora/components.safetensors with the kohya and the diffusers-format file,
// the golden LoRA pipelines through the engine, removal and switching without
// reloading, and the errors for LoRAs that do not belong to the model.
#include "worker/engine/lora.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <tuple>
#include <string>
#include <vector>

#include "tests/engine/golden.h"
#include "worker/engine/engine.h"
#include "worker/engine/model_loader.h"
#include "worker/engine/safetensors.h"

namespace sdfarm::engine {
namespace {

using ::sdfarm::testing::LoadGolden;
using ::sdfarm::testing::LoadGoldenMetadata;
using ::sdfarm::testing::MakeTempDir;
using ::sdfarm::testing::MaxAbsDiff;
using ::sdfarm::testing::ModelPath;

std::string KohyaFile() { return ModelPath("lora/tiny-sd-lora-kohya.safetensors"); }
std::string DiffusersFolder() { return ModelPath("lora/tiny-sd-lora-diffusers"); }

class LoraComponentsTest : public ::testing::TestWithParam<std::string> {};

TEST_P(LoraComponentsTest, TextEncoderAndUNetMatchDiffusersAtEachScale) {
  const std::string lora = GetParam() == "kohya" ? KohyaFile() : DiffusersFolder();
  auto g = LoadGolden("lora/components.safetensors");
  ASSERT_FALSE(g.empty());
  ASSERT_OK_AND_ASSIGN(auto model, LoadStableDiffusion(ModelPath("tiny-sd"), at::kCPU, at::kFloat));
  LoraMerger loras(model->unet_params, model->text_encoder_params, at::kCPU);
  c10::InferenceMode guard;
  auto text = [&] { return model->text_encoder->Forward(g["input_ids"]).last_hidden_state; };
  auto unet = [&] {
    return model->unet->Forward(g["sample"], g["timestep"].reshape({}), g["encoder_hidden_states"]);
  };
  constexpr double kTol = 1e-4;
  const at::Tensor base_text = text(), base_unet = unet();
  EXPECT_LE(MaxAbsDiff(base_text, g["te_last_hidden_state_nolora"]), kTol);
  EXPECT_LE(MaxAbsDiff(base_unet, g["unet_out_nolora"]), kTol);

  for (const auto& [scale, suffix] : std::vector<std::pair<double, std::string>>{{1.0, "s1"}, {0.5, "s05"},
                                                                                  {0.0, "s0"}, {1.0, "s1"}}) {
    ASSERT_OK(loras.Apply({{lora, scale}}));
    const at::Tensor t = text(), u = unet();
    EXPECT_LE(MaxAbsDiff(t, g["te_last_hidden_state_" + suffix]), kTol) << "scale " << scale;
    EXPECT_LE(MaxAbsDiff(u, g["unet_out_" + suffix]), kTol) << "scale " << scale;
    if (scale == 0.0) {
      EXPECT_TRUE(at::equal(t, base_text)) << "scale 0 must be exactly the base model";
      EXPECT_TRUE(at::equal(u, base_unet)) << "scale 0 must be exactly the base model";
      EXPECT_EQ(loras.num_merged_tensors(), 0u);
    } else {
      EXPECT_GT(MaxAbsDiff(t, base_text), 1e-3) << "the LoRA must change the text encoder";
      EXPECT_GT(MaxAbsDiff(u, base_unet), 1e-3) << "the LoRA must change the UNet";
      EXPECT_EQ(loras.num_merged_tensors(), 60u);  // 48 UNet + 12 text-encoder layers
    }
  }
  // Removal restores the exact base weights.
  ASSERT_OK(loras.Apply({}));
  EXPECT_TRUE(at::equal(text(), base_text));
  EXPECT_TRUE(at::equal(unet(), base_unet));
}

INSTANTIATE_TEST_SUITE_P(Files, LoraComponentsTest, ::testing::Values("kohya", "diffusers"));

TEST(Lora, BothFormatsReadAsTheSameLayers) {
  ASSERT_OK_AND_ASSIGN(auto model, LoadStableDiffusion(ModelPath("tiny-sd"), at::kCPU, at::kFloat));
  ASSERT_OK_AND_ASSIGN(auto kohya, ReadLora(KohyaFile(), model->unet_params, model->text_encoder_params));
  ASSERT_OK_AND_ASSIGN(auto diffusers, ReadLora(DiffusersFolder(), model->unet_params, model->text_encoder_params));
  ASSERT_EQ(kohya->modules.size(), 60u);
  ASSERT_EQ(diffusers->modules.size(), 60u);
  std::map<std::string, const LoraModule*> by_name;
  for (const auto& m : diffusers->modules) by_name[m.module] = &m;
  for (const auto& k : kohya->modules) {
    ASSERT_EQ(by_name.count(k.module), 1u) << k.module;
    const LoraModule& d = *by_name[k.module];
    EXPECT_EQ(k.target, d.target) << k.module;
    EXPECT_DOUBLE_EQ(k.alpha_over_rank, 0.5);
    EXPECT_DOUBLE_EQ(d.alpha_over_rank, 1.0);
    // diffusers stores up * alpha / rank; the fp16 values halve exactly.
    EXPECT_TRUE(at::equal(k.down.to(at::kFloat), d.down)) << k.module;
    EXPECT_TRUE(at::equal(k.up.to(at::kFloat) * 0.5, d.up)) << k.module;
  }
  EXPECT_EQ(by_name.count("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"), 1u);
  EXPECT_EQ(by_name.count("text_model.encoder.layers.1.mlp.fc2"), 1u);
}

TEST(Lora, LoadLoraNamesAndHashesAsA1111) {
  ASSERT_OK_AND_ASSIGN(auto engine, Engine::Load(ModelPath("tiny-sd")));
  ASSERT_OK_AND_ASSIGN(LoraInfo kohya, engine->LoadLora(KohyaFile()));
  EXPECT_EQ(kohya.name, "tiny-sd-lora-kohya");
  EXPECT_EQ(kohya.hash, "20a3e83bed69");  // sha256 of the bytes after the header (python hashlib)
  ASSERT_OK_AND_ASSIGN(LoraInfo diffusers, engine->LoadLora(DiffusersFolder()));
  EXPECT_EQ(diffusers.name, "tiny-sd-lora-diffusers");
  EXPECT_EQ(diffusers.hash, "c689bdcb13f0");
  ASSERT_OK_AND_ASSIGN(LoraInfo file, engine->LoadLora(DiffusersFolder() + "/pytorch_lora_weights.safetensors"));
  EXPECT_EQ(file.name, "pytorch_lora_weights");
  EXPECT_EQ(file.hash, "c689bdcb13f0");
}

// The engine request of a golden LoRA case, plus the LoRA at the case's scale.
RenderRequest LoraCaseRequest(const std::string& golden, double* scale_out = nullptr) {
  const nlohmann::json c = nlohmann::json::parse(LoadGoldenMetadata(golden).at("case"));
  const nlohmann::json& kw = c["kwargs"];
  RenderRequest req;
  req.items = {{kw["prompt"].get<std::string>(), kw.value("negative_prompt", std::string()),
                c["seed"].get<uint64_t>(), kw.value("guidance_scale", 7.5)}};
  req.steps = kw["num_inference_steps"].get<int>();
  req.width = req.height = 64;
  req.sampler = c["scheduler"].is_null() ? "" : c["scheduler"].get<std::string>();
  req.keep_latents = true;
  const double scale = kw["cross_attention_kwargs"]["scale"].get<double>();
  req.loras = {{KohyaFile(), scale}};
  if (scale_out) *scale_out = scale;
  return req;
}

struct Rendered {
  at::Tensor init, final_latents, pixels;
};

Rendered RenderOnce(Engine& engine, const RenderRequest& req) {
  Rendered out;
  auto result = engine.Render(req);
  EXPECT_TRUE(result.ok()) << result.status().ToString();
  if (!result.ok()) return out;
  out.init = at::from_blob(result->initial_latents.data(), result->latents_shape, at::kFloat).clone();
  out.final_latents = at::from_blob(result->latents.data(), result->latents_shape, at::kFloat).clone();
  const Image& img = result->images.at(0);
  out.pixels = at::from_blob(const_cast<uint8_t*>(img.pixels.data()), {img.height, img.width, 3}, at::kByte)
                   .to(at::kInt);
  return out;
}

void ExpectMatchesGolden(const Rendered& r, const std::string& golden) {
  auto g = LoadGolden(golden);
  ASSERT_TRUE(r.init.defined()) << golden;
  EXPECT_EQ(MaxAbsDiff(r.init, g["latents_init"]), 0.0) << golden << ": initial latents";
  EXPECT_LE(MaxAbsDiff(r.final_latents, g["latents_final"]), 1e-3) << golden << ": final latents";
  EXPECT_LE(MaxAbsDiff(r.pixels, g["image_uint8"][0].to(at::kInt)), 2.0) << golden << ": pixels";
}

TEST(LoraPipeline, GoldenCasesThenRemovalAndSwitchingWithoutReloading) {
  ASSERT_OK_AND_ASSIGN(auto engine, Engine::Load(ModelPath("tiny-sd")));
  const RenderRequest s1 = LoraCaseRequest("lora/lora_kohya_s1_pndm.safetensors");
  const RenderRequest s05 = LoraCaseRequest("lora/lora_kohya_s05_eulera.safetensors");
  ASSERT_EQ(s1.loras[0].scale, 1.0);
  ASSERT_EQ(s05.loras[0].scale, 0.5);

  const Rendered first = RenderOnce(*engine, s1);
  ExpectMatchesGolden(first, "lora/lora_kohya_s1_pndm.safetensors");
  ExpectMatchesGolden(RenderOnce(*engine, s05), "lora/lora_kohya_s05_eulera.safetensors");

  // The same engine without LoRA: the base model's golden.
  RenderRequest plain;
  plain.items = {{"a photograph of an astronaut riding a horse", "", 0, 7.5}};
  plain.steps = 15;
  plain.width = plain.height = 64;
  plain.keep_latents = true;
  ExpectMatchesGolden(RenderOnce(*engine, plain), "pipelines/sd_pndm_astronaut.safetensors");

  // Back to scale 1 (after 1 -> 0.5 -> none): bit-identical to the first render.
  const Rendered again = RenderOnce(*engine, s1);
  ASSERT_TRUE(again.final_latents.defined());
  EXPECT_TRUE(at::equal(again.final_latents, first.final_latents));
  EXPECT_TRUE(at::equal(again.pixels, first.pixels));

  // The diffusers-format folder gives the same image.
  RenderRequest folder = s1;
  folder.loras = {{DiffusersFolder(), 1.0}};
  ExpectMatchesGolden(RenderOnce(*engine, folder), "lora/lora_kohya_s1_pndm.safetensors");

  // A scale-0 LoRA is the base model exactly.
  RenderRequest zero = plain;
  zero.loras = {{KohyaFile(), 0.0}};
  const Rendered base = RenderOnce(*engine, plain);
  const Rendered z = RenderOnce(*engine, zero);
  ASSERT_TRUE(z.final_latents.defined());
  EXPECT_TRUE(at::equal(z.final_latents, base.final_latents));
}

TEST(LoraPipeline, TwoLorasStackAsTheirScalesSum) {
  // The same LoRA twice at 0.5 each is the LoRA once at 1.0 (up to float rounding).
  ASSERT_OK_AND_ASSIGN(auto engine, Engine::Load(ModelPath("tiny-sd")));
  RenderRequest req = LoraCaseRequest("lora/lora_kohya_s1_pndm.safetensors");
  req.loras = {{KohyaFile(), 0.5}, {DiffusersFolder(), 0.5}};
  ExpectMatchesGolden(RenderOnce(*engine, req), "lora/lora_kohya_s1_pndm.safetensors");
}

// A copy of the kohya LoRA with one module's tensors replaced.
std::string WriteModifiedKohya(const std::string& dir, const std::string& name,
                               const std::map<std::string, at::Tensor>& replace, bool drop_originals = false) {
  auto tensors = ReadSafetensors(KohyaFile());
  EXPECT_TRUE(tensors.ok());
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& [k, v] : *tensors) {
    if (replace.count(k) == 0 && !drop_originals) out.push_back({k, v});
  }
  for (const auto& [k, v] : replace) out.push_back({k, v});
  const std::string path = dir + "/" + name;
  EXPECT_OK(WriteSafetensors(path, out));
  return path;
}

TEST(LoraErrors, LorasThatDoNotBelongToTheModelAreClearErrors) {
  ASSERT_OK_AND_ASSIGN(auto engine, Engine::Load(ModelPath("tiny-sd")));
  const std::string dir = MakeTempDir();
  const std::string module = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q";
  struct Case {
    std::string path;
    std::vector<std::string> message;  // every part must appear
  };
  const std::vector<Case> cases = {
      {WriteModifiedKohya(dir, "wrong-shape.safetensors",
                          {{module + ".lora_down.weight", at::ones({4, 48}, at::kHalf)},
                           {module + ".lora_up.weight", at::ones({48, 4}, at::kHalf)}}),
       {"another architecture", "mid_block.attentions.0.transformer_blocks.0.attn1.to_q", "[64, 64]", "[4, 48]",
        "[48, 4]"}},
      {WriteModifiedKohya(dir, "unknown-module.safetensors",
                          {{"lora_unet_input_blocks_1_1_proj_in.lora_down.weight", at::ones({4, 32}, at::kHalf)},
                           {"lora_unet_input_blocks_1_1_proj_in.lora_up.weight", at::ones({32, 4}, at::kHalf)}},
                          /*drop_originals=*/true),
       {"lora_unet_input_blocks_1_1_proj_in.lora_down.weight", "matches no module", "another model"}},
      {WriteModifiedKohya(dir, "not-a-lora.safetensors", {{"conv_in.weight", at::ones({32, 4, 3, 3})}}, true),
       {"holds no LoRA tensors", "conv_in.weight"}},
      {dir + "/model.ckpt", {"pickle", ".ckpt"}},
      {dir + "/missing.safetensors", {"does not exist", "missing.safetensors"}},
      {dir, {"pytorch_lora_weights.safetensors"}},
  };
  std::ofstream(dir + "/model.ckpt") << "not really a pickle";
  for (const auto& c : cases) {
    auto info = engine->LoadLora(c.path);
    ASSERT_FALSE(info.ok()) << c.path;
    for (const auto& part : c.message) {
      EXPECT_NE(info.status().message().find(part), std::string::npos)
          << "expected '" << part << "' in: " << info.status().message();
    }
    // A render with it fails with the same error and renders nothing.
    RenderRequest req;
    req.items = {{"a cat", "", 1, 7.5}};
    req.steps = 2;
    req.loras = {{c.path, 1.0}};
    auto out = engine->Render(req);
    ASSERT_FALSE(out.ok());
    EXPECT_EQ(out.status().message(), info.status().message());
  }
  // Scales must be finite and at most 10 in size.
  RenderRequest req;
  req.items = {{"a cat", "", 1, 7.5}};
  req.steps = 2;
  req.loras = {{KohyaFile(), 11.0}};
  EXPECT_FALSE(engine->Validate(req).ok());
  req.loras = {{KohyaFile(), std::nan("")}};
  EXPECT_FALSE(engine->Validate(req).ok());
  // After all of that the model is still the base model.
  req.loras.clear();
  req.steps = 15;
  req.items = {{"a photograph of an astronaut riding a horse", "", 0, 7.5}};
  req.width = req.height = 64;
  req.keep_latents = true;
  ExpectMatchesGolden(RenderOnce(*engine, req), "pipelines/sd_pndm_astronaut.safetensors");
}

TEST(LoraErrors, AModuleWithoutItsUpMatrixIsAnError) {
  ASSERT_OK_AND_ASSIGN(auto model, LoadStableDiffusion(ModelPath("tiny-sd"), at::kCPU, at::kFloat));
  const std::string dir = MakeTempDir();
  const std::string path = dir + "/half.safetensors";
  ASSERT_OK(WriteSafetensors(path, {{"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                                     at::ones({4, 32})}}));
  auto lora = ReadLora(path, model->unet_params, model->text_encoder_params);
  ASSERT_FALSE(lora.ok());
  EXPECT_NE(lora.status().message().find("text_model.encoder.layers.0.mlp.fc1"), std::string::npos)
      << lora.status().message();
  EXPECT_NE(lora.status().message().find("no up matrix"), std::string::npos) << lora.status().message();
}

TEST(LoraErrors, TheTinySdLoraDoesNotFitTinySdV2) {
  // tiny-sd-v2 has one layer per block and linear projections: the tiny-sd LoRA names modules it lacks.
  ASSERT_OK_AND_ASSIGN(auto engine, Engine::Load(ModelPath("tiny-sd-v2")));
  auto info = engine->LoadLora(KohyaFile());
  ASSERT_FALSE(info.ok());
  EXPECT_NE(info.status().message().find("another model"), std::string::npos) << info.status().message();
}

TEST(Lora, ConvAndLoConLayersMergeAsUpTimesDown) {
  // kohya LoRAs on SD 1.x's 1x1 proj_in convs and 3x3 "LoCon" resnet convs.
  ASSERT_OK_AND_ASSIGN(auto model, LoadStableDiffusion(ModelPath("tiny-sd"), at::kCPU, at::kFloat));
  const std::string dir = MakeTempDir();
  const std::string path = dir + "/locon.safetensors";
  at::Generator gen = at::detail::createCPUGenerator(7);
  const at::Tensor d1 = at::randn({2, 32, 1, 1}, gen), u1 = at::randn({32, 2, 1, 1}, gen);
  const at::Tensor d3 = at::randn({2, 32, 3, 3}, gen), u3 = at::randn({32, 2, 1, 1}, gen);
  ASSERT_OK(WriteSafetensors(path, {{"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", d1},
                                    {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", u1},
                                    {"lora_unet_down_blocks_0_attentions_0_proj_in.alpha", at::tensor(1.0)},
                                    {"lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight", d3},
                                    {"lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight", u3}}));
  at::Tensor& proj_in = *model->unet_params.at("down_blocks.0.attentions.0.proj_in.weight");
  at::Tensor& conv1 = *model->unet_params.at("down_blocks.0.resnets.0.conv1.weight");
  const at::Tensor proj_in0 = proj_in.clone(), conv10 = conv1.clone();
  LoraMerger loras(model->unet_params, model->text_encoder_params, at::kCPU);
  ASSERT_OK(loras.Apply({{path, 0.75}}));
  const at::Tensor want1 = proj_in0 + 0.75 * 0.5 * at::mm(u1.flatten(1), d1.flatten(1)).view({32, 32, 1, 1});
  const at::Tensor want3 = conv10 + 0.75 * at::mm(u3.flatten(1), d3.flatten(1)).view({32, 32, 3, 3});
  EXPECT_LE(MaxAbsDiff(proj_in, want1), 1e-5);
  EXPECT_LE(MaxAbsDiff(conv1, want3), 1e-5);
  ASSERT_OK(loras.Apply({}));
  EXPECT_TRUE(at::equal(proj_in, proj_in0));
  EXPECT_TRUE(at::equal(conv1, conv10));
}

TEST(Lora, EveryTransformerAndClipLayerCivitaiLorasTargetIsMapped) {
  // Real SD 1.x LoRAs adapt every Linear/Conv of Transformer2DModel (proj_in/out, to_q/k/v/out.0, ff.net.0.proj,
  // ff.net.2) and CLIP's attention and MLP; their kohya names must all resolve despite the '_' in them.
  ASSERT_OK_AND_ASSIGN(auto model, LoadStableDiffusion(ModelPath("tiny-sd"), at::kCPU, at::kFloat));
  const std::regex unet_layer(
      R"(.*attentions\.\d+\.(proj_in|proj_out|transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|)"
      R"(ff\.net\.0\.proj|ff\.net\.2))\.weight$)");
  const std::regex te_layer(R"(text_model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])\.weight$)");
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  size_t modules = 0;
  for (const auto& [params, prefix, re] : {std::tuple{&model->unet_params, "lora_unet_", &unet_layer},
                                           std::tuple{&model->text_encoder_params, "lora_te_", &te_layer}}) {
    for (const auto& [name, w] : *params) {
      if (!std::regex_match(name, *re)) continue;
      std::string base = name.substr(0, name.size() - 7);
      std::replace(base.begin(), base.end(), '.', '_');
      std::vector<int64_t> down = w->sizes().vec(), up = {w->size(0), 4};
      down[0] = 4;
      if (w->dim() == 4) up.insert(up.end(), {1, 1});
      tensors.push_back({prefix + base + ".lora_down.weight", at::full(down, 0.01, at::kHalf)});
      tensors.push_back({prefix + base + ".lora_up.weight", at::full(up, 0.01, at::kHalf)});
      tensors.push_back({prefix + base + ".alpha", at::full({}, 4.0, at::kHalf)});
      ++modules;
    }
  }
  EXPECT_EQ(modules, 84u);  // 6 transformers x (2 proj + 8 attention + 2 ff) + 2 CLIP layers x 6
  const std::string path = MakeTempDir() + "/full.safetensors";
  ASSERT_OK(WriteSafetensors(path, tensors));
  ASSERT_OK_AND_ASSIGN(auto lora, ReadLora(path, model->unet_params, model->text_encoder_params));
  EXPECT_EQ(lora->modules.size(), modules);
  LoraMerger loras(model->unet_params, model->text_encoder_params, at::kCPU);
  ASSERT_OK(loras.Apply({{path, 1.0}}));
  EXPECT_EQ(loras.num_merged_tensors(), modules);
}

}  // namespace
}  // namespace sdfarm::engine
