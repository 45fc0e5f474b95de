// engine::ParametersFor is the one place where the A1111 "parameters" text of
// a rendered image is decided, for sdfarm-render and the farm's workers alike.
// (farm_worker_test.cc checks that a worker's PNG equals sdfarm-render's byte
// for byte.)
#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <vector>

#include "worker/engine/a1111_parameters.h"
#include "worker/engine/engine.h"
#include "worker/engine/scheduler.h"

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
            "Steps: 30, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, Seed: 7, Size: 512x768, "
            "Model hash: 1a2b3c4d5e, Model: sd15, Version: sdfarm 0.1.0");
}

// A1111's create_infotext writes a non-empty negative prompt whatever the CFG
// scale ("Negative prompt: " line when negative_prompt is non-empty), and so
// do we: at CFG <= 1 it does not change the image, but the text must say what
// was asked for (metadata.jsonl always had it).
TEST(ParametersFor, KeepsTheNegativePromptAtCfgOneOrLess) {
  for (double cfg : {1.0, 0.5, 0.0}) {
    RenderRequest r = Request("dpmpp_2m_karras");
    r.items[0].guidance_scale = cfg;
    const GenerationParameters p = ParametersFor(Model(), r, r.items[0], 64, 64, "sdfarm 0.1.0");
    EXPECT_EQ(p.negative_prompt, "blurry") << cfg;
    EXPECT_EQ(FormatA1111Parameters(p),
              "a red fox, snow\n"
              "Negative prompt: blurry\n"
              "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: " +
                  FormatNumber(cfg) + ", Seed: 7, Size: 64x64, Model hash: 1a2b3c4d5e, Model: sd15, Version: sdfarm 0.1.0");
    auto back = ParseA1111Parameters(FormatA1111Parameters(p));
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(back->negative_prompt, "blurry");
  }
  // An empty negative prompt still gets no line, as in A1111.
  RenderRequest r = Request("euler");
  r.items[0].negative_prompt = "";
  r.items[0].guidance_scale = 1.0;
  EXPECT_EQ(FormatA1111Parameters(ParametersFor(Model(), r, r.items[0], 64, 64, "v")).find("Negative prompt"),
            std::string::npos);
}

TEST(ParametersFor, UsesTheModelsSamplerWhenTheRequestHasNone) {
  const RenderRequest r = Request("");
  const GenerationParameters p = ParametersFor(Model(), r, r.items[0], 64, 64, "v");
  EXPECT_EQ(p.sampler, "PLMS");  // the model's pndm
  EXPECT_EQ(p.schedule_type, "Automatic");
}

// Acceptance table: every sampler our PNGs can carry and the exact text
// AUTOMATIC1111 (v1.9+) writes for the equivalent sampler. Values read from
// A1111's source (stable-diffusion-webui, modules/):
//  - "Sampler": the labels of sd_samplers_timesteps.samplers_timesteps
//    ('DDIM', 'PLMS') and sd_samplers_kdiffusion.samplers_k_diffusion
//    ('Euler a', 'Euler', 'LMS', 'DPM++ 2M'); pndm with skip_prk_steps is
//    PLMS; A1111 has no "DPM++ 2M Karras" sampler any more (v1.9 folded the
//    "... Karras" entries into 'DPM++ 2M' with options {'scheduler': 'karras'}).
//  - "Schedule type": processing.create_infotext writes p.scheduler right
//    after "Sampler" (the UI's default is 'Automatic'); KDiffusionSampler.
//    get_sigmas replaces it with scheduler.label when the scheduler it used is
//    not 'Automatic' (for DPM++ 2M on Automatic: 'Karras'). Labels from
//    sd_schedulers.schedulers: 'Automatic', 'Uniform' (uniform():
//    inner_model.get_sigmas(n), the model's own sigmas, what DDIM/PLMS/Euler/
//    LMS use on Automatic), 'Karras'.
//  - Reading back (sd_samplers.get_sampler_and_scheduler): a missing
//    "Schedule type" is 'Automatic', and 'Automatic' for 'DPM++ 2M' is Karras,
//    so plain dpmpp_2m must say 'Uniform'; an unknown sampler name becomes
//    samplers[0] ('DPM++ 2M', i.e. Karras): hence no "PNDM"/"DDPM" names.
//  - ddpm: A1111 has no DDPM sampler; DDIM with eta 1 is DDPM's ancestral
//    sampler, and CompVisSampler writes eta != 0 as 'Eta DDIM'
//    (eta_infotext_field), read back through ('Eta DDIM', 'eta_ddim') in
//    infotext_utils.infotext_to_setting_name_mapping.
struct A1111Row {
  std::string_view ours, sampler, schedule_type, text;
};

