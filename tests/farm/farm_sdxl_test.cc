// SDXL in the farm: a worker serving tiny-sdxl (a diffusers
// StableDiffusionXLPipeline folder) renders a sweep over guidance scales and
// SDXL micro-conditioning original sizes, and every image equals what
// sdfarm-render gives for the same settings; a sweep that names no size
// renders at the served model's own size, and metadata.jsonl rows of SDXL
// images record the SDXL values that made them (real redis-server,
// coordinator, worker, sdfarm and sdfarm-render processes, CPU).
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "sdfarm.grpc.pb.h"
#include "tests/farm/farm_fixture.h"
#include "worker/engine/a1111_parameters.h"
#include "worker/engine/png_io.h"

namespace sdfarm::testing {
namespace {

namespace fs = std::filesystem;
namespace pb = ::sdfarm::v1;
using nlohmann::json;

TEST(FarmSdxlTest, GuidanceAndOriginalSizeSweepRendersAsSdfarmRenderDoes) {
  const std::string model = SharedPath("models/tiny-sdxl");
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0, .model_dir = model, .batch_size = 2}));
  FARM_ASSERT_OK_AND_ASSIGN(int w, farm->StartWorker(WorkerSpec{}));
  (void)w;

  const json spec = {{"name", "xl"},
                     {"model", "tiny-sdxl"},
                     {"prompt", "a bowl of fruit on a table"},
                     {"prompt_2", "oil painting"},
                     {"seeds", "5"},
                     {"guidance_scales", {5, 7}},
                     {"original_sizes", {"96x128", "32x32"}},
                     {"steps", 4},
                     {"sampler", "euler"},
                     {"size", "64x64"}};
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(spec.dump()));
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus st, farm->WaitForState(id, pb::DONE, absl::Minutes(4)));
  ASSERT_EQ(st.done(), 4) << farm->Logs();
  EXPECT_EQ(st.failed(), 0);
  const std::string dir = farm->output_root() + "/xl";
  const std::vector<json> rows = ReadManifest(dir);
  ASSERT_EQ(rows.size(), 4u);

  // sdfarm-render, once per (guidance, original size).
  std::map<std::string, std::string> reference;  // parameters text -> path
  for (const std::string guidance : {"5", "7"}) {
    for (const std::string original : {"96x128", "32x32"}) {
      const std::string out = farm->dir() + "/reference-" + guidance + "-" + original;
      RunResult r = RunProgram({SDFARM_RENDER_BIN, "--model", model, "--prompt", "a bowl of fruit on a table",
                                "--prompt-2", "oil painting", "--seed", "5", "--guidance", guidance,
                                "--original-size", original, "--steps", "4", "--sampler", "euler", "--size", "64x64",
                                "--threads", "1", "--quiet", "--out", out},
                               {{"OMP_NUM_THREADS", "1"}}, absl::Minutes(2));
      ASSERT_EQ(r.exit_code, 0) << r.output;
      for (const auto& e : fs::directory_iterator(out)) {
        if (e.path().extension() == ".png") reference[PngParameters(e.path().string())] = e.path().string();
      }
    }
  }
  ASSERT_EQ(reference.size(), 4u) << "the four settings must give different parameter texts";

  std::set<std::vector<uint8_t>> distinct_pixels;
  std::set<std::string> originals;
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
    auto p = engine::ParseA1111Parameters(text);
    ASSERT_TRUE(p.ok()) << text;
    EXPECT_EQ(p->model, "tiny-sdxl");
    std::map<std::string, std::string> extra(p->extra.begin(), p->extra.end());
    EXPECT_EQ(extra["Prompt 2"], "oil painting");
    originals.insert(extra["Original size"]);
  }
  EXPECT_EQ(originals, (std::set<std::string>{"96x128", "32x32"}));
  EXPECT_EQ(distinct_pixels.size(), 4u);
}

// tiny-sdxl's and tiny-sd's own size: UNet sample_size 8 x the VAE's factor 8.
constexpr int kTinyNativeSide = 64;

