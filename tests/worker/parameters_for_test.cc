// engine::ParametersFor is the one place where the A1111 "parameters" text of
// a rendered image is decided, for sdfarm-render and the farm's workers alike.
// (farm_worker_test.cc checks that a worker's PNG equals sdfarm-render's byte
// for byte.)
#include <gtest/gtest.h>

#include "worker/engine/a1111_parameters.h"
#include "worker/engine/engine.h"

namespace sdfarm::engine {
namespace {

ModelInfo Model() {
  ModelInfo m;
  m.name = "sd15";
  m.hash = "1a2b3c4d5e";
  m.default_sampler = "pndm";
  return m;
}

RenderRequest Request(const std::string& sampler) {
  RenderRequest r;
  r.steps = 30;
  r.sampler = sampler;
  r.items = {{"a red fox, snow", "blurry", 7, 7.5}};
  return r;
}

TEST(ParametersFor, WritesWhatSdfarmRenderWrites) {
  const RenderRequest r = Request("euler_a");
  EXPECT_EQ(FormatA1111Parameters(ParametersFor(Model(), r, r.items[0], 512, 768, "sdfarm 0.1.0")),
            "a red fox, snow\n"
            "Negative prompt: blurry\n"
            "Steps: 30, Sampler: Euler a, CFG scale: 7.5, Seed: 7, Size: 512x768, Model hash: 1a2b3c4d5e, "
            "Model: sd15, Version: sdfarm 0.1.0");
}

TEST(ParametersFor, LeavesOutTheNegativePromptWithoutGuidance) {
  RenderRequest r = Request("dpmpp_2m_karras");
  r.items[0].guidance_scale = 1.0;
  EXPECT_EQ(FormatA1111Parameters(ParametersFor(Model(), r, r.items[0], 64, 64, "sdfarm 0.1.0")),
            "a red fox, snow\n"
            "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 1, Seed: 7, Size: 64x64, Model hash: 1a2b3c4d5e, "
            "Model: sd15, Version: sdfarm 0.1.0");
}

TEST(ParametersFor, UsesTheModelsSamplerWhenTheRequestHasNone) {
  const RenderRequest r = Request("");
  EXPECT_EQ(ParametersFor(Model(), r, r.items[0], 64, 64, "v").sampler, "PNDM");
}

TEST(ParametersFor, RecordsStrengthAndClipSkipWhenTheyApply) {
  RenderRequest r = Request("ddim");
  r.clip_skip = 2;
  r.strength = 0.6;
  Image init;
  init.width = init.height = 8;
  init.channels = 3;
  init.pixels.assign(8 * 8 * 3, 0);
  r.init_image = init;
  const GenerationParameters p = ParametersFor(Model(), r, r.items[0], 8, 8, "sdfarm 0.1.0");
  EXPECT_EQ(p.denoising_strength, 0.6);
  EXPECT_EQ(p.clip_skip, 2);
  EXPECT_EQ(FormatA1111Parameters(p),
            "a red fox, snow\n"
            "Negative prompt: blurry\n"
            "Steps: 30, Sampler: DDIM, CFG scale: 7.5, Seed: 7, Size: 8x8, Model hash: 1a2b3c4d5e, Model: sd15, "
            "Denoising strength: 0.6, Clip skip: 2, Version: sdfarm 0.1.0");
  r.clip_skip = 1;
  r.init_image.reset();
  const GenerationParameters plain = ParametersFor(Model(), r, r.items[0], 8, 8, "sdfarm 0.1.0");
  EXPECT_FALSE(plain.denoising_strength.has_value());
  EXPECT_FALSE(plain.clip_skip.has_value());
}

TEST(ParametersFor, RecordsASwappedVaeAndLorasAsA1111Does) {
  ModelInfo m = Model();
  m.vae_name = "vae-ft-mse-840000";
  m.vae_hash = "735e4c3a44";
  RenderRequest r = Request("euler");
  r.loras = {{"/loras/style.safetensors", 0.5}, {"/loras/detail", 1.0}};
  const GenerationParameters p =
      ParametersFor(m, r, r.items[0], 512, 512, "sdfarm 0.1.0", {{"style", "0123456789ab"}, {"detail", "ba9876543210"}});
  // A1111: VAE hash and VAE after Model; the network extension's "Lora hashes"
  // (names without ':' or ',', 12-digit hashes) among the extra parameters, before Version.
  EXPECT_EQ(FormatA1111Parameters(p),
            "a red fox, snow\n"
            "Negative prompt: blurry\n"
            "Steps: 30, Sampler: Euler, CFG scale: 7.5, Seed: 7, Size: 512x512, Model hash: 1a2b3c4d5e, Model: sd15, "
            "VAE hash: 735e4c3a44, VAE: vae-ft-mse-840000, Lora hashes: \"style: 0123456789ab, detail: ba9876543210\", "
            "Lora weights: \"style: 0.5, detail: 1\", Version: sdfarm 0.1.0");
  auto back = ParseA1111Parameters(FormatA1111Parameters(p));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, p);
  // The prompt is not rewritten with <lora:...> tags.
  EXPECT_EQ(back->prompt, "a red fox, snow");
}

}  // namespace
}  // namespace sdfarm::engine
