// SDXL parity with diffusers 0.21.4 (StableDiffusionXLPipeline on tiny-sdxl,
// shared/golden/sdxl): both text encoders, the pooled embedding, the prompt
// embeddings, the UNet with its added (text_time) conditioning and its
// intermediates; every pipeline case through the engine API (initial latents
// equal, every step's latents and the final ones within 1e-3, pixels within
// 2/255), plus the conditioning tensors each case recorded. Then loading
// variants and the inputs that must be refused.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <set>
#include <nlohmann/json.hpp>

#include "tests/engine/golden.h"
#include "worker/engine/component_loader.h"
#include "worker/engine/engine.h"
#include "worker/engine/model_loader.h"
#include "worker/engine/safetensors.h"
#include "worker/engine/sdxl_conditioning.h"

namespace sdfarm::engine {
// single_file_test.cc: tiny-sd-vae-alt's weights (= tiny-sdxl's VAE) written as an LDM VAE file.
std::string WriteLdmVaeForTest(const std::string& prefix);
namespace {

namespace fs = std::filesystem;
using ::sdfarm::testing::GoldenPath;
using ::sdfarm::testing::LoadGolden;
using ::sdfarm::testing::LoadGoldenMetadata;
using ::sdfarm::testing::MakeTempDir;
using ::sdfarm::testing::MaxAbsDiff;
using ::sdfarm::testing::ModelPath;

constexpr double kTol = 1e-4;

const std::vector<std::string>& SdxlCases() {
  static const std::vector<std::string> names = {"sdxl_euler_default", "sdxl_euler_nocfg",
                                                 "sdxl_euler_negative_64x96", "sdxl_dpmpp2m_prompt2_microcond"};
  return names;
}

const StableDiffusionModel& TinySdxl() {
  static const StableDiffusionModel* model = [] {
    auto m = LoadStableDiffusion(ModelPath("tiny-sdxl"), at::kCPU, at::kFloat);
    EXPECT_TRUE(m.ok()) << m.status().ToString();
    return m.ok() ? m->release() : nullptr;
  }();
  return *model;
}

TEST(SdxlComponents, TextEncodersAndPooledOutput) {
  auto g = LoadGolden("sdxl/components.safetensors");
  const StableDiffusionModel& m = TinySdxl();
  ASSERT_TRUE(m.sdxl());
  // Both tokenizers, as diffusers calls them (tokenizer_2 pads with "!" = 0).
  auto prompts = nlohmann::json::parse(LoadGoldenMetadata("sdxl/components.safetensors").at("prompts"))
                     .get<std::vector<std::string>>();
  ASSERT_EQ(prompts.size(), 3u);
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_TRUE(at::equal(at::tensor(m.tokenizer->EncodePadded(prompts[i]).ids, at::kLong), g["input_ids_1"][i]));
    EXPECT_TRUE(at::equal(at::tensor(m.tokenizer_2->EncodePadded(prompts[i]).ids, at::kLong), g["input_ids_2"][i]));
  }
  auto o1 = m.text_encoder->Forward(g["input_ids_1"]);
  EXPECT_LE(MaxAbsDiff(o1.last_hidden_state, g["te1_last_hidden_state"]), kTol);
  EXPECT_LE(MaxAbsDiff(o1.pooler_output, g["te1_pooler_output"]), kTol);
  EXPECT_FALSE(o1.text_embeds.defined());
  auto o2 = m.text_encoder_2->Forward(g["input_ids_2"], /*output_hidden_states=*/true);
  EXPECT_LE(MaxAbsDiff(o2.last_hidden_state, g["te2_last_hidden_state"]), kTol);
  ASSERT_TRUE(o2.text_embeds.defined());
  EXPECT_LE(MaxAbsDiff(o2.text_embeds, g["te2_text_embeds"]), kTol);
  // The penultimate states are the two halves of prompt_embeds.
  EXPECT_LE(MaxAbsDiff(m.text_encoder->LayerOutput(g["input_ids_1"], 1), g["prompt_embeds"].slice(2, 0, 32)), kTol);
  EXPECT_LE(MaxAbsDiff(o2.hidden_states[2], g["prompt_embeds"].slice(2, 32)), kTol);
}

TEST(SdxlComponents, PromptEmbedsThroughTheConditioning) {
  auto g = LoadGolden("sdxl/components.safetensors");
  auto prompts = nlohmann::json::parse(LoadGoldenMetadata("sdxl/components.safetensors").at("prompts"))
                     .get<std::vector<std::string>>();
  RenderRequest r;
  // "" is a prompt here (the engine's request check refuses it; the conditioning encodes it like diffusers).
  for (const auto& p : prompts) r.items.push_back({p, "", 0, 1.0});
  TextConditioning text = EncodeTextSdxl(TinySdxl(), r, 64, 64, at::kCPU);
  ASSERT_FALSE(text.cfg);
  ASSERT_EQ(text.groups.size(), 1u);
  EXPECT_LE(MaxAbsDiff(text.groups[0].context, g["prompt_embeds"]), kTol);
  EXPECT_LE(MaxAbsDiff(text.text_embeds, g["te2_text_embeds"]), kTol);
  EXPECT_TRUE(at::equal(text.time_ids, at::tensor({64.0f, 64.0f, 0.0f, 0.0f, 64.0f, 64.0f}).repeat({3, 1})));
}

TEST(SdxlComponents, UNetWithAddedConditioningAndIntermediates) {
  auto g = LoadGolden("sdxl/components.safetensors");
  const UNet& unet = *TinySdxl().unet;
  EXPECT_EQ(unet.config().addition_embed_type, "text_time");
  EXPECT_EQ(unet.config().transformer_layers, (std::vector<int64_t>{1, 2}));
  AddedConditioning added{g["unet_text_embeds"], g["unet_time_ids"]};
  struct Case {
    const char* suffix;
    at::Tensor timestep;
  };
  for (const Case& c : {Case{"a", g["unet_timestep_a"].reshape({})}, Case{"b", g["unet_timestep_b"]}}) {
    SCOPED_TRACE(c.suffix);
    const std::string s = c.suffix;
    at::Tensor temb = unet.TimestepEmbedding(c.timestep, 2, at::kFloat);
    EXPECT_LE(MaxAbsDiff(temb, g["unet_time_emb_" + s]), kTol);
    at::Tensor add_in = unet.AddEmbeddingInput(added, at::kFloat);
    EXPECT_LE(MaxAbsDiff(add_in, g["unet_add_embeds_in_" + s]), kTol);
    EXPECT_LE(MaxAbsDiff(unet.AddEmbedding(add_in), g["unet_aug_emb_" + s]), kTol);
    at::Tensor out = unet.Forward(g["unet_sample"], c.timestep, g["unet_encoder_hidden_states"], &added);
    EXPECT_LE(MaxAbsDiff(out, g["unet_out_" + s]), kTol);
  }
  // Without its added conditioning the UNet refuses to run rather than guess.
  EXPECT_THROW(unet.Forward(g["unet_sample"], g["unet_timestep_a"].reshape({}), g["unet_encoder_hidden_states"]),
               std::exception);
}

// The engine request equivalent to an sdxl case's diffusers call.
RenderRequest SdxlRequest(const nlohmann::json& c) {
  const nlohmann::json& kw = c["kwargs"];
  RenderItem item;
  item.prompt = kw["prompt"].get<std::string>();
  item.prompt_2 = kw.value("prompt_2", std::string());
  item.negative_prompt = kw.value("negative_prompt", std::string());
  item.negative_prompt_2 = kw.value("negative_prompt_2", std::string());
  item.guidance_scale = kw.value("guidance_scale", 5.0);
  item.guidance_rescale = kw.value("guidance_rescale", 0.0);
  item.seed = c["seed"].get<uint64_t>();
  auto hw = [&](const char* key, int* h, int* w) {
    if (!kw.contains(key)) return;
    *h = kw[key][0].get<int>();
    *w = kw[key][1].get<int>();
  };
  hw("original_size", &item.micro.original_height, &item.micro.original_width);
  hw("crops_coords_top_left", &item.micro.crop_top, &item.micro.crop_left);
  hw("target_size", &item.micro.target_height, &item.micro.target_width);
  hw("negative_original_size", &item.negative_micro.original_height, &item.negative_micro.original_width);
  hw("negative_crops_coords_top_left", &item.negative_micro.crop_top, &item.negative_micro.crop_left);
  hw("negative_target_size", &item.negative_micro.target_height, &item.negative_micro.target_width);
  RenderRequest req;
  req.items = {item};
  req.steps = kw["num_inference_steps"].get<int>();
  req.width = kw.value("width", 0);  // 0: the model's default, as diffusers
  req.height = kw.value("height", 0);
  req.sampler = c["scheduler"].is_null() ? "" : c["scheduler"].get<std::string>();
  req.keep_latents = true;
  return req;
}

class SdxlPipelineGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(SdxlPipelineGolden, MatchesDiffusers) {
  const std::string file = "sdxl/" + GetParam() + ".safetensors";
  auto g = LoadGolden(file);
  ASSERT_FALSE(g.empty());
  const nlohmann::json c = nlohmann::json::parse(LoadGoldenMetadata(file).at("case"));
  RenderRequest req = SdxlRequest(c);