TEST(ParametersFor, A1111TextOfEverySampler) {
  const std::vector<A1111Row> table = {
      {"pndm", "PLMS", "Automatic", "Sampler: PLMS, Schedule type: Automatic, CFG scale"},
      {"ddim", "DDIM", "Automatic", "Sampler: DDIM, Schedule type: Automatic, CFG scale"},
      {"euler", "Euler", "Automatic", "Sampler: Euler, Schedule type: Automatic, CFG scale"},
      {"euler_a", "Euler a", "Automatic", "Sampler: Euler a, Schedule type: Automatic, CFG scale"},
      {"lms", "LMS", "Automatic", "Sampler: LMS, Schedule type: Automatic, CFG scale"},
      {"dpmpp_2m", "DPM++ 2M", "Uniform", "Sampler: DPM++ 2M, Schedule type: Uniform, CFG scale"},
      {"dpmpp_2m_karras", "DPM++ 2M", "Karras", "Sampler: DPM++ 2M, Schedule type: Karras, CFG scale"},
      {"ddpm", "DDIM", "Automatic", "Sampler: DDIM, Schedule type: Automatic, CFG scale"},
  };
  ASSERT_EQ(table.size(), AllSamplers().size());
  for (const A1111Row& row : table) {
    auto parsed = ParseSampler(row.ours);
    ASSERT_TRUE(parsed.ok()) << row.ours;
    const Sampler s = *parsed;
    EXPECT_EQ(A1111Name(s).sampler, row.sampler) << row.ours;
    EXPECT_EQ(A1111Name(s).schedule_type, row.schedule_type) << row.ours;
    const RenderRequest r = Request(std::string(row.ours));
    const GenerationParameters p = ParametersFor(Model(), r, r.items[0], 512, 512, "sdfarm 0.1.0");
    const std::string text = FormatA1111Parameters(p);
    EXPECT_NE(text.find(std::string("Steps: 30, ") + std::string(row.text)), std::string::npos) << text;
    const bool eta = row.ours == "ddpm";
    EXPECT_EQ(A1111Name(s).eta_ddim, eta ? "1" : "") << row.ours;
    EXPECT_EQ(text.find(", Eta DDIM: 1, Version: sdfarm 0.1.0") != std::string::npos, eta) << text;
    auto back = ParseA1111Parameters(text);
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(*back, p) << text;
    EXPECT_EQ(back->sampler, row.sampler);
    EXPECT_EQ(back->schedule_type, row.schedule_type);
  }
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
            "Steps: 30, Sampler: DDIM, Schedule type: Automatic, CFG scale: 7.5, Seed: 7, Size: 8x8, "
            "Model hash: 1a2b3c4d5e, Model: sd15, Denoising strength: 0.6, Clip skip: 2, Version: sdfarm 0.1.0");
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
            "Steps: 30, Sampler: Euler, Schedule type: Automatic, CFG scale: 7.5, Seed: 7, Size: 512x512, "
            "Model hash: 1a2b3c4d5e, Model: sd15, VAE hash: 735e4c3a44, VAE: vae-ft-mse-840000, Lora hashes: \"style: 0123456789ab, detail: ba9876543210\", "
            "Lora weights: \"style: 0.5, detail: 1\", Version: sdfarm 0.1.0");
  auto back = ParseA1111Parameters(FormatA1111Parameters(p));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, p);
  // The prompt is not rewritten with <lora:...> tags.
  EXPECT_EQ(back->prompt, "a red fox, snow");
}

}  // namespace
}  // namespace sdfarm::engine
