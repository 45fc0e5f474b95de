// sdfarm-render and sdfarm-mkmodel as a user runs them: real processes, real
// files. Pixels are checked against diffusers' golden images.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include "tests/engine/golden.h"
#include "worker/engine/a1111_parameters.h"
#include "worker/engine/image_resize.h"
#include "worker/engine/png_io.h"
#include "worker/engine/safetensors.h"
#include "worker/engine/sha256.h"
#include "worker/tools/render_command.h"

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
  for (const auto& a : args) {
    cmd.push_back(' ');
    cmd.append(Quote(a));
  }
  cmd += " 2>&1";
  ProcessRun r;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  std::array<char, 4096> buf;
  while (size_t n = fread(buf.data(), 1, buf.size(), p)) r.output.append(buf.data(), n);
  int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

ProcessRun Render(const std::vector<std::string>& args) { return RunTool(SDFARM_RENDER_BIN, args); }

at::Tensor Pixels(const engine::Image& img) {
  return at::from_blob(const_cast<uint8_t*>(img.pixels.data()), {img.height, img.width, img.channels}, at::kByte)
      .to(at::kInt);
}

std::vector<std::string> Pngs(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ".png") out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

void WritePng(const std::string& path, const at::Tensor& hwc) {
  at::Tensor t = (hwc.dim() == 2 ? hwc.unsqueeze(2) : hwc).contiguous();
  engine::Image img;
  img.height = t.size(0);
  img.width = t.size(1);
  img.channels = t.size(2);
  img.pixels.assign(t.data_ptr<uint8_t>(), t.data_ptr<uint8_t>() + t.numel());
  ASSERT_OK(engine::WritePngAtomic(path, img));
}

