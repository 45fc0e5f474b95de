// sdfarm-render with SDXL models, as a user runs it: every shared SDXL golden
// case (diffusers 0.21.4 StableDiffusionXLPipeline on tiny-sdxl) rendered
// through the command-line flags (--prompt-2, --negative-2, the
// micro-conditioning sizes, --guidance-rescale) and compared pixel for pixel;
// the A1111 text it embeds; and the SDXL inputs it must refuse without
// writing anything. Also sdfarm-mkmodel with SDXL configs: the published
// parameter counts of SDXL base, and a random SDXL folder that renders.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "tests/engine/golden.h"
#include "worker/engine/a1111_parameters.h"
#include "worker/engine/png_io.h"
#include "worker/engine/safetensors.h"

namespace sdfarm::tools {
namespace {

namespace fs = std::filesystem;
using ::sdfarm::testing::LoadGolden;
using ::sdfarm::testing::MakeTempDir;
using ::sdfarm::testing::MaxAbsDiff;
using ::sdfarm::testing::ModelPath;

struct ProcessRun {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

std::string Quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += (c == '\'') ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

ProcessRun RunTool(const std::string& binary, const std::vector<std::string>& args) {
  std::string cmd = Quote(binary);
  for (const auto& a : args) cmd += " " + Quote(a);
  cmd += " 2>&1";
  ProcessRun r;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  std::array<char, 4096> buf;
  while (size_t n = fread(buf.data(), 1, buf.size(), p)) r.output.append(buf.data(), n);
  const int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

ProcessRun Render(const std::vector<std::string>& args) { return RunTool(SDFARM_RENDER_BIN, args); }

std::vector<std::string> Pngs(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.path().extension() == ".png") out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

at::Tensor Pixels(const engine::Image& img) {
  return at::from_blob(const_cast<uint8_t*>(img.pixels.data()), {img.height, img.width, img.channels}, at::kByte)
      .to(at::kInt);
}

struct GoldenCase {
  std::string file;
  std::vector<std::string> args;
};

// The flags equivalent to each case's diffusers call (see shared/golden/README.md, sdxl).
std::vector<GoldenCase> Cases() {
  return {
      {"sdxl/sdxl_euler_default.safetensors",
       {"--prompt", "a photograph of an astronaut riding a horse", "--steps", "10", "--guidance", "5", "--seed", "40",
        "--sampler", "model"}},
      {"sdxl/sdxl_euler_nocfg.safetensors",
       {"--prompt", "a red fox in the snow", "--steps", "8", "--guidance", "1", "--seed", "41", "--sampler", "model"}},
      {"sdxl/sdxl_euler_negative_64x96.safetensors",
       {"--prompt", "a futuristic city at night, neon lights", "--negative", "blurry, low quality", "--steps", "10",
        "--guidance", "7", "--seed", "42", "--size", "96x64", "--sampler", "model"}},
      // original_size (128, 96) and target_size (64, 64) are (height, width) in diffusers.
      {"sdxl/sdxl_dpmpp2m_prompt2_microcond.safetensors",
       {"--prompt", "a bowl of fruit on a table", "--prompt-2", "oil painting, still life, dramatic light",
        "--negative", "text", "--steps", "10", "--guidance", "6", "--seed", "43", "--original-size", "96x128",
        "--crop-top-left", "8,16", "--target-size", "64x64", "--sampler", "dpmpp_2m"}},
  };
}

TEST(RenderSdxlCli, EveryGoldenCaseMatchesDiffusers) {
  for (const GoldenCase& c : Cases()) {
    SCOPED_TRACE(c.file);
    auto g = LoadGolden(c.file);
    const std::string out = MakeTempDir();
    std::vector<std::string> args = {"--model", ModelPath("tiny-sdxl"), "--out", out, "--latents-out",
                                     out + "/latents.safetensors", "--quiet"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    ProcessRun r = Render(args);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    auto files = Pngs(out);
    ASSERT_EQ(files.size(), 1u);
    ASSERT_OK_AND_ASSIGN(engine::Image img, engine::ReadPng(files[0], 3));
    EXPECT_LE(MaxAbsDiff(Pixels(img), g["image_uint8"][0].to(at::kInt)), 2.0);
    ASSERT_OK_AND_ASSIGN(auto latents, engine::ReadSafetensors(out + "/latents.safetensors"));
    EXPECT_LE(MaxAbsDiff(latents.at("latents"), g["latents_final"]), 1e-3);
  }
}

TEST(RenderSdxlCli, ParametersRecordTheSdxlSettingsThatDifferFromA1111s) {
  const GoldenCase c = Cases()[3];
  const std::string out = MakeTempDir();
  std::vector<std::string> args = {"--model", ModelPath("tiny-sdxl"), "--out", out, "--quiet", "--negative-2",
                                   "cartoon", "--guidance-rescale", "0.5"};
  args.insert(args.end(), c.args.begin(), c.args.end());
  ProcessRun r = Render(args);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto files = Pngs(out);
  ASSERT_EQ(files.size(), 1u);
  ASSERT_OK_AND_ASSIGN(auto text, engine::ReadPngText(files[0]));
  ASSERT_EQ(text.size(), 1u);
  ASSERT_OK_AND_ASSIGN(engine::GenerationParameters p, engine::ParseA1111Parameters(text[0].second));
  EXPECT_EQ(p.prompt, "a bowl of fruit on a table");
  EXPECT_EQ(p.negative_prompt, "text");
  EXPECT_EQ(p.model, "tiny-sdxl");
  EXPECT_EQ(p.width, 64);
  std::map<std::string, std::string> extra(p.extra.begin(), p.extra.end());
  EXPECT_EQ(extra["Prompt 2"], "oil painting, still life, dramatic light");
  EXPECT_EQ(extra["Negative prompt 2"], "cartoon");
  EXPECT_EQ(extra["Original size"], "96x128");
  EXPECT_EQ(extra["Crop top-left"], "8,16");
  EXPECT_EQ(extra.count("Target size"), 0u);  // the render size: A1111's own
  EXPECT_EQ(extra["Guidance rescale"], "0.5");
}

TEST(RenderSdxlCli, ExplicitEmptyNegativeIsEncodedWhileNoNegativeGivesZeros) {
  auto render = [](const std::vector<std::string>& extra) {
    const std::string out = MakeTempDir();
    std::vector<std::string> args = {"--model", ModelPath("tiny-sdxl"), "--prompt", "a red fox", "--steps", "3",
                                     "--seed", "7", "--guidance", "5", "--out", out, "--quiet"};
    args.insert(args.end(), extra.begin(), extra.end());
    ProcessRun r = Render(args);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    auto files = Pngs(out);
    EXPECT_EQ(files.size(), 1u);
    auto img = engine::ReadPng(files.at(0), 3);
    EXPECT_TRUE(img.ok());
    return Pixels(*img);
  };
  at::Tensor zeros = render({});
  at::Tensor empty = render({"--negative", ""});
  EXPECT_GT(MaxAbsDiff(zeros, empty), 2.0);
}

TEST(RenderSdxlCli, BadInputsAreClearErrorsAndWriteNothing) {
  const std::string dir = MakeTempDir();
  // tiny-sdxl without its text_encoder_2 (links to everything else).
  const std::string broken = dir + "/no-te2";
  fs::create_directories(broken);
  for (const auto& e : fs::directory_iterator(ModelPath("tiny-sdxl"))) {
    if (e.path().filename() != "text_encoder_2") fs::create_symlink(e.path(), broken + "/" + e.path().filename().string());
  }
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::string sd1 = ModelPath("tiny-sd"), sdxl = ModelPath("tiny-sdxl");
  const std::vector<Case> cases = {
      {{"--model", sd1, "--prompt", "x", "--prompt-2", "y"}, "SDXL"},
      {{"--model", sd1, "--prompt", "x", "--negative-2", "y"}, "SDXL"},
      {{"--model", sd1, "--prompt", "x", "--original-size", "1024x1024"}, "SDXL"},
      {{"--model", sd1, "--prompt", "x", "--crop-top-left", "0,8"}, "SDXL"},
      {{"--model", sdxl, "--prompt", "x", "--size", "64x60"}, "multiples of 8"},
      {{"--model", sdxl, "--prompt", "x", "--width", "100"}, "multiples of 8"},
      {{"--model", sdxl, "--prompt", "x", "--original-size", "1024"}, "--original-size"},
      {{"--model", sdxl, "--prompt", "x", "--crop-top-left", "-1,0"}, "--crop-top-left"},
      {{"--model", sdxl, "--prompt", "x", "--negative-original-size", "512x512"}, "--negative-target-size"},
      {{"--model", sdxl, "--prompt", "x", "--guidance-rescale", "1.5"}, "--guidance-rescale"},
      {{"--model", sdxl, "--prompt", "x", "--clip-skip", "2"}, "clip skip"},
      {{"--model", broken, "--prompt", "x"}, "text_encoder_2"},
  };
  for (const auto& c : cases) {
    std::vector<std::string> args = c.args;
    args.insert(args.end(), {"--out", dir + "/out", "--steps", "2"});
    ProcessRun r = Render(args);
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_NE(r.exit_code, -1) << "crashed: " << r.output;
    EXPECT_NE(r.output.find("error"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(c.message), std::string::npos) << "expected '" << c.message << "' in: " << r.output;
    EXPECT_FALSE(fs::exists(dir + "/out")) << r.output;
  }
}

TEST(RenderSdxlCli, HelpDocumentsTheSdxlFlags) {
  ProcessRun r = Render({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  for (const char* flag : {"--prompt-2", "--negative-2", "--original-size", "--target-size", "--crop-top-left",
                           "--negative-original-size", "--negative-target-size", "--negative-crop-top-left",
                           "--guidance-rescale", "SDXL", "1024x1024"}) {
    EXPECT_NE(r.output.find(flag), std::string::npos) << flag;
  }
}

TEST(MkModelSdxl, CountOnlyGivesThePublishedSdxlParameterCounts) {
  // shared/models/README.md: stabilityai/stable-diffusion-xl-base-1.0 as diffusers 0.21.4 builds it.
  ProcessRun r = RunTool(SDFARM_MKMODEL_BIN, {"--config", ::sdfarm::testing::SharedPath("models/configs/sdxl"),
                                              "--count-only"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("unet 2567463684\n"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("vae 83653863\n"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("text_encoder 123060480\n"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("text_encoder_2 694659840\n"), std::string::npos) << r.output;
  // SD 1.5 through the same path (no text_encoder_2).
  ProcessRun sd15 = RunTool(SDFARM_MKMODEL_BIN, {"--config", ::sdfarm::testing::SharedPath("models/configs/sd15"),
                                                 "--count-only"});
  ASSERT_EQ(sd15.exit_code, 0) << sd15.output;
  EXPECT_NE(sd15.output.find("unet 859520964\n"), std::string::npos) << sd15.output;
  EXPECT_EQ(sd15.output.find("text_encoder_2"), std::string::npos) << sd15.output;
}

TEST(MkModelSdxl, ARandomSdxlFolderLoadsAndRenders) {
  const std::string dir = MakeTempDir();
  ProcessRun made = RunTool(SDFARM_MKMODEL_BIN, {"--config", ModelPath("tiny-sdxl"), "--out", dir + "/xl"});
  ASSERT_EQ(made.exit_code, 0) << made.output;
  EXPECT_TRUE(fs::exists(dir + "/xl/text_encoder_2/model.safetensors"));
  EXPECT_TRUE(fs::exists(dir + "/xl/tokenizer_2/vocab.json"));
  ProcessRun r = Render({"--model", dir + "/xl", "--prompt", "a fox", "--prompt-2", "an oil painting", "--steps", "2",
                         "--out", dir + "/out", "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(Pngs(dir + "/out").size(), 1u);
}

}  // namespace
}  // namespace sdfarm::tools
