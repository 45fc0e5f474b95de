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
  ProcessRun r = Render({"--model", ModelPath("tiny-sd"), "--prompt", "a photograph of an astronaut riding a horse",
                  "--seed", "0", "--steps", "15", "--guidance", "7.5", "--width", "64", "--height", "64", "--out", out,
                  "--latents-out", out + "/latents.safetensors"});
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
                    "--steps", "10", "--init-image", dir + "/image.png", "--mask", dir + "/mask.png", "--out",
                    dir + "/inpaint", "--quiet"});
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
                           "--init-image", "--strength", "--mask", "--clip-skip", "--lora", "--out", "--latents-out"}) {
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
       {"--prompt", "a photograph of an astronaut riding a horse", "--seed", "34", "--lora", kohya}},
      {"lora/lora_kohya_s1_pndm.safetensors",  // the diffusers-format folder, two LoRAs at 0.5 each
       {"--prompt", "a photograph of an astronaut riding a horse", "--seed", "34", "--lora",
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

// Single-file checkpoints and --vae, end to end.

TEST(RenderCli, SingleFileCheckpointMatchesDiffusers) {
  auto g = LoadGolden("pipelines/sd_pndm_astronaut.safetensors");
  const std::string file = ModelPath("single_file/tiny-sd.safetensors");
  const std::string out = MakeTempDir();
  ProcessRun r = Render({"--model", file, "--model-config", ModelPath("tiny-sd"), "--prompt",
                         "a photograph of an astronaut riding a horse", "--seed", "0", "--steps", "15", "--width",
                         "64", "--height", "64", "--out", out});
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
// 512 overridden, and the SD 2.1-keyed one at its v-prediction DDIM default.
TEST(RenderCli, HubConfigFoldersMatchDiffusers) {
  struct Case {
    std::string golden, model;
    std::vector<std::string> args;
  };
  for (const Case& c : std::vector<Case>{
           {"hubcfg/hubcfg_sd15_euler.safetensors", "tiny-sd-hubcfg",
            {"--prompt", "a castle on a hill at sunset", "--seed", "30", "--sampler", "euler", "--guidance", "7.5"}},
           {"hubcfg/hubcfg_sd21_ddim_vpred.safetensors", "tiny-sd-v2-hubcfg",
            {"--prompt", "a sailing boat on a calm sea", "--negative", "blurry", "--seed", "31", "--guidance", "7"}}}) {
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
                         "a photograph of an astronaut riding a horse", "--seed", "44", "--steps", "10", "--width",
                         "64", "--height", "64", "--out", out, "--quiet"});
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