  // The conditioning diffusers recorded: embeddings (zeros for no negative
  // prompt), pooled embeddings, and the UNet's added conditioning.
  const int width = g["image_uint8"].size(2), height = g["image_uint8"].size(1);
  TextConditioning text = EncodeTextSdxl(TinySdxl(), req, width, height, at::kCPU);
  const at::Tensor& ctx = text.groups[0].context;
  ASSERT_EQ(text.cfg, g.count("negative_prompt_embeds") == 1);
  if (text.cfg) {
    EXPECT_LE(MaxAbsDiff(ctx[0], g["negative_prompt_embeds"][0]), kTol);
    EXPECT_LE(MaxAbsDiff(ctx[1], g["prompt_embeds"][0]), kTol);
    EXPECT_LE(MaxAbsDiff(text.text_embeds[0], g["negative_pooled_prompt_embeds"][0]), kTol);
  } else {
    EXPECT_LE(MaxAbsDiff(ctx, g["prompt_embeds"]), kTol);
  }
  EXPECT_LE(MaxAbsDiff(text.text_embeds, g["unet_add_text_embeds"]), kTol);
  EXPECT_TRUE(at::equal(text.time_ids, g["unet_add_time_ids"])) << text.time_ids << g["unet_add_time_ids"];

  ASSERT_OK_AND_ASSIGN(auto engine, Engine::Load(ModelPath("tiny-sdxl")));
  EXPECT_TRUE(engine->info().sdxl);
  std::vector<at::Tensor> steps;
  std::vector<double> timesteps;
  ASSERT_OK_AND_ASSIGN(RenderResult out, engine->Render(req, [&](const StepInfo& s) {
    steps.push_back(s.latents->clone());
    timesteps.push_back(s.timestep);
    return true;
  }));
  at::Tensor init = at::from_blob(out.initial_latents.data(), out.latents_shape, at::kFloat);
  at::Tensor final_latents = at::from_blob(out.latents.data(), out.latents_shape, at::kFloat);
  EXPECT_EQ(MaxAbsDiff(init, g["latents_init"]), 0.0) << "starting noise must be bit-exact";
  ASSERT_EQ(static_cast<int64_t>(steps.size()), g["step_latents"].size(0));
  for (size_t i = 0; i < steps.size(); ++i) {
    EXPECT_FLOAT_EQ(timesteps[i], g["timesteps"][i].item<float>()) << "step " << i;
    EXPECT_LE(MaxAbsDiff(steps[i], g["step_latents"][i]), 1e-3) << "latents after step " << i;
  }
  EXPECT_LE(MaxAbsDiff(final_latents, g["latents_final"]), 1e-3);
  ASSERT_EQ(out.images.size(), 1u);
  const Image& img = out.images[0];
  at::Tensor pixels = at::from_blob(const_cast<uint8_t*>(img.pixels.data()), {1, img.height, img.width, 3}, at::kByte);
  EXPECT_LE(MaxAbsDiff(pixels.to(at::kInt), g["image_uint8"].to(at::kInt)), 2.0) << "pixels";
}

INSTANTIATE_TEST_SUITE_P(Golden, SdxlPipelineGolden, ::testing::ValuesIn(SdxlCases()),
                         [](const auto& info) { return info.param; });

TEST(SdxlPipelineGolden, EveryCaseInTheFolderIsCovered) {
  size_t n = 0;
  for (const auto& e : fs::directory_iterator(GoldenPath("sdxl"))) {
    const std::string stem = e.path().stem().string();
    if (stem == "components") continue;
    ++n;
    EXPECT_NE(std::find(SdxlCases().begin(), SdxlCases().end(), stem), SdxlCases().end()) << stem;
  }
  EXPECT_EQ(n, SdxlCases().size());
}

// A copy of tiny-sdxl made of symlinks, to alter one part.
std::string LinkedCopy(const std::string& src) {
  const std::string dir = MakeTempDir() + "/tiny-sdxl";
  fs::create_directories(dir);
  for (const auto& e : fs::directory_iterator(src)) {
    if (e.is_directory()) {
      fs::create_directories(dir + "/" + e.path().filename().string());
      for (const auto& f : fs::directory_iterator(e.path())) {
        fs::create_symlink(f.path(), dir + "/" + e.path().filename().string() + "/" + f.path().filename().string());
      }
    } else {
      fs::create_symlink(e.path(), dir + "/" + e.path().filename().string());
    }
  }
  return dir;
}

TEST(SdxlLoading, MissingTextEncoder2IsAClearError) {
  const std::string dir = LinkedCopy(ModelPath("tiny-sdxl"));
  fs::remove_all(dir + "/text_encoder_2");
  auto engine = Engine::Load(dir);
  ASSERT_FALSE(engine.ok());
  EXPECT_NE(engine.status().message().find("text_encoder_2"), std::string::npos) << engine.status().ToString();
}

TEST(SdxlLoading, Fp16VariantFilesAndBf16) {
  // Only a *.fp16.safetensors file: loads (fp32 parameters) and renders the golden image.
  const std::string dir = LinkedCopy(ModelPath("tiny-sdxl"));
  fs::rename(dir + "/text_encoder_2/model.safetensors", dir + "/text_encoder_2/model.fp16.safetensors");
  fs::rename(dir + "/unet/diffusion_pytorch_model.safetensors",
             dir + "/unet/diffusion_pytorch_model.fp16.safetensors");
  auto g = LoadGolden("sdxl/sdxl_euler_nocfg.safetensors");
  const nlohmann::json c = nlohmann::json::parse(LoadGoldenMetadata("sdxl/sdxl_euler_nocfg.safetensors").at("case"));
  RenderRequest req = SdxlRequest(c);
  ASSERT_OK_AND_ASSIGN(auto engine, Engine::Load(dir));
  ASSERT_OK_AND_ASSIGN(RenderResult out, engine->Render(req));
  at::Tensor final_latents = at::from_blob(out.latents.data(), out.latents_shape, at::kFloat);
  EXPECT_LE(MaxAbsDiff(final_latents, g["latents_final"]), 1e-3);

  // bf16: every network in bf16; the result stays close to the fp32 one.
  EngineOptions bf16;
  bf16.dtype = "bf16";
  ASSERT_OK_AND_ASSIGN(auto engine_bf16, Engine::Load(ModelPath("tiny-sdxl"), bf16));
  EXPECT_EQ(engine_bf16->info().dtype, "bf16");
  ASSERT_OK_AND_ASSIGN(RenderResult out_bf16, engine_bf16->Render(req));
  at::Tensor latents_bf16 = at::from_blob(out_bf16.latents.data(), out_bf16.latents_shape, at::kFloat);
  EXPECT_LE(MaxAbsDiff(latents_bf16, g["latents_final"]), 0.25);
}

TEST(SdxlRequests, SdxlOnlyFieldsOnAnSd1ModelAreRefused) {
  ASSERT_OK_AND_ASSIGN(auto engine, Engine::Load(ModelPath("tiny-sd")));
  EXPECT_FALSE(engine->info().sdxl);
  RenderRequest req;
  req.items = {{"a fox", "", 1, 7.5}};
  req.steps = 2;
  EXPECT_OK(engine->Validate(req));
  RenderRequest with_prompt_2 = req;
  with_prompt_2.items[0].prompt_2 = "oil painting";
  RenderRequest with_size = req;
  with_size.items[0].micro.original_width = 128;
  for (const RenderRequest* r : {&with_prompt_2, &with_size}) {
    Status s = engine->Validate(*r);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("SDXL"), std::string::npos) << s.ToString();
    EXPECT_FALSE(engine->Render(*r).ok());
  }
  // guidance_rescale is diffusers' on every pipeline.
  RenderRequest rescaled = req;
  rescaled.items[0].guidance_rescale = 0.7;
  EXPECT_OK(engine->Validate(rescaled));
}

