// Single-file checkpoints (original LDM / A1111 layout), external VAEs and the
// tensor-source seam: configs inferred from tensors + yaml equal the diffusers
// folders', components match the golden outputs, and bad inputs are refused
// with messages that say what to do.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "tests/engine/golden.h"
#include "worker/engine/component_loader.h"
#include "worker/engine/engine.h"
#include "worker/engine/json_util.h"
#include "worker/engine/safetensors.h"
#include "worker/engine/sha256.h"
#include "worker/engine/single_file.h"
#include "worker/engine/weights.h"

namespace sdfarm::engine {
namespace {

namespace fs = std::filesystem;
using ::sdfarm::testing::LoadGolden;
using ::sdfarm::testing::MakeTempDir;
using ::sdfarm::testing::MaxAbsDiff;
using ::sdfarm::testing::ModelPath;

constexpr double kTol = 1e-4;

std::string SingleFile(const std::string& name) { return ModelPath("single_file/" + name); }

// Diffusers VAE name -> LDM name (the direction of diffusers'
// convert_diffusers_to_original_stable_diffusion.py), written independently of
// the loader's LDM -> diffusers mapping.
std::string DiffusersVaeToLdm(std::string k, int levels) {
  auto rep = [&](const std::string& from, const std::string& to) {
    size_t p = k.find(from);
    if (p != std::string::npos) k.replace(p, from.size(), to);
  };
  rep("conv_norm_out", "norm_out");
  rep("mid_block.attentions.0.group_norm", "mid.attn_1.norm");
  rep("mid_block.attentions.0.to_q", "mid.attn_1.q");
  rep("mid_block.attentions.0.to_k", "mid.attn_1.k");
  rep("mid_block.attentions.0.to_v", "mid.attn_1.v");
  rep("mid_block.attentions.0.to_out.0", "mid.attn_1.proj_out");
  rep("mid_block.resnets.0", "mid.block_1");
  rep("mid_block.resnets.1", "mid.block_2");
  rep("conv_shortcut", "nin_shortcut");
  rep("downsamplers.0", "downsample");
  rep("upsamplers.0", "upsample");
  rep(".resnets.", ".block.");
  rep("encoder.down_blocks.", "encoder.down.");
  if (k.rfind("decoder.up_blocks.", 0) == 0) {
    const size_t start = std::string("decoder.up_blocks.").size();
    const size_t dot = k.find('.', start);
    const int i = std::stoi(k.substr(start, dot - start));
    k = "decoder.up." + std::to_string(levels - 1 - i) + k.substr(dot);
  }
  return k;
}

// tiny-sd-vae-alt's weights as an LDM single-file VAE (attention as 1x1 convs, as real files store them).
std::string WriteLdmVae(const std::string& prefix) {
  auto tensors = ReadSafetensors(ModelPath("tiny-sd-vae-alt/diffusion_pytorch_model.safetensors"));
  EXPECT_TRUE(tensors.ok());
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (auto& [name, t] : *tensors) {
    at::Tensor v = t;
    if (name.find("mid_block.attentions.0.to_") != std::string::npos && t.dim() == 2) v = t.reshape({t.size(0), t.size(1), 1, 1});
    out.emplace_back(prefix + DiffusersVaeToLdm(name, 4), v);
  }
  const std::string path = MakeTempDir() + "/alt-vae.safetensors";
  EXPECT_OK(WriteSafetensors(path, out));
  return path;
}

TEST(SingleFile, LdmVaeNamesMapToDiffusers) {
  EXPECT_EQ(LdmVaeKeyToDiffusers("decoder.up.3.block.0.nin_shortcut.weight", 4),
            "decoder.up_blocks.0.resnets.0.conv_shortcut.weight");
  EXPECT_EQ(LdmVaeKeyToDiffusers("encoder.down.1.downsample.conv.bias", 4),
            "encoder.down_blocks.1.downsamplers.0.conv.bias");
  EXPECT_EQ(LdmVaeKeyToDiffusers("decoder.mid.attn_1.proj_out.weight", 4),
            "decoder.mid_block.attentions.0.to_out.0.weight");
  EXPECT_EQ(LdmVaeKeyToDiffusers("encoder.mid.block_2.conv1.weight", 4), "encoder.mid_block.resnets.1.conv1.weight");
  EXPECT_EQ(LdmVaeKeyToDiffusers("encoder.norm_out.weight", 4), "encoder.conv_norm_out.weight");
}

// The configs inferred from tensors + the tiny LDM yaml are tiny-sd's (SD 1.x) and tiny-sd-v2's (SD 2.x).
void ExpectSameUNet(const UNetConfig& a, const UNetConfig& b) {
  EXPECT_EQ(a.in_channels, b.in_channels);
  EXPECT_EQ(a.out_channels, b.out_channels);
  EXPECT_EQ(a.sample_size, b.sample_size);
  EXPECT_EQ(a.down_block_types, b.down_block_types);
  EXPECT_EQ(a.up_block_types, b.up_block_types);
  EXPECT_EQ(a.mid_block_type, b.mid_block_type);
  EXPECT_EQ(a.block_out_channels, b.block_out_channels);
  EXPECT_EQ(a.layers_per_block, b.layers_per_block);
  EXPECT_EQ(a.heads, b.heads);
  EXPECT_EQ(a.cross_attention_dim, b.cross_attention_dim);
  EXPECT_EQ(a.transformer_layers, b.transformer_layers);
  EXPECT_EQ(a.use_linear_projection, b.use_linear_projection);
  EXPECT_EQ(a.upcast_attention, b.upcast_attention);
  EXPECT_EQ(a.norm_num_groups, b.norm_num_groups);
}
void ExpectSameVae(const VaeConfig& a, const VaeConfig& b) {
  EXPECT_EQ(a.in_channels, b.in_channels);
  EXPECT_EQ(a.out_channels, b.out_channels);
  EXPECT_EQ(a.latent_channels, b.latent_channels);
  EXPECT_EQ(a.block_out_channels, b.block_out_channels);
  EXPECT_EQ(a.layers_per_block, b.layers_per_block);
  EXPECT_EQ(a.norm_num_groups, b.norm_num_groups);
  EXPECT_DOUBLE_EQ(a.scaling_factor, b.scaling_factor);
  EXPECT_EQ(a.sample_size, b.sample_size);
}

struct ConfigCase {
  std::string file, yaml, folder;
};

class InferredConfigTest : public ::testing::TestWithParam<ConfigCase> {};

TEST_P(InferredConfigTest, EqualsTheDiffusersFolder) {
  const ConfigCase& c = GetParam();
  SingleFileOptions o;
  o.original_config = SingleFile(c.yaml);
  ASSERT_OK_AND_ASSIGN(SingleFilePlan plan, PlanSingleFile(SingleFile(c.file), o));
  const std::string dir = ModelPath(c.folder);
  ASSERT_OK_AND_ASSIGN(auto unet_json, ReadJsonFile(dir + "/unet/config.json"));
  ASSERT_OK_AND_ASSIGN(auto vae_json, ReadJsonFile(dir + "/vae/config.json"));
  ASSERT_OK_AND_ASSIGN(auto text_json, ReadJsonFile(dir + "/text_encoder/config.json"));
  ASSERT_OK_AND_ASSIGN(UNetConfig want_unet, UNetConfig::FromJson(unet_json, "want"));
  ASSERT_OK_AND_ASSIGN(VaeConfig want_vae, VaeConfig::FromJson(vae_json, "want"));
  ASSERT_OK_AND_ASSIGN(UNetConfig got_unet, UNetConfig::FromJson(plan.unet_config, "got"));
  ASSERT_OK_AND_ASSIGN(VaeConfig got_vae, VaeConfig::FromJson(plan.vae_config, "got"));
  ExpectSameUNet(got_unet, want_unet);
  ExpectSameVae(got_vae, want_vae);
  // Text encoder: everything the tensors show. The head count does not show; the standard rule (width / 64)
  // cannot give the tiny models' 4 heads of width 8, so it stays unknown (null) for width 32.
  for (const char* key : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "max_position_embeddings", "hidden_act"}) {
    EXPECT_EQ(plan.text_config[key], text_json[key]) << key;
  }
  EXPECT_TRUE(plan.text_config["num_attention_heads"].is_null());
  EXPECT_EQ(plan.sd2, c.folder == "tiny-sd-v2");
  EXPECT_EQ(plan.scheduler_config.prediction_type, c.folder == "tiny-sd-v2" ? "v_prediction" : "epsilon");
  EXPECT_EQ(plan.default_sampler, "pndm");
  EXPECT_DOUBLE_EQ(plan.scheduler_config.beta_start, 0.00085);
  EXPECT_DOUBLE_EQ(plan.scheduler_config.beta_end, 0.012);
  EXPECT_EQ(plan.scheduler_config.beta_schedule, "scaled_linear");
  EXPECT_TRUE(plan.scheduler_config.skip_prk_steps);
  EXPECT_EQ(plan.scheduler_config.steps_offset, 1);
  EXPECT_EQ(plan.scheduler_config.timestep_spacing, std::optional<std::string>("leading"));
}

INSTANTIATE_TEST_SUITE_P(Tiny, InferredConfigTest,
                         ::testing::Values(ConfigCase{"tiny-sd.safetensors", "v1-inference-tiny.yaml", "tiny-sd"},
                                           ConfigCase{"tiny-sd-ema.fp16.safetensors", "v1-inference-tiny.yaml",
                                                      "tiny-sd"},
                                           ConfigCase{"tiny-sd-v2.fp16.safetensors", "v2-inference-v-tiny.yaml",
                                                      "tiny-sd-v2"}));

TEST(SingleFile, WithoutYamlTheStandardSd1ConfigIsInferredFromTheTensors) {
  ASSERT_OK_AND_ASSIGN(SingleFilePlan plan, PlanSingleFile(SingleFile("tiny-sd.safetensors"), {}));
  ASSERT_OK_AND_ASSIGN(UNetConfig unet, UNetConfig::FromJson(plan.unet_config, "got"));
  ASSERT_OK_AND_ASSIGN(auto want_json, ReadJsonFile(ModelPath("tiny-sd/unet/config.json")));
  ASSERT_OK_AND_ASSIGN(UNetConfig want, UNetConfig::FromJson(want_json, "want"));
  unet.sample_size = want.sample_size;  // no yaml: SD 1.x's 64 (512 px)
  ExpectSameUNet(unet, want);
  EXPECT_EQ(plan.unet_config["sample_size"], 64);
  EXPECT_FALSE(plan.tokenizer_dir.empty());
  EXPECT_TRUE(plan.pad_token.empty());
}

TEST(SingleFile, IgnoresEmaScheduleBuffersAndPositionIdsByDefault) {
  ASSERT_OK_AND_ASSIGN(SingleFilePlan plan, PlanSingleFile(SingleFile("tiny-sd-ema.fp16.safetensors"), {}));
  const auto& ignored = plan.unet.ignored();
  auto has = [&](const std::string& n) { return std::find(ignored.begin(), ignored.end(), n) != ignored.end(); };
  EXPECT_TRUE(has("betas"));
  EXPECT_TRUE(has("posterior_mean_coef2"));
  EXPECT_TRUE(has("model_ema.decay"));
  EXPECT_TRUE(has("model_ema.diffusion_modelinput_blocks00weight"));
  EXPECT_EQ(plan.unet.Find("conv_in.weight")->stored_as, "model.diffusion_model.input_blocks.0.0.weight");
}

TEST(SingleFile, EmaTakesTheUNetFromModelEma) {
  SingleFileOptions o;
  o.ema = true;
  o.model_config = ModelPath("tiny-sd");
  ASSERT_OK_AND_ASSIGN(SingleFilePlan plan, PlanSingleFile(SingleFile("tiny-sd-ema.fp16.safetensors"), o));
  EXPECT_EQ(plan.unet.Find("conv_in.weight")->stored_as, "model_ema.diffusion_modelinput_blocks00weight");
  EXPECT_EQ(plan.unet.Find("up_blocks.0.upsamplers.0.conv.weight")->stored_as,
            "model_ema.diffusion_modeloutput_blocks21convweight");
  ASSERT_OK_AND_ASSIGN(auto ema, LoadSingleFile(SingleFile("tiny-sd-ema.fp16.safetensors"), o, at::kCPU, at::kFloat));
  o.ema = false;
  ASSERT_OK_AND_ASSIGN(auto plain, LoadSingleFile(SingleFile("tiny-sd-ema.fp16.safetensors"), o, at::kCPU, at::kFloat));
  at::Tensor x = at::ones({1, 4, 8, 8}), ctx = at::ones({1, 77, 32}) * 0.1, t = at::tensor(500);
  EXPECT_GT(MaxAbsDiff(ema->unet->Forward(x, t, ctx), plain->unet->Forward(x, t, ctx)), 1e-3);
}

// tiny-sd.safetensors loads to tiny-sd exactly: the component golden files pass.
TEST(SingleFile, Sd1ComponentsMatchTheGoldenOutputs) {
  SingleFileOptions o;
  o.model_config = ModelPath("tiny-sd");
  ASSERT_OK_AND_ASSIGN(auto m, LoadSingleFile(SingleFile("tiny-sd.safetensors"), o, at::kCPU, at::kFloat));
  {
    auto g = LoadGolden("tiny-sd/text_encoder.safetensors");
    auto out = m->text_encoder->Forward(g["input_ids"], /*output_hidden_states=*/true);
    EXPECT_LE(MaxAbsDiff(out.last_hidden_state, g["last_hidden_state"]), kTol);
    EXPECT_LE(MaxAbsDiff(out.pooler_output, g["pooler_output"]), kTol);
  }
  {
    auto g = LoadGolden("tiny-sd/unet.safetensors");
    const at::Tensor& ctx = g["encoder_hidden_states"];
    EXPECT_LE(MaxAbsDiff(m->unet->Forward(g["sample"], g["timestep_a"].reshape({}), ctx), g["out_a"]), kTol);
    EXPECT_LE(MaxAbsDiff(m->unet->Forward(g["sample"], g["timestep_c"], ctx), g["out_c"]), kTol);
    EXPECT_LE(MaxAbsDiff(m->unet->Forward(g["sample_odd"], g["timestep_odd"].reshape({}), ctx), g["out_odd"]), kTol);
  }
  {
    auto g = LoadGolden("tiny-sd/vae.safetensors");
    EXPECT_LE(MaxAbsDiff(m->vae->Decode(g["latents"]), g["decoded"]), kTol);
    auto dist = m->vae->Encode(g["image"]);
    EXPECT_LE(MaxAbsDiff(dist.mean, g["enc_mean"]), kTol);
    EXPECT_LE(MaxAbsDiff(dist.logvar, g["enc_logvar"]), kTol);
  }
}

// The SD 2.x OpenCLIP tower (in_proj split into q/k/v) gives tiny-sd-v2's text encoder, up to fp16 rounding.
TEST(SingleFile, Sd2TextTowerMatchesTheGoldenOutput) {
  SingleFileOptions o;
  o.model_config = ModelPath("tiny-sd-v2");
  ASSERT_OK_AND_ASSIGN(auto m, LoadSingleFile(SingleFile("tiny-sd-v2.fp16.safetensors"), o, at::kCPU, at::kFloat));
  auto g = LoadGolden("tiny-sd-v2/text_encoder.safetensors");
  EXPECT_LE(MaxAbsDiff(m->text_encoder->Forward(g["input_ids"]).last_hidden_state, g["last_hidden_state"]), 2e-2);
  EXPECT_EQ(m->tokenizer->pad_id(), 0);
}

TEST(SingleFile, ModelInfoAndA1111Hash) {
  const std::string path = SingleFile("tiny-sd.safetensors");
  ASSERT_OK_AND_ASSIGN(auto engine, Engine::Load(path, {.model_config = ModelPath("tiny-sd")}));
  ASSERT_OK_AND_ASSIGN(std::string sha, Sha256File(path));
  EXPECT_EQ(engine->info().hash, sha.substr(0, 10));
  EXPECT_TRUE(engine->info().single_file);
  EXPECT_EQ(engine->info().name, "tiny-sd");
  EXPECT_EQ(engine->info().default_sampler, "pndm");
  EXPECT_EQ(engine->info().prediction_type, "epsilon");
}

TEST(DiffusersFolder, ModelHashIsSha256OverUnetTextEncoderVae) {
  const std::string dir = ModelPath("tiny-sd");
  ASSERT_OK_AND_ASSIGN(auto engine, Engine::Load(dir));
  Sha256 h;
  ASSERT_OK(Sha256File(dir + "/unet/diffusion_pytorch_model.safetensors", false, &h));
  ASSERT_OK(Sha256File(dir + "/text_encoder/model.safetensors", false, &h));
  ASSERT_OK(Sha256File(dir + "/vae/diffusion_pytorch_model.safetensors", false, &h));
  EXPECT_EQ(engine->info().hash, h.HexDigest().substr(0, 10));
  EXPECT_FALSE(engine->info().single_file);
}

// transformers 5 saves CLIPTextModel without the "text_model." prefix.
TEST(TensorSource, TextEncoderWithoutTextModelPrefixLoads) {
  const std::string dir = MakeTempDir() + "/text_encoder";
  fs::create_directories(dir);
  fs::copy_file(ModelPath("tiny-sd/text_encoder/config.json"), dir + "/config.json");
  ASSERT_OK_AND_ASSIGN(auto tensors, ReadSafetensors(ModelPath("tiny-sd/text_encoder/model.safetensors")));
  std::vector<std::pair<std::string, at::Tensor>> renamed;
  for (auto& [name, t] : tensors) {
    ASSERT_EQ(name.rfind("text_model.", 0), 0u) << name;
    renamed.emplace_back(name.substr(11), t);
  }
  ASSERT_OK(WriteSafetensors(dir + "/model.safetensors", renamed));
  ASSERT_OK_AND_ASSIGN(auto te, LoadTextEncoder(dir, at::kCPU, at::kFloat));
  auto g = LoadGolden("tiny-sd/text_encoder.safetensors");
  auto out = te->Forward(g["input_ids"]);
  EXPECT_LE(MaxAbsDiff(out.last_hidden_state, g["last_hidden_state"]), kTol);
  EXPECT_LE(MaxAbsDiff(out.pooler_output, g["pooler_output"]), kTol);
}

TEST(TensorSource, RenamedSourceStillRequiresAPerfectMatch) {
  ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Open(ModelPath("tiny-sd/text_encoder/model.safetensors")));
  TensorSource src = TensorSource::FromFile(file);
  ASSERT_OK_AND_ASSIGN(TensorSource renamed, src.Renamed([](const std::string& n) {
    return n == "text_model.final_layer_norm.bias" ? std::string("something.else") : n;
  }));
  ASSERT_OK_AND_ASSIGN(auto cfg_json, ReadJsonFile(ModelPath("tiny-sd/text_encoder/config.json")));
  ASSERT_OK_AND_ASSIGN(ClipTextConfig cfg, ClipTextConfig::FromJson(cfg_json, "cfg"));
  auto te = MakeTextEncoder(cfg, renamed, at::kCPU, at::kFloat);
  ASSERT_FALSE(te.ok());
  EXPECT_NE(te.status().message().find("text_model.final_layer_norm.bias"), std::string::npos)
      << te.status().message();
}

