// Configs as published: the SD 1.5 / 2.1 hub files (written by diffusers
// 0.6-0.10) leave out keys that later versions write. A missing key means the
// default of the class's constructor, exactly as from_pretrained fills it
// (../shared/golden/hubcfg/filled_defaults.json lists what diffusers and
// transformers filled for these key sets). The hubcfg fixtures hold tiny-sd's
// weights under such configs, so they must parse to tiny-sd's configs.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/engine/golden.h"
#include "worker/engine/engine.h"
#include "worker/engine/json_util.h"
#include "worker/engine/text_encoder.h"
#include "worker/engine/unet.h"
#include "worker/engine/vae.h"
#include "worker/engine/weights.h"

namespace sdfarm::engine {
namespace {

using ::sdfarm::testing::GoldenPath;
using ::sdfarm::testing::ModelPath;

template <typename Config>
Config Parse(const std::string& model, const std::string& component) {
  const std::string path = ModelPath(model + "/" + component + "/config.json");
  auto j = ReadJsonFile(path);
  EXPECT_TRUE(j.ok()) << j.status().ToString();
  if (!j.ok()) return Config{};
  auto c = Config::FromJson(*j, path);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? *c : Config{};
}

struct HubCase {
  std::string hub, same_as;
};

class HubConfigTest : public ::testing::TestWithParam<HubCase> {};

TEST_P(HubConfigTest, ParsesToTheConfigsOfTheFullFolder) {
  const auto& [hub, full] = GetParam();
  // The hub key set really lacks the keys whose defaults matter.
  auto filled = ReadJsonFile(GoldenPath("hubcfg/filled_defaults.json"));
  ASSERT_OK(filled);
  const auto& unet_filled = (*filled)[hub]["unet"]["filled_by_diffusers"];
  EXPECT_EQ(unet_filled["mid_block_type"], "UNetMidBlock2DCrossAttn");
  auto unet_file = ReadJsonFile(ModelPath(hub + "/unet/config.json"));
  ASSERT_OK(unet_file);
  EXPECT_FALSE(unet_file->contains("mid_block_type"));

  const UNetConfig unet = Parse<UNetConfig>(hub, "unet");
  EXPECT_EQ(unet.mid_block_type, "UNetMidBlock2DCrossAttn");
  EXPECT_EQ(unet.transformer_layers, std::vector<int64_t>(unet.block_out_channels.size(), 1));
  EXPECT_TRUE(unet == Parse<UNetConfig>(full, "unet"));
  EXPECT_TRUE(Parse<VaeConfig>(hub, "vae") == Parse<VaeConfig>(full, "vae"));
  EXPECT_DOUBLE_EQ(Parse<VaeConfig>(hub, "vae").scaling_factor,
                   (*filled)[hub]["vae"]["filled_by_diffusers"]["scaling_factor"].get<double>());
  EXPECT_TRUE(Parse<VaeConfig>(hub, "vae").force_upcast);
  EXPECT_TRUE(Parse<ClipTextConfig>(hub, "text_encoder") == Parse<ClipTextConfig>(full, "text_encoder"));
}

TEST_P(HubConfigTest, LoadsEveryWeightWithThePipelinesDefaultSize) {
  const auto& [hub, full] = GetParam();
  ASSERT_OK_AND_ASSIGN(auto engine, Engine::Load(ModelPath(hub)));
  auto filled = ReadJsonFile(GoldenPath("hubcfg/filled_defaults.json"));
  ASSERT_OK(filled);
  // StableDiffusionPipeline raises sample_size 8 to 64 for configs older than diffusers 0.9.
  const int expected = (*filled)[hub]["pipeline_adjustments"]["default_height_width"].get<int>();
  EXPECT_EQ(engine->info().default_width, expected);
  EXPECT_EQ(engine->info().default_height, expected);
  ASSERT_OK_AND_ASSIGN(auto reference, Engine::Load(ModelPath(full)));
  EXPECT_EQ(engine->info().prediction_type, reference->info().prediction_type);
  EXPECT_EQ(engine->info().default_sampler, reference->info().default_sampler);
}

INSTANTIATE_TEST_SUITE_P(Hub, HubConfigTest,
                         ::testing::Values(HubCase{"tiny-sd-hubcfg", "tiny-sd"},
                                           HubCase{"tiny-sd-v2-hubcfg", "tiny-sd-v2"}),
                         [](const auto& info) { return info.param.hub == "tiny-sd-hubcfg" ? "sd15" : "sd21"; });

TEST(ConfigDefaults, EmptyConfigsTakeTheConstructorDefaults) {
  // UNet2DConditionModel() and AutoencoderKL() and CLIPTextConfig() with no arguments.
  auto unet = UNetConfig::FromJson(nlohmann::json::object(), "unet");
  ASSERT_OK(unet);
  EXPECT_EQ(unet->block_out_channels, (std::vector<int64_t>{320, 640, 1280, 1280}));
  EXPECT_EQ(unet->down_block_types.size(), 4u);
  EXPECT_EQ(unet->mid_block_type, "UNetMidBlock2DCrossAttn");
  EXPECT_EQ(unet->layers_per_block, std::vector<int64_t>(4, 2));
  EXPECT_EQ(unet->heads, std::vector<int64_t>(4, 8));
  EXPECT_EQ(unet->cross_attention_dim, std::vector<int64_t>(4, 1280));
  EXPECT_EQ(unet->in_channels, 4);
  auto vae = VaeConfig::FromJson(nlohmann::json::object(), "vae");
  ASSERT_OK(vae);
  EXPECT_EQ(vae->block_out_channels, std::vector<int64_t>{64});
  EXPECT_EQ(vae->layers_per_block, 1);
  EXPECT_DOUBLE_EQ(vae->scaling_factor, 0.18215);
  auto clip = ClipTextConfig::FromJson(nlohmann::json::object(), "text_encoder");
  ASSERT_OK(clip);
  EXPECT_EQ(clip->hidden_size, 512);
  EXPECT_EQ(clip->intermediate_size, 2048);
  EXPECT_EQ(clip->num_attention_heads, 8);
  EXPECT_EQ(clip->num_hidden_layers, 12);
  EXPECT_EQ(clip->hidden_act, "quick_gelu");
}

TEST(ConfigDefaults, ExplicitNullMidBlockMeansNone) {
  auto unet = UNetConfig::FromJson(nlohmann::json{{"mid_block_type", nullptr}}, "unet");
  ASSERT_OK(unet);
  EXPECT_TRUE(unet->mid_block_type.empty());
}

TEST(ConfigDefaults, KeysThatWouldChangeTheNetworkAreNamed) {
  for (const auto& [key, value] : std::vector<std::pair<std::string, nlohmann::json>>{
           {"class_embed_type", "timestep"},
           {"addition_embed_type", "text"},
           {"resnet_time_scale_shift", "scale_shift"},
           {"time_embedding_type", "fourier"},
           {"encoder_hid_dim_type", "text_proj"}}) {
    auto unet = UNetConfig::FromJson(nlohmann::json{{key, value}}, "unet/config.json");
    ASSERT_FALSE(unet.ok()) << key;
    EXPECT_NE(unet.status().message().find(key), std::string::npos) << unet.status().message();
  }
  auto vae = VaeConfig::FromJson(nlohmann::json{{"shift_factor", 0.1159}}, "vae/config.json");
  ASSERT_FALSE(vae.ok());
  EXPECT_NE(vae.status().message().find("shift_factor"), std::string::npos);
  // Keys that do not change the network (or that we do not know) are accepted.
  EXPECT_OK(UNetConfig::FromJson(nlohmann::json{{"dropout", 0.0}, {"some_future_option", 1}}, "unet"));
  EXPECT_OK(ClipTextConfig::FromJson(nlohmann::json{{"projection_dim", 768}, {"attention_dropout", 0.0}}, "te"));
}

TEST(ConfigDefaults, RealSd15AndSd21ConfigsParse) {
  for (const std::string model : {"configs/sd15", "configs/sd21"}) {
    const UNetConfig unet = Parse<UNetConfig>(model, "unet");
    EXPECT_EQ(unet.mid_block_type, "UNetMidBlock2DCrossAttn") << model;
    EXPECT_EQ(unet.block_out_channels, (std::vector<int64_t>{320, 640, 1280, 1280})) << model;
    EXPECT_EQ(Parse<VaeConfig>(model, "vae").layers_per_block, 2) << model;
  }
}

}  // namespace
}  // namespace sdfarm::engine