TEST(SdxlRequests, BadSizesAndUnsupportedOptionsAreRefused) {
  ASSERT_OK_AND_ASSIGN(auto engine, Engine::Load(ModelPath("tiny-sdxl")));
  RenderRequest req;
  req.items = {{"a fox", "", 1, 5.0}};
  req.steps = 2;
  EXPECT_OK(engine->Validate(req));
  RenderRequest odd = req;
  odd.width = 60;
  EXPECT_NE(engine->Validate(odd).message().find("multiples of 8"), std::string::npos);
  RenderRequest skip = req;
  skip.clip_skip = 2;
  EXPECT_FALSE(engine->Validate(skip).ok());
  RenderRequest rescale = req;
  rescale.items[0].guidance_rescale = 1.5;
  EXPECT_FALSE(engine->Validate(rescale).ok());
}

TEST(SdxlRequests, DefaultSizeIsTheUNetsSampleSizeTimes8) {
  ASSERT_OK_AND_ASSIGN(auto engine, Engine::Load(ModelPath("tiny-sdxl")));
  EXPECT_EQ(engine->info().default_width, 64);
  EXPECT_EQ(engine->info().default_height, 64);
}

TEST(SdxlRequests, GuidanceRescaleAndNegativeMicroConditioningChangeTheImageAndStayBatchInvariant) {
  ASSERT_OK_AND_ASSIGN(auto engine, Engine::Load(ModelPath("tiny-sdxl")));
  RenderRequest req;
  req.steps = 3;
  req.keep_latents = true;
  RenderItem a{"a red fox", "blurry", 5, 6.0};
  RenderItem b = a;
  b.seed = 6;
  b.guidance_rescale = 0.7;
  b.negative_micro.original_width = b.negative_micro.original_height = 32;
  b.negative_micro.target_width = b.negative_micro.target_height = 32;
  req.items = {a, b};
  ASSERT_OK_AND_ASSIGN(RenderResult both, engine->Render(req));
  for (size_t i = 0; i < 2; ++i) {
    RenderRequest one = req;
    one.items = {req.items[i]};
    ASSERT_OK_AND_ASSIGN(RenderResult single, engine->Render(one));
    // Equal up to the float rounding of a larger GEMM batch (as for SD 1.x).
    at::Tensor lb = at::from_blob(both.latents.data(), both.latents_shape, at::kFloat)[i];
    at::Tensor ls = at::from_blob(single.latents.data(), single.latents_shape, at::kFloat)[0];
    EXPECT_LE(MaxAbsDiff(lb, ls), 1e-4) << "image " << i;
    RenderRequest plain = one;
    plain.items[0].guidance_rescale = 0;
    plain.items[0].negative_micro = {};
    ASSERT_OK_AND_ASSIGN(RenderResult p, engine->Render(plain));
    at::Tensor lp = at::from_blob(p.latents.data(), p.latents_shape, at::kFloat)[0];
    if (i == 1) {
      EXPECT_GT(MaxAbsDiff(lp, ls), 1e-2) << "guidance rescale and negative sizes must matter";
    } else {
      EXPECT_EQ(MaxAbsDiff(lp, ls), 0.0);
    }
  }
}

