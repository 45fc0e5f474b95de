// Real checkpoints in the farm: a worker serving a single-file checkpoint,
// sweeps that name a VAE and sweep over LoRA sets, and the hashes that make
// each image traceable to the exact files (real redis-server, coordinator,
// worker and sdfarm-render processes; the tiny model on CPU).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "sdfarm.grpc.pb.h"
#include "tests/farm/farm_fixture.h"
#include "worker/engine/a1111_parameters.h"
#include "worker/engine/png_io.h"
#include "worker/engine/sha256.h"

namespace sdfarm::testing {
namespace {

namespace fs = std::filesystem;
namespace pb = ::sdfarm::v1;
using nlohmann::json;

std::string Sha256Prefix(const std::string& path, size_t n, bool addnet = false) {
  auto h = engine::Sha256File(path, addnet);
  return h.ok() ? h->substr(0, n) : "";
}

TEST(FarmModelsTest, LoraScalesAndASweptVaeOnASingleFileRenderAsSdfarmRenderDoes) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0, .batch_size = 2}));
  // The worker's folders: LoRAs and VAEs by name, as an operator lays them out.
  const std::string lora_dir = farm->dir() + "/loras", vae_dir = farm->dir() + "/vaes";
  fs::create_directories(lora_dir);
  fs::create_directories(vae_dir);
  const std::string lora = lora_dir + "/style.safetensors";
  fs::copy_file(SharedPath("models/lora/tiny-sd-lora-kohya.safetensors"), lora);
  fs::copy(SharedPath("models/tiny-sd-vae-alt"), vae_dir + "/alt", fs::copy_options::recursive);
  const std::string checkpoint = SharedPath("models/single_file/tiny-sd.safetensors");
  const std::vector<std::string> model_flags = {"--model-config", SharedPath("models/tiny-sd")};
  WorkerSpec worker;
  worker.model_dir = checkpoint;
  worker.extra_args = model_flags;
  worker.extra_args.insert(worker.extra_args.end(), {"--lora-dir", lora_dir, "--vae-dir", vae_dir});
  FARM_ASSERT_OK_AND_ASSIGN(int w, farm->StartWorker(worker));
  (void)w;

  const json spec = {{"name", "styles"},      {"model", "tiny-sd"},  {"prompt", "a portrait of a cat wearing a hat"},
                     {"seeds", "0-1"},        {"guidance_scale", 7.5}, {"steps", 4},
                     {"sampler", "euler_a"},  {"size", "64x64"},       {"loras", json::parse(R"(["style:0.5", "style:1"])")},
                     {"vae", "alt"}};
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(spec.dump()));
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus st, farm->WaitForState(id, pb::DONE, absl::Minutes(4)));
  ASSERT_EQ(st.done(), 4) << farm->Logs();
  EXPECT_EQ(st.failed(), 0);
  const std::string dir = farm->output_root() + "/styles";
  const std::vector<json> rows = ReadManifest(dir);
  ASSERT_EQ(rows.size(), 4u);

  // The same renders by sdfarm-render with the same flags.
  std::map<std::string, std::string> reference;  // parameters text -> path
  for (const std::string scale : {"0.5", "1"}) {
    const std::string out = farm->dir() + "/reference-" + scale;
    std::vector<std::string> argv = {SDFARM_RENDER_BIN, "--model", checkpoint};
    argv.insert(argv.end(), model_flags.begin(), model_flags.end());
    argv.insert(argv.end(), {"--lora", lora + ":" + scale, "--vae", vae_dir + "/alt", "--prompt",
                             "a portrait of a cat wearing a hat", "--seeds", "0-1", "--guidance", "7.5", "--steps", "4",
                             "--sampler", "euler_a", "--width", "64", "--height", "64", "--threads", "1", "--quiet",
                             "--out", out});
    RunResult r = RunProgram(argv, {{"OMP_NUM_THREADS", "1"}}, absl::Minutes(2));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    for (const auto& e : fs::directory_iterator(out)) {
      if (e.path().extension() == ".png") reference[PngParameters(e.path().string())] = e.path().string();
    }
  }
  ASSERT_EQ(reference.size(), 4u) << "the two scales must give different parameter texts";

  const std::string model_hash = Sha256Prefix(checkpoint, 10);
  const std::string vae_hash = Sha256Prefix(SharedPath("models/tiny-sd-vae-alt/diffusion_pytorch_model.safetensors"), 10);
  const std::string lora_hash = Sha256Prefix(lora, 12, /*addnet=*/true);
  std::set<double> scales;
  std::set<std::vector<uint8_t>> distinct_pixels;
  for (const json& row : rows) {
    const std::string path = dir + "/" + row["file_name"].get<std::string>();
    const std::string text = PngParameters(path);
    auto it = reference.find(text);
    ASSERT_NE(it, reference.end()) << "no sdfarm-render image with the parameters of " << path << ":\n" << text;
    auto farm_img = engine::ReadPng(path, 3);
    auto ref_img = engine::ReadPng(it->second, 3);
    ASSERT_TRUE(farm_img.ok() && ref_img.ok());
    EXPECT_LE(MaxPixelDifference(*farm_img, *ref_img), kBatchPixelTolerance) << path << " differs from " << it->second;
    distinct_pixels.insert(farm_img->pixels);

    // The hashes A1111 and Civitai resolve, in the PNG and in metadata.jsonl.
    auto p = engine::ParseA1111Parameters(text);
    ASSERT_TRUE(p.ok()) << text;
    EXPECT_EQ(p->model, "tiny-sd");
    EXPECT_EQ(p->model_hash, model_hash);
    EXPECT_EQ(p->vae, "alt");
    EXPECT_EQ(p->vae_hash, vae_hash);
    EXPECT_NE(text.find("Lora hashes: \"style: " + lora_hash + "\""), std::string::npos) << text;
    EXPECT_EQ(p->prompt, "a portrait of a cat wearing a hat");  // no <lora:...> tag added
    EXPECT_EQ(row["model_hash"], model_hash);
    EXPECT_EQ(row["vae"], "alt");
    EXPECT_EQ(row["vae_hash"], vae_hash);
    ASSERT_EQ(row["loras"].size(), 1u) << row.dump();
    EXPECT_EQ(row["loras"][0]["name"], "style");
    EXPECT_EQ(row["loras"][0]["hash"], lora_hash);
    scales.insert(row["loras"][0]["scale"].get<double>());
  }
  EXPECT_EQ(scales, (std::set<double>{0.5, 1.0}));
  EXPECT_EQ(distinct_pixels.size(), 4u);
}

TEST(FarmModelsTest, AJobNamingALoraTheWorkerDoesNotHaveFailsWithItsName) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0, .max_attempts = 1}));
  const std::string lora_dir = farm->dir() + "/loras";
  fs::create_directories(lora_dir);
  WorkerSpec worker;
  worker.extra_args = {"--lora-dir", lora_dir};
  FARM_ASSERT_OK_AND_ASSIGN(int w, farm->StartWorker(worker));
  const json spec = {{"name", "missing"}, {"model", "tiny-sd"}, {"prompt", "a fox"}, {"seeds", "0"},
                     {"steps", 2},        {"size", "64x64"},    {"lora", "nowhere:0.5"}};
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(spec.dump()));
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus st, farm->WaitForState(id, pb::DONE, absl::Minutes(2)));
  EXPECT_EQ(st.failed(), 1);
  EXPECT_EQ(st.done(), 0);
  EXPECT_NE(farm->WorkerLog(w).find("LoRA 'nowhere' is not in " + lora_dir), std::string::npos) << farm->WorkerLog(w);
}

}  // namespace
}  // namespace sdfarm::testing
