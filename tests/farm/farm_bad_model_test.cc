// Bad models (issue 1, part 7): a worker given a corrupt model, or weights
// that differ from those another live worker serves under the same name,
// refuses to start with a clear error, and the farm never counts it.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "sdfarm.grpc.pb.h"
#include "tests/farm/farm_fixture.h"

namespace sdfarm::testing {
namespace {

namespace fs = std::filesystem;

constexpr char kUnetWeights[] = "unet/diffusion_pytorch_model.safetensors";

// A writable copy of the tiny model under the farm's temp dir (the fixtures
// are read-only).
std::string CopyTinyModel(Farm& farm, const std::string& name) {
  const std::string dir = farm.dir() + "/" + name;
  fs::copy(SharedPath("models/tiny-sd"), dir, fs::copy_options::recursive);
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    fs::permissions(e.path(), fs::perms::owner_read | fs::perms::owner_write | fs::perms::owner_exec,
                    fs::perm_options::add);
  }
  fs::permissions(dir, fs::perms::owner_all, fs::perm_options::add);
  return dir;
}

int RegisteredWorkers(Farm& farm) {
  auto w = farm.Workers();
  return w.ok() ? w->workers_size() : -1;
}

TEST(BadModelTest, ATruncatedModelFileStopsTheWorkerBeforeItRegisters) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0}));
  const std::string model = CopyTinyModel(*farm, "tiny-sd");
  const std::string weights = model + "/" + kUnetWeights;
  fs::resize_file(weights, fs::file_size(weights) / 2);
  FARM_ASSERT_OK_AND_ASSIGN(int w, farm->StartWorker({.model_dir = model}));
  const std::optional<int> code = farm->worker(w)->Wait(absl::Seconds(60));
  const std::string log = farm->WorkerLog(w);
  ASSERT_TRUE(code.has_value()) << log;
  EXPECT_EQ(*code, 1) << log;
  EXPECT_TRUE(absl::StrContains(log, "cannot load the model")) << log;
  EXPECT_TRUE(absl::StrContains(log, "diffusion_pytorch_model.safetensors")) << log;  // names the bad file
  EXPECT_FALSE(absl::StrContains(log, "registered")) << log;
  EXPECT_EQ(RegisteredWorkers(*farm), 0);
}

TEST(BadModelTest, AHeaderThatLiesAboutItsSizeStopsTheWorker) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0}));
  const std::string model = CopyTinyModel(*farm, "tiny-sd");
  {
    // The first 8 bytes: the JSON header's length. Claim more than the file holds.
    std::fstream f(model + "/" + kUnetWeights, std::ios::in | std::ios::out | std::ios::binary);
    const uint64_t huge = uint64_t{1} << 40;
    f.write(reinterpret_cast<const char*>(&huge), sizeof(huge));
  }
  FARM_ASSERT_OK_AND_ASSIGN(int w, farm->StartWorker({.model_dir = model}));
  const std::optional<int> code = farm->worker(w)->Wait(absl::Seconds(60));
  const std::string log = farm->WorkerLog(w);
  ASSERT_TRUE(code.has_value()) << log;
  EXPECT_EQ(*code, 1) << log;
  EXPECT_TRUE(absl::StrContains(log, "cannot load the model")) << log;
  EXPECT_EQ(RegisteredWorkers(*farm), 0);
}

// Same --model-name, other weights, while a live worker serves the name: the
// coordinator refuses the registration (FAILED_PRECONDITION) and the worker
// exits 1 saying why; under another name the same weights are welcome.
TEST(BadModelTest, OtherWeightsUnderATakenModelNameAreRefused) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 1}));
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (RegisteredWorkers(*farm) < 1 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(100));
  ASSERT_EQ(RegisteredWorkers(*farm), 1) << farm->Logs();

  const std::string model = CopyTinyModel(*farm, "tiny-sd-retrained");
  {
    // Change one weight (the last byte of the data: a tensor element, not the header).
    const std::string weights = model + "/" + kUnetWeights;
    std::fstream f(weights, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-1, std::ios::end);
    char c = 0;
    f.read(&c, 1);
    f.seekp(-1, std::ios::end);
    c = static_cast<char>(c ^ 0x01);
    f.write(&c, 1);
  }
  FARM_ASSERT_OK_AND_ASSIGN(int w, farm->StartWorker({.model_dir = model, .model_name = "tiny-sd"}));
  const std::optional<int> code = farm->worker(w)->Wait(absl::Seconds(60));
  const std::string log = farm->WorkerLog(w);
  ASSERT_TRUE(code.has_value()) << log;
  EXPECT_EQ(*code, 1) << log;
  EXPECT_TRUE(absl::StrContains(log, "refused to register this worker")) << log;
  EXPECT_TRUE(absl::StrContains(log, "is served by worker w0 with weights hash")) << log;
  EXPECT_TRUE(absl::StrContains(farm->CoordinatorLog(), "registered")) << farm->CoordinatorLog();
  EXPECT_EQ(RegisteredWorkers(*farm), 1);

  FARM_ASSERT_OK_AND_ASSIGN(int renamed, farm->StartWorker({.model_dir = model, .model_name = "tiny-sd-retrained"}));
  const absl::Time deadline2 = absl::Now() + absl::Seconds(60);
  while (RegisteredWorkers(*farm) < 2 && absl::Now() < deadline2) absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ(RegisteredWorkers(*farm), 2) << farm->WorkerLog(renamed);
  EXPECT_TRUE(farm->worker(renamed)->running());
}

}  // namespace
}  // namespace sdfarm::testing