// ---- SDXL single-file checkpoints (original Stability / A1111 layout) ----

// A diffusers UNet name -> the LDM (sgm) name, the direction of diffusers'
// convert_diffusers_to_original_sdxl.py / the reverse of single_file_utils'
// convert_ldm_unet_checkpoint, written independently of the loader. L = 1
// layer per block (tiny-sdxl); `attn[i]`: up block i has attentions.
std::string DiffusersUnetToLdm(const std::string& k, int L, const std::vector<bool>& up_attn) {
  auto starts = [&](const std::string& p) { return k.rfind(p, 0) == 0; };
  auto rest_after = [&](int dots) {  // the key after its first `dots` components
    size_t pos = 0;
    for (int d = 0; d < dots; ++d) pos = k.find('.', pos) + 1;
    return k.substr(pos);
  };
  auto index = [&](int component) {
    size_t pos = 0;
    for (int d = 0; d < component; ++d) pos = k.find('.', pos) + 1;
    return std::stoi(k.substr(pos, k.find('.', pos) - pos));
  };
  auto resnet = [](std::string r) {
    static const std::pair<const char*, const char*> kMap[] = {
        {"norm1.", "in_layers.0."},   {"conv1.", "in_layers.2."},  {"time_emb_proj.", "emb_layers.1."},
        {"norm2.", "out_layers.0."},  {"conv2.", "out_layers.3."}, {"conv_shortcut.", "skip_connection."}};
    for (const auto& [from, to] : kMap) {
      if (r.rfind(from, 0) == 0) return std::string(to) + r.substr(std::strlen(from));
    }
    return r;
  };
  static const std::pair<const char*, const char*> kTop[] = {
      {"time_embedding.linear_1.", "time_embed.0."}, {"time_embedding.linear_2.", "time_embed.2."},
      {"add_embedding.linear_1.", "label_emb.0.0."}, {"add_embedding.linear_2.", "label_emb.0.2."},
      {"conv_in.", "input_blocks.0.0."},             {"conv_norm_out.", "out.0."},
      {"conv_out.", "out.2."}};
  for (const auto& [from, to] : kTop) {
    if (starts(from)) return std::string(to) + k.substr(std::strlen(from));
  }
  if (starts("down_blocks.")) {
    const int i = index(1);
    if (k.find(".downsamplers.0.conv.") != std::string::npos) {
      return "input_blocks." + std::to_string((i + 1) * (L + 1)) + ".0.op." + rest_after(5);
    }
    const int j = index(3);
    const bool attn = k.find(".attentions.") != std::string::npos;
    const std::string block = "input_blocks." + std::to_string(1 + i * (L + 1) + j);
    return attn ? block + ".1." + rest_after(4) : block + ".0." + resnet(rest_after(4));
  }
  if (starts("mid_block.")) {
    if (starts("mid_block.attentions.0.")) return "middle_block.1." + rest_after(3);
    return "middle_block." + std::to_string(index(2) == 0 ? 0 : 2) + "." + resnet(rest_after(3));
  }
  if (starts("up_blocks.")) {
    const int i = index(1);
    if (k.find(".upsamplers.0.conv.") != std::string::npos) {
      return "output_blocks." + std::to_string(i * (L + 1) + L) + "." + (up_attn[i] ? "2" : "1") + ".conv." +
             rest_after(5);
    }
    const int j = index(3);
    const bool attn = k.find(".attentions.") != std::string::npos;
    const std::string block = "output_blocks." + std::to_string(i * (L + 1) + j);
    return attn ? block + ".1." + rest_after(4) : block + ".0." + resnet(rest_after(4));
  }
  ADD_FAILURE() << "unmapped UNet key " << k;
  return k;
}

