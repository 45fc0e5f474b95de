// SDXL in the farm: a worker serving tiny-sdxl (a diffusers
// StableDiffusionXLPipeline folder) renders a sweep over guidance scales and
// SDXL micro-conditioning original sizes, and every image equals what
// sdfarm-render gives for the same settings (real redis-server, coordinator,
// worker and sdfarm-render processes, CPU).
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
