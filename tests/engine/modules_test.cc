// The three networks against transformers / diffusers outputs on the tiny
// fixtures (golden/<model>/{text_encoder,unet,vae}.safetensors): max abs error
// <= 1e-4 in float32 on the CPU.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include "tests/engine/golden.h"
#include "worker/engine/component_loader.h"

namespace sdfarm::engine {
namespace {

using ::sdfarm::testing::LoadGolden;
using ::sdfarm::testing::MaxAbsDiff;
using ::sdfarm::testing::ModelPath;

constexpr double kTol = 1e-4;

class ModulesTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ModulesTest, TextEncoderMatchesTransformers) {
  c10::InferenceMode guard;
  const std::string model = GetParam();
  auto golden = LoadGolden(model + "/text_encoder.safetensors");
  ASSERT_FALSE(golden.empty());
  ASSERT_OK_AND_ASSIGN(auto te, LoadTextEncoder(ModelPath(model + "/text_encoder"), at::kCPU, at::kFloat));
  auto out = te->Forward(golden["input_ids"], /*output_hidden_states=*/true);
  EXPECT_LE(MaxAbsDiff(out.last_hidden_state, golden["last_hidden_state"]), kTol);
  EXPECT_LE(MaxAbsDiff(out.pooler_output, golden["pooler_output"]), kTol);
  ASSERT_EQ(static_cast<int64_t>(out.hidden_states.size()), golden["hidden_states"].size(0));
  for (size_t l = 0; l < out.hidden_states.size(); ++l) {
    EXPECT_LE(MaxAbsDiff(out.hidden_states[l], golden["hidden_states"][l]), kTol) << "layer " << l;
  }
  // clip skip n: final_layer_norm of the n-th last hidden state; n = 1 is last_hidden_state.
  EXPECT_LE(MaxAbsDiff(te->Encode(golden["input_ids"], 1), golden["last_hidden_state"]), kTol);
  at::Tensor skip2 = te->Encode(golden["input_ids"], 2);
  EXPECT_GT(MaxAbsDiff(skip2, golden["last_hidden_state"]), 1e-3);
}

TEST_P(ModulesTest, UNetMatchesDiffusers) {
  c10::InferenceMode guard;
  const std::string model = GetParam() == "tiny-sd" ? "tiny-sd" : GetParam();
  auto g = LoadGolden(model + "/unet.safetensors");
  ASSERT_FALSE(g.empty());
  ASSERT_OK_AND_ASSIGN(auto unet, LoadUNet(ModelPath(model + "/unet"), at::kCPU, at::kFloat));
  const at::Tensor& ctx = g["encoder_hidden_states"];
  EXPECT_LE(MaxAbsDiff(unet->Forward(g["sample"], g["timestep_a"].reshape({}), ctx), g["out_a"]), kTol);
  EXPECT_LE(MaxAbsDiff(unet->Forward(g["sample"], g["timestep_b"].reshape({}), ctx), g["out_b"]), kTol);
  EXPECT_LE(MaxAbsDiff(unet->Forward(g["sample"], g["timestep_c"], ctx), g["out_c"]), kTol);
  EXPECT_LE(MaxAbsDiff(unet->Forward(g["sample_odd"], g["timestep_odd"].reshape({}), ctx), g["out_odd"]), kTol);
}

// Prompt chunking gives contexts of 77 * k tokens: cross-attention takes any
// length. Attending to the same keys twice over gives the same weighted
// average (every softmax weight halves), so a context repeated along the
// sequence axis must give diffusers' output for the original context.
TEST_P(ModulesTest, UNetTakesAnyContextLength) {
  c10::InferenceMode guard;
  auto g = LoadGolden(GetParam() + "/unet.safetensors");
  ASSERT_FALSE(g.empty());
  ASSERT_OK_AND_ASSIGN(auto unet, LoadUNet(ModelPath(GetParam() + "/unet"), at::kCPU, at::kFloat));
  const at::Tensor& ctx = g["encoder_hidden_states"];
  const at::Tensor doubled = at::cat({ctx, ctx}, 1);
  ASSERT_EQ(doubled.size(1), 154);
  EXPECT_LE(MaxAbsDiff(unet->Forward(g["sample"], g["timestep_a"].reshape({}), doubled), g["out_a"]), kTol);
  // And another context of another length changes the output.
  const at::Tensor longer = at::cat({ctx, at::zeros_like(ctx)}, 1);
  EXPECT_GT(MaxAbsDiff(unet->Forward(g["sample"], g["timestep_a"].reshape({}), longer), g["out_a"]), 1e-3);
}

INSTANTIATE_TEST_SUITE_P(Models, ModulesTest, ::testing::Values("tiny-sd", "tiny-sd-v2"));

TEST(UNetInpaint, NineChannelUNetMatchesDiffusers) {
  c10::InferenceMode guard;
  auto g = LoadGolden("tiny-sd-inpaint/unet.safetensors");
  ASSERT_FALSE(g.empty());
  ASSERT_OK_AND_ASSIGN(auto unet, LoadUNet(ModelPath("tiny-sd-inpaint/unet"), at::kCPU, at::kFloat));
  EXPECT_EQ(unet->config().in_channels, 9);
  const at::Tensor& ctx = g["encoder_hidden_states"];
  EXPECT_LE(MaxAbsDiff(unet->Forward(g["sample"], g["timestep_a"].reshape({}), ctx), g["out_a"]), kTol);
  EXPECT_LE(MaxAbsDiff(unet->Forward(g["sample"], g["timestep_c"], ctx), g["out_c"]), kTol);
  EXPECT_LE(MaxAbsDiff(unet->Forward(g["sample_odd"], g["timestep_odd"].reshape({}), ctx), g["out_odd"]), kTol);
}

TEST(Vae, DecodeAndEncodeMatchDiffusers) {
  c10::InferenceMode guard;
  auto g = LoadGolden("tiny-sd/vae.safetensors");
  ASSERT_FALSE(g.empty());
  ASSERT_OK_AND_ASSIGN(auto vae, LoadVae(ModelPath("tiny-sd/vae"), at::kCPU, at::kFloat));
  EXPECT_EQ(vae->config().downscale_factor(), 8);
  EXPECT_DOUBLE_EQ(vae->config().scaling_factor, 0.18215);
  EXPECT_LE(MaxAbsDiff(vae->Decode(g["latents"]), g["decoded"]), kTol);
  EXPECT_LE(MaxAbsDiff(vae->Decode(g["latents_nonsquare"]), g["decoded_nonsquare"]), kTol);
  auto dist = vae->Encode(g["image"]);
  EXPECT_LE(MaxAbsDiff(dist.mean, g["enc_mean"]), kTol);
  EXPECT_LE(MaxAbsDiff(dist.logvar, g["enc_logvar"]), kTol);
  EXPECT_LE(MaxAbsDiff(dist.std, g["enc_std"]), kTol);
  at::Generator gen = at::detail::createCPUGenerator(7);
  at::Tensor sample = dist.mean + dist.std * at::randn(dist.mean.sizes(), gen, at::kFloat);
  EXPECT_LE(MaxAbsDiff(sample, g["enc_sample_seed7"]), kTol);
}

}  // namespace
}  // namespace sdfarm::engine