// tiny-sdxl as one LDM-layout file: conditioner.embedders.0.transformer.* (CLIP-L, transformers' names),
// conditioner.embedders.1.model.* (OpenCLIP: fused in_proj, text_projection transposed),
// model.diffusion_model.*, first_stage_model.*.
std::string WriteSdxlSingleFile() {
  std::vector<std::pair<std::string, at::Tensor>> out;
  auto read = [](const std::string& rel) {
    auto t = ReadSafetensors(ModelPath("tiny-sdxl/" + rel));
    EXPECT_TRUE(t.ok()) << t.status().ToString();
    return t.ok() ? *t : std::map<std::string, at::Tensor>{};
  };
  for (auto& [name, t] : read("unet/diffusion_pytorch_model.safetensors")) {
    out.emplace_back("model.diffusion_model." + DiffusersUnetToLdm(name, 1, {true, false}), t);
  }
  for (auto& [name, t] : read("text_encoder/model.safetensors")) {
    out.emplace_back("conditioner.embedders.0.transformer." + name, t);
  }
  auto te2 = read("text_encoder_2/model.safetensors");
  const std::string p2 = "conditioner.embedders.1.model.";
  std::set<std::string> used;
  auto take = [&](const std::string& name) {
    used.insert(name);
    return te2.at(name);
  };
  out.emplace_back(p2 + "token_embedding.weight", take("text_model.embeddings.token_embedding.weight"));
  out.emplace_back(p2 + "positional_embedding", take("text_model.embeddings.position_embedding.weight"));
  out.emplace_back(p2 + "ln_final.weight", take("text_model.final_layer_norm.weight"));
  out.emplace_back(p2 + "ln_final.bias", take("text_model.final_layer_norm.bias"));
  out.emplace_back(p2 + "text_projection", take("text_projection.weight").t().contiguous());
  out.emplace_back(p2 + "logit_scale", at::tensor(4.6052f));  // stored by real files, unused
  for (int l = 0; l < 3; ++l) {
    const std::string hf = "text_model.encoder.layers." + std::to_string(l) + ".";
    const std::string oc = p2 + "transformer.resblocks." + std::to_string(l) + ".";
    for (const char* kind : {"weight", "bias"}) {
      const std::string k = kind;
      out.emplace_back(oc + "attn.in_proj_" + k, at::cat({take(hf + "self_attn.q_proj." + k),
                                                          take(hf + "self_attn.k_proj." + k),
                                                          take(hf + "self_attn.v_proj." + k)}, 0));
      out.emplace_back(oc + "attn.out_proj." + k, take(hf + "self_attn.out_proj." + k));
      out.emplace_back(oc + "ln_1." + k, take(hf + "layer_norm1." + k));
      out.emplace_back(oc + "ln_2." + k, take(hf + "layer_norm2." + k));
      out.emplace_back(oc + "mlp.c_fc." + k, take(hf + "mlp.fc1." + k));
      out.emplace_back(oc + "mlp.c_proj." + k, take(hf + "mlp.fc2." + k));
    }
  }
  EXPECT_EQ(used.size(), te2.size()) << "every text_encoder_2 tensor is written";
  auto vae = ReadSafetensors(WriteLdmVaeForTest("first_stage_model."));
  EXPECT_TRUE(vae.ok());
  for (auto& [name, t] : *vae) out.emplace_back(name, t);
  const std::string path = MakeTempDir() + "/tiny-sdxl.safetensors";
  EXPECT_OK(WriteSafetensors(path, out));
  return path;
}

