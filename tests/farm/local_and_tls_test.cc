// `sdfarm local` as scripts/demo runs it, and TLS between client, worker and
// coordinator with a certificate made by the test.
#include <dirent.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/subprocess.h"
#include "tests/farm/farm_fixture.h"
#include "worker/engine/png_io.h"

namespace sdfarm::testing {
namespace {

namespace fs = std::filesystem;

std::string MakeDir(const std::string& tag) { return MakeTempDir(tag); }

// Processes whose command line mentions `needle`.
std::vector<std::string> ProcessesMentioning(const std::string& needle) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string pid = e.path().filename().string();
    if (pid.find_first_not_of("0123456789") != std::string::npos || pid == std::to_string(getpid())) continue;
    std::ifstream in(e.path() / "cmdline", std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    std::string cmd = ss.str();
    std::replace(cmd.begin(), cmd.end(), '\0', ' ');
    if (cmd.find(needle) != std::string::npos) out.push_back(pid + ": " + cmd);
  }
  return out;
}

TEST(LocalMode, TheDemoSweepRunsEndToEndAndStopsEverything) {
  const std::string dir = MakeDir("local");
  ASSERT_FALSE(dir.empty());
  fs::copy(SharedPath("models/tiny-sd"), dir + "/tiny-sd", fs::copy_options::recursive);
  // The command scripts/demo runs, on the tiny model.
  RunResult r = RunProgram({SDFARM_CLIENT_BIN, "local", "--workers", "2", "--model", dir + "/tiny-sd", "--device", "cpu",
                            "--name", "lighthouse", "--output-root", dir + "/out", "--prompt",
                            "a lighthouse on a cliff above a stormy sea, oil painting", "--negative-prompt", "blurry",
                            "--seeds", "0-3", "--guidance", "1,4,7.5", "--steps", "5", "--sampler", "euler_a", "--size",
                            "64x64", "--grid", "seed:guidance"},
                           {{"OMP_NUM_THREADS", "1"}}, absl::Minutes(4));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string sweep = dir + "/out/lighthouse";
  int pngs = 0;
  for (const auto& e : fs::directory_iterator(sweep)) pngs += e.path().extension() == ".png";
  EXPECT_EQ(pngs, 12);  // only the images: the contact sheet is outside the dataset folder
  std::ifstream manifest(sweep + "/metadata.jsonl");
  int rows = 0;
  for (std::string line; std::getline(manifest, line);) rows += !line.empty();
  EXPECT_EQ(rows, 12);
  auto grid = engine::ReadPng(sweep + ".grids/grid.png", 3);
  ASSERT_TRUE(grid.ok()) << grid.status().ToString();
  EXPECT_GT(grid->width, 3 * 64);
  EXPECT_GT(grid->height, 4 * 64);
  // It says where everything is.
  EXPECT_NE(r.output.find(sweep + "/metadata.jsonl"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(sweep + ".grids/grid.png"), std::string::npos) << r.output;
  // Redis keeps its data under the output root; nothing is left running.
  EXPECT_TRUE(fs::exists(dir + "/out/.sdfarm-local"));
  EXPECT_TRUE(ProcessesMentioning(dir).empty()) << ProcessesMentioning(dir).front();

  // Running the same command again resumes the finished sweep: nothing is rendered twice.
  RunResult again = RunProgram({SDFARM_CLIENT_BIN, "local", "--workers", "1", "--model", dir + "/tiny-sd", "--name",
                                "lighthouse", "--output-root", dir + "/out", "--prompt",
                                "a lighthouse on a cliff above a stormy sea, oil painting", "--negative-prompt",
                                "blurry", "--seeds", "0-3", "--guidance", "1,4,7.5", "--steps", "5", "--sampler",
                                "euler_a", "--size", "64x64"},
                               {{"OMP_NUM_THREADS", "1"}}, absl::Minutes(2));
  EXPECT_EQ(again.exit_code, 0) << again.output;
  std::ifstream manifest2(sweep + "/metadata.jsonl");
  rows = 0;
  for (std::string line; std::getline(manifest2, line);) rows += !line.empty();
  EXPECT_EQ(rows, 12);
  fs::remove_all(dir);
}

// `sdfarm local` with what users bring: a single-file checkpoint, LoRAs and a
// VAE by name from folders, all passed on to its workers.
TEST(LocalMode, ServesASingleFileWithLorasAndAVaeByName) {
  const std::string dir = MakeDir("local-sf");
  ASSERT_FALSE(dir.empty());
  fs::create_directories(dir + "/loras");
  fs::create_directories(dir + "/vaes");
  fs::copy_file(SharedPath("models/lora/tiny-sd-lora-kohya.safetensors"), dir + "/loras/style.safetensors");
  fs::copy(SharedPath("models/tiny-sd-vae-alt"), dir + "/vaes/alt", fs::copy_options::recursive);
  RunResult r = RunProgram({SDFARM_CLIENT_BIN, "local", "--workers", "1", "--model",
                            SharedPath("models/single_file/tiny-sd.safetensors"), "--model-config",
                            SharedPath("models/tiny-sd"), "--lora-dir", dir + "/loras", "--vae-dir", dir + "/vaes",
                            "--name", "styled", "--output-root", dir + "/out", "--prompt", "a cat in a hat", "--seeds",
                            "0-1", "--steps", "3", "--size", "64x64", "--lora", "style:0.5", "--vae", "alt"},
                           {{"OMP_NUM_THREADS", "1"}}, absl::Minutes(4));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string sweep = dir + "/out/styled";
  std::vector<nlohmann::json> rows = ReadManifest(sweep);
  ASSERT_EQ(rows.size(), 2u) << r.output;
  for (const auto& row : rows) {
    EXPECT_EQ(row["model"], "tiny-sd");  // the file's stem
    EXPECT_EQ(row["vae"], "alt");
    ASSERT_EQ(row["loras"].size(), 1u);
    EXPECT_EQ(row["loras"][0]["name"], "style");
    EXPECT_EQ(row["loras"][0]["scale"], 0.5);
    EXPECT_EQ(row["loras"][0]["hash"].get<std::string>().size(), 12u);
    EXPECT_NE(PngParameters(sweep + "/" + row["file_name"].get<std::string>()).find("Lora hashes"), std::string::npos);
  }
  EXPECT_TRUE(ProcessesMentioning(dir).empty()) << ProcessesMentioning(dir).front();
}

TEST(LocalMode, CtrlCStopsEveryChildAndExits130) {
  const std::string dir = MakeDir("local-int");
  ASSERT_FALSE(dir.empty());
  SpawnOptions o;
  o.argv = {SDFARM_CLIENT_BIN, "local", "--workers", "2", "--engine", "synthetic:50", "--prompt", "a", "--seeds",
            "0-199", "--size", "64x64", "--steps", "10", "--output-root", dir + "/out"};
  o.log_file = dir + "/local.log";
  auto p = Subprocess::Spawn(o);
  ASSERT_TRUE(p.ok());
  // Wait for the first image, then interrupt.
  const absl::Time deadline = absl::Now() + absl::Minutes(1);
  bool started = false;
  while (!started && absl::Now() < deadline) {
    std::error_code ec;
    for (const auto& e : fs::recursive_directory_iterator(dir + "/out", ec)) started |= e.path().extension() == ".png";
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(started);
  ASSERT_TRUE((*p)->Signal(SIGINT).ok());
  auto code = (*p)->Wait(absl::Seconds(40));
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 130);
  EXPECT_TRUE(ProcessesMentioning(dir).empty()) << ProcessesMentioning(dir).front();
  fs::remove_all(dir);
}

TEST(Tls, ClientAndWorkersTalkToATlsCoordinator) {
  const std::string dir = MakeDir("tls");
  ASSERT_FALSE(dir.empty());
  // A self-signed certificate for 127.0.0.1 / localhost.
  RunResult cert = RunProgram({"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                               "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout",
                               dir + "/key.pem", "-out", dir + "/cert.pem"},
                              {}, absl::Seconds(60));
  ASSERT_EQ(cert.exit_code, 0) << cert.output;
  auto redis = RedisServer::Start();
  ASSERT_TRUE(redis.ok());
  auto port = PickFreePort();
  ASSERT_TRUE(port.ok());
  const std::string address = absl::StrCat("127.0.0.1:", *port);
  SpawnOptions co;
  co.argv = {SDFARM_COORDINATOR_BIN, "--listen", address, "--redis-url", (*redis)->url(), "--output-root",
             dir + "/out", "--tls-cert", dir + "/cert.pem", "--tls-key", dir + "/key.pem"};
  co.env = {{"SDFARM_CLIENT_TOKEN", "ct"}, {"SDFARM_WORKER_TOKEN", "wt"}};
  co.log_file = dir + "/coordinator.log";
  auto coordinator = Subprocess::Spawn(co);
  ASSERT_TRUE(coordinator.ok());
  ASSERT_TRUE(WaitForPort(*port, absl::Seconds(20)).ok());
  SpawnOptions wo;
  wo.argv = {SDFARM_WORKER_BIN, "--coordinator", address, "--engine", "synthetic:1", "--model-name", "syn",
             "--tls-ca", dir + "/cert.pem"};
  wo.env = {{"SDFARM_WORKER_TOKEN", "wt"}};
  wo.log_file = dir + "/worker.log";
  auto worker = Subprocess::Spawn(wo);
  ASSERT_TRUE(worker.ok());

  const std::vector<std::pair<std::string, std::string>> env = {{"SDFARM_COORDINATOR", address},
                                                                {"SDFARM_TOKEN", "ct"}};
  RunResult submit = RunProgram({SDFARM_CLIENT_BIN, "--tls-ca", dir + "/cert.pem", "submit", "--name", "tls", "--model",
                                 "syn", "--prompt", "a", "--seeds", "0-5", "--size", "64x64", "--steps", "2", "--watch",
                                 "--wait-for-workers"},  // the worker may not have registered yet
                                env, absl::Minutes(2));
  EXPECT_EQ(submit.exit_code, 0) << submit.output;
  int pngs = 0;
  for (const auto& e : fs::directory_iterator(dir + "/out/tls")) pngs += e.path().extension() == ".png";
  EXPECT_EQ(pngs, 6);
  // Plaintext, or TLS without trusting the certificate, gets nowhere.
  RunResult plain = RunProgram({SDFARM_CLIENT_BIN, "--timeout", "3", "ls"}, env, absl::Seconds(60));
  EXPECT_NE(plain.exit_code, 0) << plain.output;
  RunResult untrusted = RunProgram({SDFARM_CLIENT_BIN, "--timeout", "3", "--tls-ca", "/etc/ssl/certs/ca-certificates.crt", "ls"},
                                   env, absl::Seconds(60));
  EXPECT_NE(untrusted.exit_code, 0) << untrusted.output;
  (*worker)->Stop(absl::Seconds(10));
  (*coordinator)->Stop(absl::Seconds(10));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace sdfarm::testing
