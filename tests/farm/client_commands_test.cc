// The sdfarm client's commands against a real farm (synthetic workers):
// submit --dry-run / --watch, status, ls, workers, pause/resume, get, grid.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "tests/farm/farm_fixture.h"

namespace sdfarm::testing {
namespace {

namespace fs = std::filesystem;

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(ClientCommands, SubmitWatchStatusLsWorkersGetAndGrid) {
  auto farm_or = Farm::Start({.workers = 2, .engine = "synthetic:5", .job_size = 4});
  ASSERT_TRUE(farm_or.ok()) << farm_or.status().ToString();
  auto& farm = *farm_or;
  const std::vector<std::pair<std::string, std::string>> env = {{"SDFARM_COORDINATOR", farm->address()},
                                                                {"SDFARM_TOKEN", farm->client_token()}};
  auto sdfarm = [&](std::vector<std::string> args) {
    args.insert(args.begin(), SDFARM_CLIENT_BIN);
    return RunProgram(args, env, absl::Minutes(2));
  };
  // Both workers registered: the dry run names what the fleet serves.
  for (absl::Time end = absl::Now() + absl::Seconds(30); absl::Now() < end; absl::SleepFor(absl::Milliseconds(100))) {
    auto w = farm->Workers();
    if (w.ok() && w->workers_size() == 2) break;
  }
  const std::vector<std::string> sweep = {"--name", "cli", "--model", "tiny-sd", "--prompt", "a red fox",
                                          "--seeds", "0-3", "--guidance", "1,7.5", "--steps", "3", "--size", "64x64"};

  // --dry-run counts and creates nothing.
  std::vector<std::string> dry = {"submit", "--dry-run"};
  dry.insert(dry.end(), sweep.begin(), sweep.end());
  RunResult r = sdfarm(dry);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("8 images"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("2 jobs"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("2 live workers serve tiny-sd"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("the fleet serves: tiny-sd (2 workers"), std::string::npos) << r.output;
  EXPECT_FALSE(farm->Status("cli").ok());

  std::vector<std::string> submit = {"submit", "--watch"};
  submit.insert(submit.end(), sweep.begin(), sweep.end());
  r = sdfarm(submit);
  ASSERT_EQ(r.exit_code, 0) << r.output << farm->Logs();

  r = sdfarm({"status", "cli", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  nlohmann::json status = nlohmann::json::parse(r.output.substr(r.output.find('{')), nullptr, false);
  ASSERT_FALSE(status.is_discarded()) << r.output;
  EXPECT_EQ(status.dump().find("\"DONE\"") != std::string::npos, true) << r.output;

  r = sdfarm({"ls"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("cli"), std::string::npos) << r.output;
  r = sdfarm({"workers"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("w0"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("w1"), std::string::npos) << r.output;

  // A finished sweep cannot be paused; an unknown one is an error.
  EXPECT_NE(sdfarm({"pause", "cli"}).exit_code, 0);
  EXPECT_NE(sdfarm({"status", "no-such-sweep"}).exit_code, 0);

  // get: the same bytes as the coordinator's folder; grid from the copy.
  const std::string dl = farm->dir() + "/download";
  r = sdfarm({"get", "cli", "--out", dl});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  int files = 0;
  for (const auto& e : fs::directory_iterator(farm->output_root() + "/cli")) {
    const std::string name = e.path().filename().string();
    EXPECT_EQ(Slurp(e.path().string()), Slurp(dl + "/cli/" + name)) << name;
    ++files;
  }
  EXPECT_EQ(files, 8 + 2);  // images, metadata.jsonl, sweep.json
  r = sdfarm({"grid", dl + "/cli", "--rows", "seed", "--cols", "guidance"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(fs::exists(dl + "/cli.grids/grid.png"));
  EXPECT_FALSE(fs::exists(dl + "/cli/grid.png"));

  // A bad sweep is refused with a clear message and a usage exit code.
  r = sdfarm({"submit", "--name", "../up", "--model", "tiny-sd", "--prompt", "x", "--seeds", "0"});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("name"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace sdfarm::testing