TEST(RenderCli, Txt2ImgMatchesDiffusersAndEmbedsParameters) {
  auto g = LoadGolden("pipelines/sd_pndm_astronaut.safetensors");
  const std::string out = MakeTempDir();
  // --sampler model: the model's scheduler config (PNDM), as the diffusers pipeline.
  ProcessRun r = Render({"--model", ModelPath("tiny-sd"), "--prompt", "a photograph of an astronaut riding a horse",
                  "--seed", "0", "--steps", "15", "--guidance", "7.5", "--sampler", "model", "--width", "64",
                  "--height", "64", "--out", out, "--latents-out", out + "/latents.safetensors"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto files = Pngs(out);
  ASSERT_EQ(files.size(), 1u) << r.output;
  EXPECT_NE(files[0].find("seed0"), std::string::npos);
  EXPECT_NE(files[0].find("cfg7.5"), std::string::npos);
  ASSERT_OK_AND_ASSIGN(engine::Image img, engine::ReadPng(files[0], 3));
  EXPECT_LE(MaxAbsDiff(Pixels(img), g["image_uint8"][0].to(at::kInt)), 2.0);

  ASSERT_OK_AND_ASSIGN(auto text, engine::ReadPngText(files[0]));
  ASSERT_EQ(text.size(), 1u);
  EXPECT_EQ(text[0].first, "parameters");
  ASSERT_OK_AND_ASSIGN(engine::GenerationParameters p, engine::ParseA1111Parameters(text[0].second));
  EXPECT_EQ(p.prompt, "a photograph of an astronaut riding a horse");
  EXPECT_EQ(p.steps, 15);
  EXPECT_EQ(p.sampler, "PLMS");  // the model's PNDM (skip_prk_steps), as A1111 names it
  EXPECT_EQ(p.schedule_type, "Automatic");
  EXPECT_EQ(p.seed, 0u);
  EXPECT_DOUBLE_EQ(p.cfg_scale, 7.5);
  EXPECT_EQ(p.width, 64);
  EXPECT_EQ(p.height, 64);
  EXPECT_EQ(p.model, "tiny-sd");
  EXPECT_EQ(p.model_hash.size(), 10u);

  auto latents = engine::ReadSafetensors(out + "/latents.safetensors");
  ASSERT_OK(latents);
  ASSERT_EQ(latents->count("latents"), 1u);
  EXPECT_LE(MaxAbsDiff(latents->at("latents"), g["latents_final"]), 1e-3);
}

TEST(RenderCli, SeedsAndImagesPerPromptAreBatchInvariant) {
  // --seeds 100-101 renders the golden seed-list case; --batch 2 must not change any image.
  auto g = LoadGolden("pipelines/sd_eulera_seedlist_nipp2.safetensors");
  for (const char* batch : {"1", "2"}) {
    const std::string out = MakeTempDir();
    ProcessRun r = Render({"--model", ModelPath("tiny-sd"), "--prompt", "a red fox in the snow", "--seeds", "100-101",
                    "--steps", "10", "--sampler", "euler_a", "--width", "64", "--height", "64", "--batch", batch,
                    "--out", out, "--quiet"});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    auto files = Pngs(out);
    ASSERT_EQ(files.size(), 2u);
    for (int i = 0; i < 2; ++i) {
      ASSERT_OK_AND_ASSIGN(engine::Image img, engine::ReadPng(files[i], 3));
      EXPECT_LE(MaxAbsDiff(Pixels(img), g["image_uint8"][i].to(at::kInt)), 2.0) << "batch " << batch << " image " << i;
    }
  }
  // --seed 100 --images-per-prompt 2 means seeds 100 and 101.
  const std::string out = MakeTempDir();
  ProcessRun r = Render({"--model", ModelPath("tiny-sd"), "--prompt", "a red fox in the snow", "--seed", "100",
                  "--images-per-prompt", "2", "--steps", "10", "--sampler", "euler_a", "--width", "64", "--height",
                  "64", "--out", out, "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto files = Pngs(out);
  ASSERT_EQ(files.size(), 2u);
  EXPECT_NE(files[1].find("seed101"), std::string::npos);
}

TEST(RenderCli, Img2ImgAndInpaintingFromPngFiles) {
  const std::string dir = MakeTempDir();
  {
    auto g = LoadGolden("pipelines/img2img_ddim_s06_64x96.safetensors");
    WritePng(dir + "/in.png", g["input_image_uint8"]);
    ProcessRun r = Render({"--model", ModelPath("tiny-sd"), "--prompt", "a stained glass window", "--negative", "dark",
                    "--seed", "11", "--steps", "15", "--guidance", "6", "--sampler", "ddim", "--init-image",
                    dir + "/in.png", "--strength", "0.6", "--out", dir + "/img2img", "--quiet"});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    auto files = Pngs(dir + "/img2img");
    ASSERT_EQ(files.size(), 1u);
    ASSERT_OK_AND_ASSIGN(engine::Image img, engine::ReadPng(files[0], 3));
    EXPECT_EQ(img.width, 96);  // the init image's size
    EXPECT_LE(MaxAbsDiff(Pixels(img), g["image_uint8"][0].to(at::kInt)), 2.0);
    ASSERT_OK_AND_ASSIGN(auto text, engine::ReadPngText(files[0]));
    EXPECT_NE(text[0].second.find("Denoising strength: 0.6"), std::string::npos) << text[0].second;
  }
  {
    auto g = LoadGolden("pipelines/inpaint_pndm.safetensors");
    WritePng(dir + "/image.png", g["input_image_uint8"]);
    WritePng(dir + "/mask.png", g["input_mask_uint8"]);
    ProcessRun r = Render({"--model", ModelPath("tiny-sd-inpaint"), "--prompt", "a yellow rubber duck", "--seed", "12",
                    "--steps", "10", "--sampler", "pndm", "--init-image", dir + "/image.png", "--mask",
                    dir + "/mask.png", "--out", dir + "/inpaint", "--quiet"});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    auto files = Pngs(dir + "/inpaint");
    ASSERT_EQ(files.size(), 1u);
    ASSERT_OK_AND_ASSIGN(engine::Image img, engine::ReadPng(files[0], 3));
    EXPECT_LE(MaxAbsDiff(Pixels(img), g["image_uint8"][0].to(at::kInt)), 2.0);
  }
}

TEST(RenderCli, BadInputIsRejectedWithAClearMessageAndNoOutput) {
  const std::string dir = MakeTempDir();
  std::ofstream(dir + "/not.png") << "this is not a png";
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::string model = ModelPath("tiny-sd");
  const std::vector<Case> cases = {
      {{"--model", model}, "--prompt"},
      {{"--prompt", "x"}, "--model"},
      {{"--model", model, "--prompt", "x", "--width", "100"}, "multiples of 8"},
      {{"--model", model, "--prompt", "x", "--steps", "0"}, "--steps"},
      {{"--model", model, "--prompt", "x", "--steps", "1001"}, "--steps"},
      {{"--model", model, "--prompt", "x", "--sampler", "heun"}, "heun"},
      {{"--model", model, "--prompt", "x", "--init-image", dir + "/not.png"}, "not.png"},
      {{"--model", model, "--prompt", "x", "--init-image", dir + "/missing.png"}, "missing.png"},
      {{"--model", model, "--prompt", "x", "--seeds", "5-1"}, "backwards"},
      {{"--model", model, "--prompt", "x", "--frobnicate", "1"}, "unknown flag"},
      {{"--model", model, "--prompt", "  "}, "empty"},
      {{"--model", dir + "/no-such-model", "--prompt", "x"}, "does not exist"},
      {{"--model", ModelPath("tiny-sd-inpaint"), "--prompt", "x"}, "inpainting model"},
      {{"--model", model, "--prompt", "x", "--mask", dir + "/not.png"}, "--init-image"},
      {{"--model", model, "--prompt", "x", "--size", "64"}, "--size"},
      {{"--model", model, "--prompt", "x", "--size", "64x4"}, "--size"},
      {{"--model", model, "--prompt", "x", "--size", "64x64", "--width", "64"}, "--size"},
      {{"--model", model, "--prompt", "x", "--size", "64x60"}, "multiples of 8"},
      {{"--model", model, "--prompt", "x", "--sampler", "models"}, "'model'"},
  };
  for (const auto& c : cases) {
    std::vector<std::string> args = c.args;
    args.insert(args.end(), {"--out", dir + "/out"});
    ProcessRun r = Render(args);
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_NE(r.exit_code, -1) << "crashed: " << r.output;
    EXPECT_NE(r.output.find("error"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(c.message), std::string::npos) << "expected '" << c.message << "' in: " << r.output;
  }
  EXPECT_FALSE(fs::exists(dir + "/out") && !Pngs(dir + "/out").empty());
}

TEST(RenderCli, HelpListsEveryFlag) {
  ProcessRun r = Render({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  for (const char* flag : {"--model", "--prompt", "--negative", "--seed", "--seeds", "--guidance", "--steps",
                           "--sampler", "--width", "--height", "--images-per-prompt", "--batch", "--device", "--dtype",
                           "--init-image", "--strength", "--mask", "--clip-skip", "--lora", "--out", "--latents-out",
                           "--size", "--overwrite", "--prompt-chunking", "euler_a", "'model'"}) {
    EXPECT_NE(r.output.find(flag), std::string::npos) << flag;
  }
}

TEST(RenderCli, LoraMatchesDiffusersGoldens) {
  const std::string kohya = ModelPath("lora/tiny-sd-lora-kohya.safetensors");
  struct Case {
    std::string golden;
    std::vector<std::string> args;
  };
  const std::vector<Case> cases = {
      {"lora/lora_kohya_s05_eulera.safetensors",
       {"--prompt", "a portrait of a cat wearing a hat", "--negative", "low quality", "--seed", "35", "--sampler",
        "euler_a", "--lora", kohya + ":0.5"}},
      {"lora/lora_kohya_s1_pndm.safetensors",
       {"--prompt", "a photograph of an astronaut riding a horse", "--seed", "34", "--sampler", "pndm", "--lora",
        kohya}},
      {"lora/lora_kohya_s1_pndm.safetensors",  // the diffusers-format folder, two LoRAs at 0.5 each
       {"--prompt", "a photograph of an astronaut riding a horse", "--seed", "34", "--sampler", "pndm", "--lora",
        ModelPath("lora/tiny-sd-lora-diffusers") + ":0.5", "--lora", kohya + ":.5"}},
  };
  for (const auto& c : cases) {
    auto g = LoadGolden(c.golden);
    const std::string out = MakeTempDir();
    std::vector<std::string> args = {"--model", ModelPath("tiny-sd"), "--steps", "10", "--guidance", "7.5",
                                     "--width", "64", "--height", "64", "--out", out,
                                     "--latents-out", out + "/latents.safetensors"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    ProcessRun r = Render(args);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("LoRA tiny-sd-lora-"), std::string::npos) << r.output;
    auto files = Pngs(out);
    ASSERT_EQ(files.size(), 1u) << r.output;
    ASSERT_OK_AND_ASSIGN(engine::Image img, engine::ReadPng(files[0], 3));
    EXPECT_LE(MaxAbsDiff(Pixels(img), g["image_uint8"][0].to(at::kInt)), 2.0) << c.golden;
    auto latents = engine::ReadSafetensors(out + "/latents.safetensors");
    ASSERT_OK(latents);
    EXPECT_LE(MaxAbsDiff(latents->at("latents"), g["latents_final"]), 1e-3) << c.golden;
    // The PNG names each LoRA with A1111's hash (SHA-256 of the tensor data, 12 digits) and its scale.
    ASSERT_OK_AND_ASSIGN(auto text, engine::ReadPngText(files[0]));
    ASSERT_OK_AND_ASSIGN(engine::GenerationParameters p, engine::ParseA1111Parameters(text[0].second));
    std::map<std::string, std::string> extra(p.extra.begin(), p.extra.end());
    EXPECT_NE(extra["Lora hashes"].find("tiny-sd-lora-kohya: 20a3e83bed69"), std::string::npos) << text[0].second;
    EXPECT_FALSE(extra["Lora weights"].empty()) << text[0].second;
    EXPECT_EQ(p.prompt.find("<lora:"), std::string::npos);
  }
}

TEST(RenderCli, BadLorasAreRejectedWithAClearMessageAndNoOutput) {
  const std::string dir = MakeTempDir();
  std::ofstream(dir + "/style.ckpt") << "pickle";
  {
    // The kohya LoRA with one module's matrices for wider layers: another architecture.
    auto tensors = engine::ReadSafetensors(ModelPath("lora/tiny-sd-lora-kohya.safetensors"));
    ASSERT_OK(tensors);
    const std::string m = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k";
    (*tensors)[m + ".lora_down.weight"] = at::ones({4, 768}, at::kHalf);
    std::vector<std::pair<std::string, at::Tensor>> list(tensors->begin(), tensors->end());
    ASSERT_OK(engine::WriteSafetensors(dir + "/sd15-lora.safetensors", list));
    ASSERT_OK(engine::WriteSafetensors(dir + "/other.safetensors",
                                       {{"lora_unet_input_blocks_4_1_proj_in.lora_down.weight", at::ones({4, 8})},
                                        {"lora_unet_input_blocks_4_1_proj_in.lora_up.weight", at::ones({8, 4})}}));
  }
  const std::string model = ModelPath("tiny-sd");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {dir + "/sd15-lora.safetensors", "another architecture"},
      {dir + "/other.safetensors", "matches no module"},
      {dir + "/style.ckpt", "pickle"},
      {dir + "/missing.safetensors", "does not exist"},
      {ModelPath("lora/tiny-sd-lora-kohya.safetensors") + ":12", "[-10, 10]"},
      {":0.5", "no path"},
  };
  for (const auto& [lora, message] : cases) {
    ProcessRun r = Render({"--model", model, "--prompt", "x", "--steps", "2", "--lora", lora, "--out", dir + "/out"});
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_NE(r.exit_code, -1) << "crashed: " << r.output;
    EXPECT_NE(r.output.find("error"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(message), std::string::npos) << "expected '" << message << "' in: " << r.output;
  }
  EXPECT_FALSE(fs::exists(dir + "/out") && !Pngs(dir + "/out").empty());
}

TEST(RenderCli, LoraArgumentIsPathAndOptionalScale) {
  auto parse = [](const std::string& arg) { return ParseLoraArg(arg); };
  ASSERT_OK_AND_ASSIGN(engine::LoraRef a, parse("loras/detail.safetensors"));
  EXPECT_EQ(a.path, "loras/detail.safetensors");
  EXPECT_EQ(a.scale, 1.0);
  ASSERT_OK_AND_ASSIGN(engine::LoraRef b, parse("loras/detail.safetensors:0.7"));
  EXPECT_EQ(b.path, "loras/detail.safetensors");
  EXPECT_EQ(b.scale, 0.7);
  ASSERT_OK_AND_ASSIGN(engine::LoraRef c, parse("/mnt/a:b/style:v2.safetensors:-1.5"));
  EXPECT_EQ(c.path, "/mnt/a:b/style:v2.safetensors");
  EXPECT_EQ(c.scale, -1.5);
  ASSERT_OK_AND_ASSIGN(engine::LoraRef d, parse("/mnt/a:b/style:v2"));  // no number after the last ':'
  EXPECT_EQ(d.path, "/mnt/a:b/style:v2");
  EXPECT_EQ(d.scale, 1.0);
  ASSERT_OK_AND_ASSIGN(engine::LoraRef e, parse("style:1e-1"));
  EXPECT_EQ(e.path, "style");
  EXPECT_DOUBLE_EQ(e.scale, 0.1);
  EXPECT_FALSE(parse(":1").ok());
  EXPECT_FALSE(parse("").ok());
}

TEST(MkModelCli, WritesALoadableRandomModelFromConfigs) {
  const std::string out = MakeTempDir() + "/model";
  ProcessRun r = RunTool(SDFARM_MKMODEL_BIN, {"--config", ModelPath("tiny-sd-v2"), "--out", out, "--dtype", "fp16",
                                       "--seed", "3"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* f : {"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                        "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                        "tokenizer/vocab.json", "scheduler/scheduler_config.json"}) {
    EXPECT_TRUE(fs::exists(out + "/" + f)) << f;
  }
  auto unet = engine::SafetensorsFile::Open(out + "/unet/diffusion_pytorch_model.safetensors");
  ASSERT_OK(unet);
  EXPECT_EQ((*unet)->Find("conv_in.weight")->dtype, engine::StDtype::kF16);
  // The same tensor names and shapes as the diffusers checkpoint of that config.
  auto real = engine::SafetensorsFile::Open(ModelPath("tiny-sd-v2/unet/diffusion_pytorch_model.safetensors"));
  ASSERT_OK(real);
  ASSERT_EQ((*unet)->tensors().size(), (*real)->tensors().size());
  for (const auto& t : (*real)->tensors()) {
    const auto* mine = (*unet)->Find(t.name);
    ASSERT_NE(mine, nullptr) << t.name;
    EXPECT_EQ(mine->shape, t.shape) << t.name;
  }
  // And it renders.
  const std::string imgs = MakeTempDir();
  ProcessRun rr = Render({"--model", out, "--prompt", "x", "--steps", "2", "--dtype", "bf16", "--out", imgs, "--quiet"});
  ASSERT_EQ(rr.exit_code, 0) << rr.output;
  EXPECT_EQ(Pngs(imgs).size(), 1u);
}

// The farm's default sampler (coordinator/sweep_spec.h) is euler_a; so is
// sdfarm-render's, so "the same settings" give the same image on both.
TEST(RenderCli, DefaultSamplerIsEulerAAsOnTheFarm) {
  auto g = LoadGolden("pipelines/sd_eulera_seed101_single.safetensors");
  const std::string out = MakeTempDir();
  ProcessRun r = Render({"--model", ModelPath("tiny-sd"), "--prompt", "a red fox in the snow", "--seed", "101",
                         "--steps", "10", "--guidance", "7.5", "--size", "64x64", "--out", out});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto files = Pngs(out);
  ASSERT_EQ(files.size(), 1u) << r.output;
  ASSERT_OK_AND_ASSIGN(engine::Image img, engine::ReadPng(files[0], 3));
  EXPECT_LE(MaxAbsDiff(Pixels(img), g["image_uint8"][0].to(at::kInt)), 2.0);
  ASSERT_OK_AND_ASSIGN(auto text, engine::ReadPngText(files[0]));
  ASSERT_OK_AND_ASSIGN(engine::GenerationParameters p, engine::ParseA1111Parameters(text.at(0).second));
  EXPECT_EQ(p.sampler, "Euler a");
}

std::string FileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Renders seeds 0-1 of one prompt into `out` (a fresh folder) with `extra` flags.
ProcessRun RenderTwoFoxes(const std::string& out, const std::vector<std::string>& extra) {
  std::vector<std::string> a = {"--model", ModelPath("tiny-sd"), "--prompt", "a red fox", "--seeds", "0-1",
                                "--size", "64x64", "--out", out};
  a.insert(a.end(), extra.begin(), extra.end());
  return Render(a);
}

TEST(RenderCli, RefusesToOverwriteEarlierImagesWithoutOverwrite) {
  const std::string out = MakeTempDir();
  ProcessRun first = RenderTwoFoxes(out, {"--steps", "2"});
  ASSERT_EQ(first.exit_code, 0) << first.output;
  const std::string image0 = out + "/0000-seed0-cfg7.5.png", image1 = out + "/0001-seed1-cfg7.5.png";
  ASSERT_EQ(Pngs(out), (std::vector<std::string>{image0, image1}));
  const std::string bytes0 = FileBytes(image0), bytes1 = FileBytes(image1);

  // Another run into the same folder: refused before the model is even
  // loaded, naming the first file in the way and the flag; nothing changes.
  ProcessRun again = RenderTwoFoxes(out, {"--steps", "3"});
  EXPECT_EQ(again.exit_code, 2) << again.output;
  EXPECT_NE(again.output.find("error: " + image0 + " already exists"), std::string::npos) << again.output;
  EXPECT_NE(again.output.find("--overwrite"), std::string::npos) << again.output;
  EXPECT_EQ(again.output.find("loading"), std::string::npos) << again.output;
  EXPECT_EQ(FileBytes(image0), bytes0);
  EXPECT_EQ(FileBytes(image1), bytes1);

  // Only the second file left: it is the one named, and the first is not rendered.
  fs::remove(image0);
  ProcessRun partial = RenderTwoFoxes(out, {"--steps", "3"});
  EXPECT_NE(partial.exit_code, 0);
  EXPECT_NE(partial.output.find(image1 + " already exists"), std::string::npos) << partial.output;
  EXPECT_FALSE(fs::exists(image0));
}

TEST(RenderCli, OverwriteReplacesEarlierImages) {
  const std::string out = MakeTempDir();
  ProcessRun first = RenderTwoFoxes(out, {"--steps", "2", "--quiet"});
  ASSERT_EQ(first.exit_code, 0) << first.output;
  const std::string image1 = out + "/0001-seed1-cfg7.5.png";
  const std::string bytes1 = FileBytes(image1);
  ASSERT_FALSE(bytes1.empty());
  // 3 steps instead of 2: other pixels, same names.
  ProcessRun replaced = RenderTwoFoxes(out, {"--steps", "3", "--overwrite", "--quiet"});
  ASSERT_EQ(replaced.exit_code, 0) << replaced.output;
  EXPECT_NE(FileBytes(image1), bytes1);
  EXPECT_EQ(Pngs(out).size(), 2u);
}

engine::Image Pattern(int width, int height, int channels) {
  engine::Image img{width, height, channels, {}};
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      for (int c = 0; c < channels; ++c) {
        // A gradient with a hard edge, so the resize filter has work to do.
        const int v = c == 0 ? x * 255 / (width - 1) : c == 1 ? y * 255 / (height - 1) : (x > width / 3 ? 220 : 30);
        img.pixels.push_back(static_cast<uint8_t>(channels == 1 ? (x * 3 + y * 2) % 256 : v));
      }
    }
  }
  return img;
}

TEST(RenderCli, InitImageOfAnotherSizeIsResizedWithLanczos) {
  const std::string dir = MakeTempDir();
  const engine::Image in = Pattern(100, 60, 3);
  ASSERT_OK(engine::WritePngAtomic(dir + "/in.png", in));
  // What a caller who resized it with Pillow first would pass: the same image.
  ASSERT_OK(engine::WritePngAtomic(dir + "/in64.png", engine::ResizeLanczos(in, 64, 64)));
  const std::vector<std::string> common = {"--model", ModelPath("tiny-sd"), "--prompt", "a stained glass window",
                                           "--seed", "3", "--steps", "2", "--strength", "0.5"};
  auto render = [&](const std::string& image, const std::vector<std::string>& extra, const std::string& out) {
    std::vector<std::string> a = common;
    a.insert(a.end(), {"--init-image", image, "--out", out});
    a.insert(a.end(), extra.begin(), extra.end());
    return Render(a);
  };
  ProcessRun sized = render(dir + "/in.png", {"--size", "64x64"}, dir + "/sized");
  ASSERT_EQ(sized.exit_code, 0) << sized.output;
  EXPECT_NE(sized.output.find("note: resizing the init image from 100x60 to 64x64"), std::string::npos)
      << sized.output;
  ProcessRun presized = render(dir + "/in64.png", {}, dir + "/presized");
  ASSERT_EQ(presized.exit_code, 0) << presized.output;
  EXPECT_EQ(presized.output.find("resizing"), std::string::npos) << presized.output;
  ASSERT_EQ(Pngs(dir + "/sized").size(), 1u);
  ASSERT_OK_AND_ASSIGN(engine::Image a, engine::ReadPng(Pngs(dir + "/sized")[0], 3));
  ASSERT_OK_AND_ASSIGN(engine::Image b, engine::ReadPng(Pngs(dir + "/presized")[0], 3));
  EXPECT_EQ(a.width, 64);
  EXPECT_EQ(a.height, 64);
  EXPECT_EQ(a.pixels, b.pixels);
}

TEST(RenderCli, InitImageSizeDefaultsToTheImagesRoundedDownToMultiplesOf8) {
  // diffusers' VaeImageProcessor: a 100x60 image is resized (not cropped) to 96x56.
  const std::string dir = MakeTempDir();
  ASSERT_OK(engine::WritePngAtomic(dir + "/in.png", Pattern(100, 60, 3)));
  ProcessRun r = Render({"--model", ModelPath("tiny-sd"), "--prompt", "a stained glass window", "--steps", "2",
                         "--strength", "0.5", "--init-image", dir + "/in.png", "--out", dir + "/out"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("note: resizing the init image from 100x60 to 96x56"), std::string::npos) << r.output;
  ASSERT_EQ(Pngs(dir + "/out").size(), 1u);
  ASSERT_OK_AND_ASSIGN(engine::Image img, engine::ReadPng(Pngs(dir + "/out")[0], 3));
  EXPECT_EQ(img.width, 96);
  EXPECT_EQ(img.height, 56);
}

TEST(RenderCli, InpaintingResizesImageAndMaskThenBinarisesTheMask) {
  const std::string dir = MakeTempDir();
  const engine::Image image = Pattern(100, 60, 3);
  const engine::Image mask = Pattern(100, 60, 1);  // grey levels: the threshold matters after resizing
  ASSERT_OK(engine::WritePngAtomic(dir + "/image.png", image));
  ASSERT_OK(engine::WritePngAtomic(dir + "/mask.png", mask));
  // diffusers: both resized with Lanczos, then the mask thresholded at 0.5.
  engine::Image mask64 = engine::ResizeLanczos(mask, 64, 64);
  for (uint8_t& v : mask64.pixels) v = v >= 128 ? 255 : 0;
  ASSERT_OK(engine::WritePngAtomic(dir + "/image64.png", engine::ResizeLanczos(image, 64, 64)));
  ASSERT_OK(engine::WritePngAtomic(dir + "/mask64.png", mask64));
  auto render = [&](const std::string& suffix, const std::vector<std::string>& extra) {
    std::vector<std::string> a = {"--model", ModelPath("tiny-sd-inpaint"), "--prompt", "a yellow rubber duck",
                                  "--seed", "12", "--steps", "2", "--init-image", dir + "/image" + suffix + ".png",
                                  "--mask", dir + "/mask" + suffix + ".png", "--out", dir + "/out" + suffix};
    a.insert(a.end(), extra.begin(), extra.end());
    return Render(a);
  };
  ProcessRun resized = render("", {"--size", "64x64"});
  ASSERT_EQ(resized.exit_code, 0) << resized.output;
  EXPECT_NE(resized.output.find("resizing the mask from 100x60 to 64x64"), std::string::npos) << resized.output;
  ProcessRun presized = render("64", {});
  ASSERT_EQ(presized.exit_code, 0) << presized.output;
  ASSERT_OK_AND_ASSIGN(engine::Image a, engine::ReadPng(Pngs(dir + "/out")[0], 3));
  ASSERT_OK_AND_ASSIGN(engine::Image b, engine::ReadPng(Pngs(dir + "/out64")[0], 3));
  EXPECT_EQ(a.width, 64);
  EXPECT_EQ(a.pixels, b.pixels);
}

TEST(RenderCli, PromptChunkingKeepsLongPrompts) {
  std::string prompt;
  for (int i = 0; i < 50; ++i) prompt += "fox ";
  for (int i = 0; i < 50; ++i) prompt += "castle ";
  const std::string dir = MakeTempDir();
  auto render = [&](const std::string& out, bool chunking) {
    std::vector<std::string> a = {"--model", ModelPath("tiny-sd"), "--prompt", prompt, "--steps", "2",
                                  "--size", "64x64", "--out", out};
    if (chunking) a.push_back("--prompt-chunking");
    return Render(a);
  };
  ProcessRun cut = render(dir + "/cut", false);
  ASSERT_EQ(cut.exit_code, 0) << cut.output;
  EXPECT_NE(cut.output.find("25 tokens were dropped"), std::string::npos) << cut.output;
  ProcessRun chunked = render(dir + "/chunked", true);
  ASSERT_EQ(chunked.exit_code, 0) << chunked.output;
  EXPECT_EQ(chunked.output.find("dropped"), std::string::npos) << chunked.output;
  ASSERT_OK_AND_ASSIGN(engine::Image a, engine::ReadPng(Pngs(dir + "/cut")[0], 3));
  ASSERT_OK_AND_ASSIGN(engine::Image b, engine::ReadPng(Pngs(dir + "/chunked")[0], 3));
  EXPECT_NE(a.pixels, b.pixels);
}

// Single-file checkpoints and --vae, end to end.

TEST(RenderCli, SingleFileCheckpointMatchesDiffusers) {
  auto g = LoadGolden("pipelines/sd_pndm_astronaut.safetensors");
  const std::string file = ModelPath("single_file/tiny-sd.safetensors");
  const std::string out = MakeTempDir();
  ProcessRun r = Render({"--model", file, "--model-config", ModelPath("tiny-sd"), "--prompt",
                         "a photograph of an astronaut riding a horse", "--seed", "0", "--steps", "15", "--sampler",
                         "pndm", "--width", "64", "--height", "64", "--out", out});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto files = Pngs(out);
  ASSERT_EQ(files.size(), 1u) << r.output;
  ASSERT_OK_AND_ASSIGN(engine::Image img, engine::ReadPng(files[0], 3));
  EXPECT_LE(MaxAbsDiff(Pixels(img), g["image_uint8"][0].to(at::kInt)), 2.0);
  ASSERT_OK_AND_ASSIGN(auto text, engine::ReadPngText(files[0]));
  ASSERT_OK_AND_ASSIGN(engine::GenerationParameters p, engine::ParseA1111Parameters(text.at(0).second));
  ASSERT_OK_AND_ASSIGN(std::string sha, engine::Sha256File(file));
  EXPECT_EQ(p.model_hash, sha.substr(0, 10));
  EXPECT_EQ(p.model, "tiny-sd");
}

// The hub folders as published (configs missing keys written by later
// diffusers versions): the SD 1.5-keyed one, with its pipeline default size of
// 512 overridden, and the SD 2.1-keyed one with its own scheduler config
// (--sampler model: v-prediction DDIM).
TEST(RenderCli, HubConfigFoldersMatchDiffusers) {
  struct Case {
    std::string golden, model;
    std::vector<std::string> args;
  };
  for (const Case& c : std::vector<Case>{
           {"hubcfg/hubcfg_sd15_euler.safetensors", "tiny-sd-hubcfg",
            {"--prompt", "a castle on a hill at sunset", "--seed", "30", "--sampler", "euler", "--guidance", "7.5"}},
           {"hubcfg/hubcfg_sd21_ddim_vpred.safetensors", "tiny-sd-v2-hubcfg",
            {"--prompt", "a sailing boat on a calm sea", "--negative", "blurry", "--seed", "31", "--guidance", "7",
             "--sampler", "model"}}}) {
    auto g = LoadGolden(c.golden);
    const std::string out = MakeTempDir();
    std::vector<std::string> args = {"--model", ModelPath(c.model), "--steps", "10", "--width", "64", "--height",
                                     "64",      "--out",            out};
    args.insert(args.end(), c.args.begin(), c.args.end());
    ProcessRun r = Render(args);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    auto files = Pngs(out);
    ASSERT_EQ(files.size(), 1u) << r.output;
    ASSERT_OK_AND_ASSIGN(engine::Image img, engine::ReadPng(files[0], 3));
    EXPECT_LE(MaxAbsDiff(Pixels(img), g["image_uint8"][0].to(at::kInt)), 2.0) << c.golden;
  }
}

TEST(RenderCli, Sd2SingleFileWithOriginalConfig) {
  auto g = LoadGolden("single_file/sf_sd2_fp16_ddim_vpred.safetensors");
  const std::string out = MakeTempDir();
  ProcessRun r = Render({"--model", ModelPath("single_file/tiny-sd-v2.fp16.safetensors"), "--original-config",
                         ModelPath("single_file/v2-inference-v-tiny.yaml"), "--model-config", ModelPath("tiny-sd-v2"),
                         "--sampler", "ddim", "--prompt", "a professional photograph of a mountain lake at sunrise",
                         "--seed", "33", "--steps", "10", "--width", "64", "--height", "64", "--out", out, "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto files = Pngs(out);
  ASSERT_EQ(files.size(), 1u) << r.output;
  ASSERT_OK_AND_ASSIGN(engine::Image img, engine::ReadPng(files[0], 3));
  EXPECT_LE(MaxAbsDiff(Pixels(img), g["image_uint8"][0].to(at::kInt)), 2.0);
}

TEST(RenderCli, VaeFlagSwapsTheVaeAndIsRecorded) {
  auto g = LoadGolden("vae_swap/vae_swap_sd15_pndm.safetensors");
  const std::string out = MakeTempDir();
  ProcessRun r = Render({"--model", ModelPath("tiny-sd"), "--vae", ModelPath("tiny-sd-vae-alt"), "--prompt",
                         "a photograph of an astronaut riding a horse", "--seed", "44", "--steps", "10", "--sampler",
                         "pndm", "--width", "64", "--height", "64", "--out", out, "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto files = Pngs(out);
  ASSERT_EQ(files.size(), 1u) << r.output;
  ASSERT_OK_AND_ASSIGN(engine::Image img, engine::ReadPng(files[0], 3));
  EXPECT_LE(MaxAbsDiff(Pixels(img), g["image_uint8"][0].to(at::kInt)), 2.0);
  ASSERT_OK_AND_ASSIGN(auto text, engine::ReadPngText(files[0]));
  ASSERT_OK_AND_ASSIGN(engine::GenerationParameters p, engine::ParseA1111Parameters(text.at(0).second));
  ASSERT_OK_AND_ASSIGN(std::string sha, engine::Sha256File(ModelPath("tiny-sd-vae-alt/diffusion_pytorch_model.safetensors")));
  EXPECT_EQ(p.vae_hash, sha.substr(0, 10));
  EXPECT_EQ(p.vae, "tiny-sd-vae-alt");
}

// Each bad input: exit code != 0, a message that says what is wrong, no PNG.
TEST(RenderCli, BadSingleFileInputsFailWithoutOutput) {
  const std::string tmp = MakeTempDir();
  const std::string ckpt = tmp + "/model.ckpt";
  std::ofstream(ckpt) << "pickle bytes";
  const std::string cut = tmp + "/cut.safetensors";
  {
    std::ifstream in(ModelPath("single_file/tiny-sd.safetensors"), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(cut, std::ios::binary) << bytes.substr(0, bytes.size() / 3);
  }
  const std::string tiny = ModelPath("tiny-sd");
  struct Case {
    std::vector<std::string> args;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {{"--model", ckpt}, "pickle"},
      {{"--model", cut, "--model-config", tiny}, "truncated"},
      {{"--model", ModelPath("single_file/tiny-sd-v2.fp16.safetensors")}, "--prediction-type"},
      {{"--model", ModelPath("single_file/tiny-sd.safetensors"), "--model-config", tiny, "--ema"}, "no EMA weights"},
      {{"--model", tiny, "--vae", ModelPath("tiny-sd/unet/diffusion_pytorch_model.safetensors")}, "not an LDM VAE"},
  };
  for (const Case& c : cases) {
    const std::string out = MakeTempDir();
    std::vector<std::string> args = c.args;
    for (const char* a : {"--prompt", "x", "--steps", "2", "--quiet", "--out"}) args.push_back(a);
    args.push_back(out);
    ProcessRun r = Render(args);
    EXPECT_NE(r.exit_code, 0) << c.expect;
    EXPECT_NE(r.output.find(c.expect), std::string::npos) << r.output;
    EXPECT_TRUE(Pngs(out).empty()) << c.expect;
  }
}

TEST(RenderCli, HelpMentionsSingleFilesAndVae) {
  ProcessRun r = Render({"--help"});
  ASSERT_EQ(r.exit_code, 0);
  for (const char* flag : {"--model-config", "--original-config", "--prediction-type", "--ema", "--vae", ".safetensors"}) {
    EXPECT_NE(r.output.find(flag), std::string::npos) << flag;
  }
}

}  // namespace
}  // namespace sdfarm::tools