TEST(FarmSdxlTest, NoSizeMeansTheModelsOwnAndSdxlRowsRecordWhatMadeTheImage) {
  FARM_ASSERT_OK_AND_ASSIGN(
      auto farm, Farm::Start({.workers = 0, .model_dir = SharedPath("models/tiny-sdxl"), .batch_size = 2}));
  FARM_ASSERT_OK_AND_ASSIGN(int xl_worker, farm->StartWorker(WorkerSpec{}));
  FARM_ASSERT_OK_AND_ASSIGN(int sd_worker, farm->StartWorker(WorkerSpec{.model_dir = SharedPath("models/tiny-sd")}));
  (void)xl_worker;
  (void)sd_worker;
  // The size comes from the live workers' registrations.
  for (absl::Time end = absl::Now() + absl::Seconds(60); absl::Now() < end; absl::SleepFor(absl::Milliseconds(100))) {
    auto w = farm->Workers();
    if (w.ok() && w->workers_size() == 2) break;
  }
  auto sdfarm = [&](std::vector<std::string> args) {
    args.insert(args.begin(), SDFARM_CLIENT_BIN);
    return RunProgram(args, {{"SDFARM_COORDINATOR", farm->address()}, {"SDFARM_TOKEN", farm->client_token()}},
                      absl::Minutes(1));
  };
  RunResult r = sdfarm({"submit", "--dry-run", "--model", "tiny-sdxl", "--prompt", "a fox", "--seeds", "1"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("size 64x64: model tiny-sdxl's own size"), std::string::npos) << r.output;
  r = sdfarm({"submit", "--dry-run", "--model", "unserved", "--prompt", "a fox", "--seeds", "1"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("size 512x512: the spec names no size and no live worker of model unserved"),
            std::string::npos)
      << r.output;

  const json xl = {{"name", "xl-rows"},
                   {"model", "tiny-sdxl"},
                   {"prompt", "a bowl of fruit"},
                   {"negative_prompt", "blurry"},
                   {"negative_prompts_2", {"", "cartoon"}},
                   {"target_size", "96x80"},
                   {"negative_original_size", "48x48"},
                   {"negative_target_size", "40x40"},
                   {"guidance_rescale", 0.5},
                   {"seeds", "3"},
                   {"steps", 2},
                   {"sampler", "euler"}};
  const json sd = {{"name", "sd-rows"}, {"model", "tiny-sd"}, {"prompt", "a fox"}, {"seeds", "0-1"}, {"steps", 2}};
  FARM_ASSERT_OK_AND_ASSIGN(std::string xl_id, farm->Submit(xl.dump(), /*wait_for_workers=*/false));
  FARM_ASSERT_OK_AND_ASSIGN(std::string sd_id, farm->Submit(sd.dump(), /*wait_for_workers=*/false));
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus xl_st, farm->WaitForState(xl_id, pb::DONE, absl::Minutes(4)));
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus sd_st, farm->WaitForState(sd_id, pb::DONE, absl::Minutes(4)));
  ASSERT_EQ(xl_st.done(), 2) << farm->Logs();
  ASSERT_EQ(sd_st.done(), 2) << farm->Logs();

  // The filled size is the sweep's: in its stored spec, its rows and its PNGs.
  for (const std::string name : {"xl-rows", "sd-rows"}) {
    const std::string dir = farm->output_root() + "/" + name;
    const json stored = json::parse(ReadFileOrEmpty(dir + "/sweep.json"), nullptr, false);
    EXPECT_EQ(stored.value("sizes", json()), json::array({"64x64"})) << name << ": " << stored.dump();
    for (const json& row : ReadManifest(dir)) {
      auto img = engine::ReadPng(dir + "/" + row["file_name"].get<std::string>(), 3);
      ASSERT_TRUE(img.ok()) << row.dump();
      EXPECT_EQ(img->width, kTinyNativeSide);
      EXPECT_EQ(img->height, kTinyNativeSide);
      EXPECT_EQ(row["width"], kTinyNativeSide);
      EXPECT_EQ(row["height"], kTinyNativeSide);
    }
  }

  // SDXL rows: every value that made the image, diffusers' defaults filled in,
  // and the same as the PNG's own parameters say.
  const std::string xl_dir = farm->output_root() + "/xl-rows";
  std::set<std::string> negatives_2;
  for (const json& row : ReadManifest(xl_dir)) {
    EXPECT_EQ(row["prompt_2"], "a bowl of fruit") << "prompt_2 defaults to the prompt";
    EXPECT_EQ(row["original_size"], "64x64") << "original_size defaults to the image size";
    EXPECT_EQ(row["target_size"], "96x80");
    EXPECT_EQ(row["crop_top_left"], "0,0");
    EXPECT_EQ(row["negative_original_size"], "48x48");
    EXPECT_EQ(row["negative_target_size"], "40x40");
    EXPECT_EQ(row["negative_crop_top_left"], "0,0");
    EXPECT_EQ(row["guidance_rescale"], 0.5);
    const std::string text = PngParameters(xl_dir + "/" + row["file_name"].get<std::string>());
    auto p = engine::ParseA1111Parameters(text);
    ASSERT_TRUE(p.ok()) << text;
    std::map<std::string, std::string> extra(p->extra.begin(), p->extra.end());
    EXPECT_EQ(extra["Target size"], "96x80") << text;
    EXPECT_EQ(extra["Negative Target size"], "40x40") << text;  // the engine's key: "Negative " + "Target size"
    EXPECT_EQ(extra["Guidance rescale"], "0.5") << text;
    // "Negative prompt 2" is in the text only when it is not the negative prompt.
    EXPECT_EQ(row["negative_prompt_2"], extra.count("Negative prompt 2") ? extra["Negative prompt 2"] : p->negative_prompt)
        << text;
    negatives_2.insert(row["negative_prompt_2"].get<std::string>());
  }
  EXPECT_EQ(negatives_2, (std::set<std::string>{"blurry", "cartoon"}));

  // SD 1.x rows keep exactly the keys they had.
  const std::set<std::string> sd_keys = {"file_name", "prompt",   "negative_prompt", "seed",     "guidance_scale",
                                         "steps",     "sampler",  "width",           "height",   "model",
                                         "model_hash", "vae",     "vae_hash",        "loras",    "sweep_id",
                                         "sweep",     "item_index", "job_index",     "worker",   "render_seconds",
                                         "prompt_tokens_dropped", "parameters"};
  const std::vector<json> sd_rows = ReadManifest(farm->output_root() + "/sd-rows");
  ASSERT_EQ(sd_rows.size(), 2u);
  for (const json& row : sd_rows) {
    std::set<std::string> keys;
    for (const auto& [k, v] : row.items()) keys.insert(k);
    EXPECT_EQ(keys, sd_keys) << row.dump();
  }

  // sdfarm grid labels by the new keys.
  r = sdfarm({"grid", xl_dir, "--rows", "negative_prompt_2", "--cols", "target_size"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("2 images in 1 sheet"), std::string::npos) << r.output;
}

TEST(FarmSdxlTest, SdxlFieldsOnAnSd1ModelFailTheJobWithAClearMessage) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 1, .max_attempts = 1}));
  const json spec = {{"name", "not-xl"}, {"model", "tiny-sd"}, {"prompt", "a fox"}, {"seeds", "0"},
                     {"steps", 2},       {"size", "64x64"},    {"original_size", "1024x1024"}};
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(spec.dump()));
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus st, farm->WaitForState(id, pb::DONE, absl::Minutes(2)));
  EXPECT_EQ(st.failed(), 1);
  EXPECT_EQ(st.done(), 0);
  EXPECT_NE(farm->WorkerLog(0).find("not an SDXL model"), std::string::npos) << farm->WorkerLog(0);
}

}  // namespace
}  // namespace sdfarm::testing