TEST(SdxlSingleFile, LoadsThroughTheSingleFileLoaderAndRendersAsTheFolder) {
  const std::string file = WriteSdxlSingleFile();
  EngineOptions options;
  options.model_config = ModelPath("tiny-sdxl");
  ASSERT_OK_AND_ASSIGN(auto engine, Engine::Load(file, options));
  EXPECT_TRUE(engine->info().sdxl);
  EXPECT_TRUE(engine->info().single_file);
  ASSERT_OK_AND_ASSIGN(auto folder, Engine::Load(ModelPath("tiny-sdxl")));
  for (const char* name : {"sdxl_euler_default", "sdxl_dpmpp2m_prompt2_microcond"}) {
    SCOPED_TRACE(name);
    const std::string golden = std::string("sdxl/") + name + ".safetensors";
    auto g = LoadGolden(golden);
    RenderRequest req = SdxlRequest(nlohmann::json::parse(LoadGoldenMetadata(golden).at("case")));
    ASSERT_OK_AND_ASSIGN(RenderResult a, engine->Render(req));
    ASSERT_OK_AND_ASSIGN(RenderResult b, folder->Render(req));
    EXPECT_EQ(a.latents, b.latents) << "the same weights must give the same latents";
    EXPECT_EQ(a.images[0].pixels, b.images[0].pixels);
    at::Tensor latents = at::from_blob(a.latents.data(), a.latents_shape, at::kFloat);
    EXPECT_LE(MaxAbsDiff(latents, g["latents_final"]), 1e-3);
  }
  // Without a folder to describe it, a clear refusal.
  auto bare = Engine::Load(file);
  ASSERT_FALSE(bare.ok());
  EXPECT_NE(bare.status().message().find("--model-config"), std::string::npos) << bare.status().ToString();
  EXPECT_NE(bare.status().message().find("SDXL"), std::string::npos) << bare.status().ToString();
}

}  // namespace
}  // namespace sdfarm::engine