namespace sdfarm::engine {
namespace {

template <typename Module, typename Config>
int64_t CountParameters(const std::string& model, const std::string& component) {
  Module module(Parse<Config>(model, component));
  ParamSet params;
  module.Declare(params.Root());
  return params.NumElements();
}

// The networks the real configs describe have exactly the published sizes
// (../shared/models/README.md: counted by instantiating them with diffusers
// and transformers). sdfarm-mkmodel declares its modules the same way.
TEST(ConfigDefaults, RealConfigsGiveThePublishedParameterCounts) {
  EXPECT_EQ((CountParameters<UNet, UNetConfig>("configs/sd15", "unet")), 859520964);
  EXPECT_EQ((CountParameters<Vae, VaeConfig>("configs/sd15", "vae")), 83653863);
  EXPECT_EQ((CountParameters<ClipTextModel, ClipTextConfig>("configs/sd15", "text_encoder")), 123060480);
  EXPECT_EQ((CountParameters<UNet, UNetConfig>("configs/sd21", "unet")), 865910724);
  EXPECT_EQ((CountParameters<Vae, VaeConfig>("configs/sd21", "vae")), 83653863);
  EXPECT_EQ((CountParameters<ClipTextModel, ClipTextConfig>("configs/sd21", "text_encoder")), 340387840);
}

}  // namespace
}  // namespace sdfarm::engine