// ---------------------------------------------------------------- bad inputs

std::string LoadError(const std::string& path, const EngineOptions& o = {}) {
  auto e = Engine::Load(path, o);
  EXPECT_FALSE(e.ok()) << path;
  return e.ok() ? std::string() : e.status().message();
}

TEST(SingleFileErrors, PickleCheckpointIsRefusedUnread) {
  const std::string path = MakeTempDir() + "/model.ckpt";
  std::ofstream(path) << "not even read";
  const std::string msg = LoadError(path);
  EXPECT_NE(msg.find("pickle"), std::string::npos) << msg;
  EXPECT_NE(msg.find("safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("save_file"), std::string::npos) << msg;
}

TEST(SingleFileErrors, TruncatedFileNamesTheFile) {
  const std::string path = MakeTempDir() + "/cut.safetensors";
  {
    std::ifstream in(SingleFile("tiny-sd.safetensors"), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(path, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  }
  const std::string msg = LoadError(path, {.model_config = ModelPath("tiny-sd")});
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
}

TEST(SingleFileErrors, NotAStableDiffusionCheckpoint) {
  const std::string msg = LoadError(ModelPath("tiny-sd/vae/diffusion_pytorch_model.safetensors"));
  EXPECT_NE(msg.find("not a Stable Diffusion checkpoint"), std::string::npos) << msg;
}

TEST(SingleFileErrors, Sd2WithoutAHintIsAmbiguous) {
  const std::string msg = LoadError(SingleFile("tiny-sd-v2.fp16.safetensors"));
  EXPECT_NE(msg.find("--prediction-type"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--original-config"), std::string::npos) << msg;
}

TEST(SingleFileErrors, EmaOnAFileWithoutEma) {
  const std::string msg = LoadError(SingleFile("tiny-sd.safetensors"), {.model_config = ModelPath("tiny-sd"), .ema = true});
  EXPECT_NE(msg.find("no EMA weights"), std::string::npos) << msg;
}

TEST(SingleFileErrors, YamlAloneCannotGiveTheTinyTextEncoderHeads) {
  const std::string msg =
      LoadError(SingleFile("tiny-sd.safetensors"), {.original_config = SingleFile("v1-inference-tiny.yaml")});
  EXPECT_NE(msg.find("--model-config"), std::string::npos) << msg;
}

TEST(VaeSwapErrors, VaeOfTheWrongShapeIsRefused) {
  // A diffusers VAE folder with 8 latent channels (random weights): the UNet denoises 4.
  const std::string dir = MakeTempDir() + "/vae8";
  fs::create_directories(dir);
  ASSERT_OK_AND_ASSIGN(auto j, ReadJsonFile(ModelPath("tiny-sd/vae/config.json")));
  j["latent_channels"] = 8;
  std::ofstream(dir + "/config.json") << j.dump();
  ASSERT_OK_AND_ASSIGN(VaeConfig cfg, VaeConfig::FromJson(j, "vae8"));
  Vae vae(cfg);
  ParamSet params;
  vae.Declare(params.Root());
  RandomizeParams(params, 1, at::kCPU, at::kFloat);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& s : params.slots()) tensors.emplace_back(s.name, *s.tensor);
  ASSERT_OK(WriteSafetensors(dir + "/diffusion_pytorch_model.safetensors", tensors));
  const std::string msg = LoadError(ModelPath("tiny-sd"), {.vae = dir});
  EXPECT_NE(msg.find("latent channels"), std::string::npos) << msg;

  // A single-file VAE whose tensors do not fit: the text encoder file.
  const std::string msg2 = LoadError(ModelPath("tiny-sd"), {.vae = ModelPath("tiny-sd/text_encoder/model.safetensors")});
  EXPECT_NE(msg2.find("not an LDM VAE"), std::string::npos) << msg2;
}

TEST(VaeSwap, InfoNamesTheVae) {
  ASSERT_OK_AND_ASSIGN(auto engine, Engine::Load(ModelPath("tiny-sd"), {.vae = ModelPath("tiny-sd-vae-alt")}));
  ASSERT_OK_AND_ASSIGN(std::string sha, Sha256File(ModelPath("tiny-sd-vae-alt/diffusion_pytorch_model.safetensors")));
  EXPECT_EQ(engine->info().vae_name, "tiny-sd-vae-alt");
  EXPECT_EQ(engine->info().vae_hash, sha.substr(0, 10));
}

}  // namespace

// Shared with pipeline_test.cc's vae_swap case.
std::string WriteLdmVaeForTest(const std::string& prefix) { return WriteLdmVae(prefix); }

}  // namespace sdfarm::engine
