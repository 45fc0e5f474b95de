// The sdfarm client's behaviour without a real farm: sweep flags into specs,
// the errors people see for bad flags, the path checks and file writing of
// `get`, progress formatting, the program lookup of local mode, and the
// commands' exit codes and retries against a scripted in-process
// ClientService. End-to-end runs with real coordinators and workers are in
// tests/farm.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "client/commands.h"
#include "client/local_mode.h"
#include "client/progress.h"
#include "sdfarm.grpc.pb.h"

namespace sdfarm::client {
namespace {

namespace fs = std::filesystem;
using coordinator::Size;
using coordinator::SweepSpec;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

fs::path FreshDir(const std::string& name) {
  const fs::path dir = fs::path(::testing::TempDir()) / absl::StrCat("client_test-", getpid(), "-", name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void WriteFile(const fs::path& path, const std::string& text, bool executable = false) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << text;
  if (executable) chmod(path.c_str(), 0755);
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Sweep flags as `sdfarm submit` declares them, parsed from `args`.
struct Flags {
  explicit Flags(std::vector<std::string> args, bool model_flag = true) : flags("sdfarm submit", "") {
    AddSweepFlags(&flags, model_flag);
    args.insert(args.begin(), "sdfarm submit");
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    parsed = flags.Parse(static_cast<int>(argv.size()), argv.data()).ok();
  }
  tools::CliFlags flags;
  bool parsed = false;
};

SweepDefaults FixedDefaults() {
  SweepDefaults d;
  d.now = absl::FromCivil(absl::CivilSecond(2024, 5, 1, 12, 34, 56), absl::UTCTimeZone());
  d.zone = absl::UTCTimeZone();
  d.random_seed = 42;
  return d;
}

absl::StatusOr<SweepSpec> Spec(std::vector<std::string> args, SweepDefaults defaults = FixedDefaults()) {
  Flags f(std::move(args), defaults.model.empty());
  if (!f.parsed) return absl::InvalidArgumentError("flags did not parse");
  return SpecFromFlags(f.flags, defaults);
}

std::string SpecError(std::vector<std::string> args) {
  absl::StatusOr<SweepSpec> spec = Spec(std::move(args));
  return spec.ok() ? "OK" : std::string(spec.status().message());
}

// ------------------------------------------------------- sweep flags --

TEST(SweepFlags, ListsRangesAndRepeatedFlagsBecomeTheSpecLists) {
  absl::StatusOr<SweepSpec> spec = Spec({"--model",
                                         "sd15",
                                         "--prompt",
                                         "a red fox, in snow",
                                         "--prompt",
                                         "an owl",
                                         "--seeds",
                                         "0-3,7",
                                         "--guidance",
                                         "1, 4,7.5",
                                         "--steps",
                                         "20,30",
                                         "--sampler",
                                         "euler,ddim",
                                         "--sampler",
                                         "lms",
                                         "--size",
                                         "512x512,768x512",
                                         "--negative-prompt",
                                         "blurry",
                                         "--images-per-combination",
                                         "2",
                                         "--priority",
                                         "5",
                                         "--name",
                                         "fox-study"});
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->name, "fox-study");
  EXPECT_EQ(spec->model, "sd15");
  EXPECT_THAT(spec->prompts, ElementsAre("a red fox, in snow", "an owl"));  // prompts are never split on commas
  EXPECT_THAT(spec->negative_prompts, ElementsAre("blurry"));
  EXPECT_THAT(spec->seeds, ElementsAre(0, 1, 2, 3, 7));
  EXPECT_THAT(spec->guidance_scales, ElementsAre(1.0, 4.0, 7.5));
  EXPECT_THAT(spec->steps, ElementsAre(20, 30));
  EXPECT_THAT(spec->samplers, ElementsAre("euler", "ddim", "lms"));
  EXPECT_THAT(spec->sizes, ElementsAre(Size{512, 512}, Size{768, 512}));
  EXPECT_EQ(spec->images_per_combination, 2);
  EXPECT_EQ(spec->priority, 5);
  EXPECT_EQ(spec->combine, SweepSpec::Combine::kProduct);
  EXPECT_EQ(coordinator::CountImages(*spec), 2 * 5 * 3 * 2 * 3 * 2 * 2);
}

TEST(SweepFlags, UnsetFlagsKeepTheSpecDefaults) {
  absl::StatusOr<SweepSpec> spec = Spec({"--model", "sd15", "--prompt", "a fox", "--seeds", "1"});
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_THAT(spec->negative_prompts, ElementsAre(""));
  EXPECT_THAT(spec->guidance_scales, ElementsAre(7.5));
  EXPECT_THAT(spec->steps, ElementsAre(30));
  EXPECT_THAT(spec->samplers, ElementsAre("euler_a"));
  EXPECT_THAT(spec->sizes, ElementsAre(Size{512, 512}));  // a stand-in: no size named
  EXPECT_TRUE(spec->size_from_model);                     // the coordinator takes the model's own
  EXPECT_FALSE(spec->ToJson().contains("sizes"));
  EXPECT_EQ(spec->images_per_combination, 1);
  EXPECT_EQ(spec->priority, 1);
}

TEST(SweepFlags, ZipAdvancesTheListsTogether) {
  absl::StatusOr<SweepSpec> spec =
      Spec({"--model", "m", "--prompt", "a", "--prompt", "b", "--seeds", "1,2", "--guidance", "4,8", "--zip"});
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->combine, SweepSpec::Combine::kZip);
  EXPECT_EQ(coordinator::CountImages(*spec), 2);
  EXPECT_THAT(SpecError({"--model", "m", "--prompt", "a", "--prompt", "b", "--seeds", "1,2,3", "--zip"}),
              AllOf(StartsWith("--seeds: "), HasSubstr("zip needs lists of equal length")));
}

TEST(SweepFlags, RandomSeedsAreDrawnFromTheGivenRandomSeed) {
  absl::StatusOr<SweepSpec> a = Spec({"--model", "m", "--prompt", "a", "--seeds", "random:5"});
  absl::StatusOr<SweepSpec> b = Spec({"--model", "m", "--prompt", "a", "--seeds", "random:5"});
  SweepDefaults other = FixedDefaults();
  other.random_seed = 43;
  absl::StatusOr<SweepSpec> c = Spec({"--model", "m", "--prompt", "a", "--seeds", "random:5"}, other);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->seeds.size(), 5u);
  EXPECT_EQ(std::set<uint64_t>(a->seeds.begin(), a->seeds.end()).size(), 5u);
  EXPECT_EQ(a->seeds, b->seeds);
  EXPECT_NE(a->seeds, c->seeds);
}

TEST(SweepFlags, DefaultNameIsModelAndLocalTime) {
  EXPECT_EQ(DefaultSweepName("sd15", FixedDefaults().now, absl::UTCTimeZone()), "sd15-20240501-123456");
  absl::StatusOr<SweepSpec> spec = Spec({"--model", "sd15", "--prompt", "a", "--seeds", "1"});
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->name, "sd15-20240501-123456");
  // A long model name is cut so that the name stays within 100 characters.
  const std::string long_model(100, 'm');
  absl::StatusOr<SweepSpec> long_spec = Spec({"--model", long_model, "--prompt", "a", "--seeds", "1"});
  ASSERT_TRUE(long_spec.ok()) << long_spec.status();
  EXPECT_EQ(long_spec->name.size(), 100u);
  EXPECT_THAT(long_spec->name, ::testing::EndsWith("-20240501-123456"));
}

TEST(SweepFlags, LocalModeNamesTheSweepAfterItsSettings) {
  SweepDefaults local = FixedDefaults();
  local.model = "tiny-sd";
  local.name_from_spec = true;
  absl::StatusOr<SweepSpec> a = Spec({"--prompt", "a", "--seeds", "0-3"}, local);
  local.now += absl::Hours(5);  // a later re-run
  absl::StatusOr<SweepSpec> again = Spec({"--prompt", "a", "--seeds", "0-3"}, local);
  absl::StatusOr<SweepSpec> other = Spec({"--prompt", "a", "--seeds", "0-4"}, local);
  ASSERT_TRUE(a.ok() && again.ok() && other.ok()) << a.status();
  EXPECT_EQ(a->model, "tiny-sd");
  EXPECT_THAT(a->name, StartsWith("tiny-sd-"));
  EXPECT_EQ(a->name.size(), std::string("tiny-sd-").size() + 8);
  EXPECT_EQ(a->name, again->name);
  EXPECT_EQ(SpecRequestId(*a), SpecRequestId(*again));
  EXPECT_NE(a->name, other->name);
  EXPECT_NE(SpecRequestId(*a), SpecRequestId(*other));
}

TEST(SweepFlags, PromptsFileAddsOnePromptPerLine) {
  const fs::path dir = FreshDir("prompts");
  WriteFile(dir / "prompts.txt", "a fox\n\n  an owl  \r\n");
  absl::StatusOr<SweepSpec> spec =
      Spec({"--model", "m", "--prompt", "first", "--prompts-file", (dir / "prompts.txt").string(), "--seeds", "1"});
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_THAT(spec->prompts, ElementsAre("first", "a fox", "an owl"));
  EXPECT_THAT(SpecError({"--model", "m", "--prompts-file", (dir / "missing.txt").string(), "--seeds", "1"}),
              AllOf(StartsWith("--prompts-file: "), HasSubstr("cannot open")));
}

TEST(SweepFlags, SpecFileIsReadAndExcludesTheSweepFlags) {
  const fs::path dir = FreshDir("specfile");
  WriteFile(dir / "fox.yaml",
            "name: fox-study\nmodel: sd15\nprompts: [a fox]\nseeds: \"0-1\"\nguidance_scales: [5, 7.5]\n");
  absl::StatusOr<SweepSpec> spec = Spec({"--file", (dir / "fox.yaml").string()});
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->name, "fox-study");
  EXPECT_EQ(coordinator::CountImages(*spec), 4);
  EXPECT_THAT(SpecError({"--file", (dir / "fox.yaml").string(), "--seeds", "3"}),
              AllOf(HasSubstr("--file excludes the sweep flags"), HasSubstr("--seeds")));
}

TEST(SweepFlags, BadFlagsGiveErrorsThatNameTheFlag) {
  const std::vector<std::string> base = {"--model", "m", "--prompt", "a", "--seeds", "1"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = base;
    args.insert(args.end(), extra.begin(), extra.end());
    return SpecError(args);
  };
  EXPECT_THAT(with({"--size", "63x64"}), AllOf(StartsWith("--size: "), HasSubstr("multiple of 8")));
  EXPECT_THAT(with({"--size", "big"}), AllOf(StartsWith("--size: "), HasSubstr("WIDTHxHEIGHT")));
  EXPECT_THAT(with({"--guidance", "1,x"}), AllOf(StartsWith("--guidance: "), HasSubstr("\"x\"")));
  EXPECT_THAT(with({"--guidance", "101"}), AllOf(StartsWith("--guidance: "), HasSubstr("[0, 100]")));
  EXPECT_THAT(with({"--steps", "0"}), StartsWith("--steps: "));
  EXPECT_THAT(with({"--steps", "2.5"}), AllOf(StartsWith("--steps: "), HasSubstr("integer")));
  EXPECT_THAT(with({"--sampler", "euler,magic"}), AllOf(StartsWith("--sampler: "), HasSubstr("unknown sampler")));
  EXPECT_THAT(with({"--priority", "0"}), StartsWith("--priority: "));
  EXPECT_THAT(with({"--images-per-combination", "0"}), StartsWith("--images-per-combination: "));
  EXPECT_THAT(with({"--name", "../escape"}), AllOf(StartsWith("--name: "), HasSubstr("plain name")));
  EXPECT_THAT(SpecError({"--model", "m", "--prompt", "a", "--seeds", "5-1"}),
              AllOf(StartsWith("--seeds: "), HasSubstr("backwards")));
  EXPECT_THAT(SpecError({"--model", "m", "--prompt", "a"}), AllOf(StartsWith("--seeds: "), HasSubstr("required")));
  EXPECT_THAT(SpecError({"--model", "m", "--seeds", "1"}), AllOf(StartsWith("--prompt: "), HasSubstr("required")));
  EXPECT_THAT(SpecError({"--prompt", "a", "--seeds", "1"}), HasSubstr("--model is required"));
}

TEST(RequestIds, AreHexAndOnlySpecIdsRepeat) {
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string a = RandomRequestId(), b = RandomRequestId();
  EXPECT_EQ(a.size(), 32u);
  EXPECT_EQ(a.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_NE(a, b);
  absl::StatusOr<SweepSpec> spec = Spec({"--model", "m", "--prompt", "a", "--seeds", "1", "--name", "n"});
  ASSERT_TRUE(spec.ok());
  EXPECT_EQ(SpecRequestId(*spec), Sha256Hex(spec->ToJson().dump()).substr(0, 32));
}

// ------------------------------------------------------------ get --

TEST(RemotePaths, OnlyPlainRelativePathsAreAccepted) {
  for (const char* ok : {"000001-seed0-cfg7.5.png", "metadata.jsonl", "sub/dir/a.png", "a..b.png"}) {
    EXPECT_TRUE(CheckRemotePath(ok).ok()) << ok;
  }
  const std::string with_nul("a\0b", 3);
  for (const std::string& bad :
       {std::string(""), std::string("/etc/passwd"), std::string("../x.png"), std::string("a/../../b"),
        std::string(".."), std::string("a//b"), std::string("./a"), std::string("a/"), std::string("a\\..\\b"),
        with_nul, std::string("x.png.sdfarm-part")}) {
    EXPECT_FALSE(CheckRemotePath(bad).ok()) << bad;
  }
  EXPECT_THAT(std::string(CheckRemotePath("/etc/passwd").message()), HasSubstr("absolute"));
  EXPECT_THAT(std::string(CheckRemotePath("a/../b").message()), HasSubstr("\"..\""));
  EXPECT_TRUE(CheckFolderName("fox-study").ok());
  EXPECT_FALSE(CheckFolderName("a/b").ok());
  EXPECT_FALSE(CheckFolderName(".hidden").ok());
  EXPECT_FALSE(CheckFolderName("..").ok());
}

v1::FileChunk Chunk(const std::string& path, int64_t offset, const std::string& data, bool last) {
  v1::FileChunk c;
  c.set_path(path);
  c.set_offset(offset);
  c.set_data(data);
  c.set_last(last);
  return c;
}

TEST(ChunkWriter, FilesAppearWholeUnderTheirNameOnlyAfterTheLastChunk) {
  const fs::path dir = FreshDir("chunks");
  ChunkWriter writer(dir);
  ASSERT_TRUE(writer.Write(Chunk("a.png", 0, "hello ", false)).ok());
  ASSERT_TRUE(writer.Write(Chunk("sub/b.txt", 0, "bee", true)).ok());  // interleaved files are fine
  EXPECT_FALSE(fs::exists(dir / "a.png"));
  EXPECT_TRUE(fs::exists(dir / "a.png.sdfarm-part"));
  ASSERT_TRUE(writer.Write(Chunk("a.png", 6, "world", true)).ok());
  EXPECT_EQ(ReadFile(dir / "a.png"), "hello world");
  EXPECT_EQ(ReadFile(dir / "sub/b.txt"), "bee");
  EXPECT_FALSE(fs::exists(dir / "a.png.sdfarm-part"));
  EXPECT_TRUE(writer.Finish().ok());
  EXPECT_THAT(writer.files(), ElementsAre("sub/b.txt", "a.png"));
  EXPECT_EQ(writer.bytes(), 14);
}

TEST(ChunkWriter, RefusesEscapesGapsAndIncompleteFiles) {
  const fs::path root = FreshDir("chunks-bad");
  const fs::path dir = root / "sweep";
  fs::create_directories(dir);
  {
    ChunkWriter writer(dir);
    absl::Status s = writer.Write(Chunk("../evil.txt", 0, "x", true));
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
    EXPECT_FALSE(fs::exists(root / "evil.txt"));
    EXPECT_FALSE(writer.Write(Chunk("/tmp/evil.txt", 0, "x", true)).ok());
    EXPECT_TRUE(absl::IsDataLoss(writer.Write(Chunk("late.png", 5, "x", false))));
    ASSERT_TRUE(writer.Write(Chunk("gap.png", 0, "abc", false)).ok());
    EXPECT_TRUE(absl::IsDataLoss(writer.Write(Chunk("gap.png", 4, "d", true))));
    ASSERT_TRUE(writer.Write(Chunk("half.png", 0, "abc", false)).ok());
    absl::Status finish = writer.Finish();
    EXPECT_TRUE(absl::IsDataLoss(finish)) << finish;
  }
  // Nothing partial is left behind.
  std::vector<std::string> left;
  for (const auto& entry : fs::recursive_directory_iterator(root)) left.push_back(entry.path().filename().string());
  EXPECT_THAT(left, ElementsAre("sweep"));
}

// ------------------------------------------------------- progress --

v1::SweepStatus Status(int64_t done, int64_t failed, int64_t total, v1::SweepState state = v1::RUNNING) {
  v1::SweepStatus s;
  s.set_sweep_id("s1");
  s.set_name("fox-study");
  s.set_state(state);
  s.set_done(done);
  s.set_failed(failed);
  s.set_total(total);
  s.set_images_per_second(3.214);
  s.set_eta_seconds(18);
  return s;
}

TEST(Progress, DurationsAndRatesReadWell) {
  EXPECT_EQ(FormatDuration(0), "0s");
  EXPECT_EQ(FormatDuration(45.4), "45s");
  EXPECT_EQ(FormatDuration(185), "3m05s");
  EXPECT_EQ(FormatDuration(2 * 3600 + 5 * 60 + 9), "2h05m");
  EXPECT_EQ(FormatDuration(3 * 86400 + 4 * 3600), "3d04h");
  EXPECT_EQ(FormatDuration(-1), "--");
  EXPECT_EQ(FormatDuration(std::numeric_limits<double>::infinity()), "--");
  EXPECT_EQ(FormatRate(0.0523), "0.052");
  EXPECT_EQ(FormatRate(3.214), "3.21");
  EXPECT_EQ(FormatRate(12.46), "12.5");
  EXPECT_EQ(FormatRate(140.2), "140");
  EXPECT_EQ(FormatRate(0), "0");
}

TEST(Progress, BarShowsDoneAndFailedCells) {
  EXPECT_EQ(ProgressBar(0, 0, 10, 10), "[..........]");
  EXPECT_EQ(ProgressBar(5, 0, 10, 10), "[#####.....]");
  EXPECT_EQ(ProgressBar(5, 2, 10, 10), "[#####xx...]");
  EXPECT_EQ(ProgressBar(10, 0, 10, 10), "[##########]");
  EXPECT_EQ(ProgressBar(0, 1, 1000, 10), "[x.........]");  // one failure never disappears
  EXPECT_EQ(ProgressBar(3, 0, 0, 4), "[....]");
}

TEST(Progress, TerminalLineHasBarCountsRateEtaAndWorkers) {
  v1::SweepStatus s = Status(42, 1, 100);
  for (const char* id : {"gpu1-11", "gpu2-22"}) {
    v1::WorkerRate* w = s.add_workers();
    w->set_worker_id(id);
    w->set_images_per_second(1.6);
  }
  const std::string line = FormatProgressLine(s, 120);
  EXPECT_EQ(line,
            "[############x.................]  42/100  1 failed  3.21 img/s  ETA 18s  | img/s: gpu1-11 1.60 gpu2-22 1.60");
  // Never wider than the terminal: workers are counted instead, then the bar goes.
  for (int width = 20; width <= 200; ++width) {
    EXPECT_LE(FormatProgressLine(s, width).size(), static_cast<size_t>(width - 1)) << width;
  }
  EXPECT_THAT(FormatProgressLine(s, 75), HasSubstr("+"));
  EXPECT_THAT(FormatProgressLine(Status(3, 0, 10, v1::PAUSED), 100), HasSubstr("PAUSED"));
  EXPECT_THAT(FormatProgressLine(Status(10, 0, 10, v1::DONE), 100), Not(HasSubstr("ETA")));
}

TEST(Progress, PlainLineSaysStateCountsRateAndEta) {
  EXPECT_EQ(FormatPlainLine(Status(42, 1, 100)), "fox-study RUNNING 42/100 done, 1 failed, 3.21 images/s, ETA 18s");
  EXPECT_EQ(FormatPlainLine(Status(100, 0, 100, v1::DONE)), "fox-study DONE 100/100 done");
  v1::SweepStatus unknown = Status(0, 0, 100);
  unknown.set_eta_seconds(0);
  EXPECT_THAT(FormatPlainLine(unknown), ::testing::EndsWith("ETA --"));
}

v1::WatchEvent Event(v1::SweepStatus status, std::vector<std::string> failures = {}) {
  v1::WatchEvent e;
  *e.mutable_status() = std::move(status);
  for (auto& f : failures) e.add_failures(f);
  return e;
}

TEST(Progress, StepsOfJobsInProgressShowBeforeAnyImageIsDone) {
  // Nothing done yet, one job of 4 images at step 12 of 20: the bar moves.
  v1::SweepStatus s = Status(0, 0, 8);
  v1::ActiveJob* a = s.add_active();
  a->set_worker_id("w1");
  a->set_job_id("s1/0");
  a->set_images(4);
  a->set_step(12);
  a->set_total_steps(20);
  s.set_rendering_images(4 * 12.0 / 20);
  EXPECT_EQ(ProgressBar(0, 0, 8, 10, 2.4), "[>>>.......]");
  EXPECT_EQ(ProgressBar(2, 0, 8, 8, 2), "[##>>....]");
  EXPECT_THAT(FormatProgressLine(s, 120), HasSubstr("[>>>>>>>>>.....................]  0/8  rendering 4 (step 12/20)  3.21 img/s"));
  EXPECT_EQ(FormatPlainLine(s), "fox-study RUNNING 0/8 done, rendering 4 (step 12/20), 3.21 images/s, ETA 18s");
  v1::ActiveJob* b = s.add_active();
  b->set_images(4);
  b->set_step(10);
  b->set_total_steps(20);
  s.set_rendering_images(2.4 + 2);
  EXPECT_THAT(FormatPlainLine(s), HasSubstr("rendering 8 in 2 jobs (55%)"));
}

TEST(Progress, APausedSweepHasNoRateOrEta) {
  v1::SweepStatus s = Status(3, 0, 10, v1::PAUSED);
  EXPECT_EQ(FormatPlainLine(s), "fox-study PAUSED 3/10 done");
  EXPECT_THAT(FormatProgressLine(s, 120), Not(HasSubstr("img/s")));
  EXPECT_THAT(FormatProgressLine(s, 120), Not(HasSubstr("ETA")));
}

TEST(Progress, WarningsArePrintedOnceEvenAfterAReconnect) {
  std::ostringstream out, err;
  ProgressPrinter printer(ProgressMode::kPlain, &out, &err);
  v1::WatchEvent e = Event(Status(1, 0, 10));
  e.add_warnings("the prompt \"a\" is longer than CLIP reads");
  printer.OnEvent(e, absl::FromUnixSeconds(1000));
  printer.OnEvent(e, absl::FromUnixSeconds(1010));  // a new stream repeats it
  printer.Finish();
  EXPECT_EQ(err.str(), "warning: the prompt \"a\" is longer than CLIP reads\n");
}

TEST(Progress, PlainOutputPrintsAtMostEveryTwoSecondsButAlwaysStateChanges) {
  std::ostringstream out, err;
  ProgressPrinter printer(ProgressMode::kPlain, &out, &err);
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  printer.OnEvent(Event(Status(1, 0, 10)), t0);
  printer.OnEvent(Event(Status(2, 0, 10)), t0 + absl::Seconds(1));  // held back
  printer.OnEvent(Event(Status(3, 0, 10)), t0 + absl::Seconds(2.5));
  printer.OnEvent(Event(Status(3, 0, 10, v1::PAUSED)), t0 + absl::Seconds(2.6));  // state: at once
  printer.OnEvent(Event(Status(4, 1, 10), {"item 7: out of memory"}), t0 + absl::Seconds(2.7));
  printer.OnEvent(Event(Status(10, 1, 10, v1::DONE)), t0 + absl::Seconds(2.8));
  printer.Finish();
  EXPECT_EQ(out.str(),
            "fox-study RUNNING 1/10 done, 3.21 images/s, ETA 18s\n"
            "fox-study RUNNING 3/10 done, 3.21 images/s, ETA 18s\n"
            "fox-study PAUSED 3/10 done\n"
            "failed: item 7: out of memory\n"
            "fox-study RUNNING 4/10 done, 1 failed, 3.21 images/s, ETA 18s\n"
            "fox-study DONE 10/10 done, 1 failed\n");
  EXPECT_EQ(err.str(), "");
}

TEST(Progress, TerminalOutputRedrawsOneLineAndKeepsNotesReadable) {
  std::ostringstream out, err;
  ProgressPrinter printer(ProgressMode::kTerminal, &out, &err, 100);
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  printer.OnEvent(Event(Status(1, 0, 10)), t0);
  printer.OnEvent(Event(Status(2, 0, 10)), t0);
  printer.Note("worker 2 exited");
  printer.OnEvent(Event(Status(10, 0, 10, v1::DONE)), t0);
  printer.Finish();
  const std::string text = out.str();
  EXPECT_EQ(text.find('\n'), text.size() - 1) << "one line, ended once";
  EXPECT_THAT(text, HasSubstr("\r[##"));
  EXPECT_THAT(text, HasSubstr("\r\x1b[K"));  // cleared before the note
  EXPECT_THAT(text, HasSubstr("10/10"));
  EXPECT_EQ(err.str(), "worker 2 exited\n");
}

TEST(Progress, JsonOutputIsOneObjectPerEventWithoutRepeats) {
  std::ostringstream out, err;
  ProgressPrinter printer(ProgressMode::kJson, &out, &err);
  v1::WatchEvent e = Event(Status(2, 1, 10), {"item 3: boom"});
  e.add_new_files("000001-seed0-cfg7.5.png");
  printer.OnEvent(e, absl::Now());
  printer.OnEvent(Event(Status(2, 1, 10)), absl::Now());
  printer.OnEvent(Event(Status(2, 1, 10)), absl::Now());  // a reconnect repeats the status
  printer.Finish();
  std::vector<nlohmann::json> lines;
  std::istringstream in(out.str());
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["state"], "RUNNING");
  EXPECT_EQ(lines[0]["done"], 2);
  EXPECT_EQ(lines[0]["failed"], 1);
  EXPECT_EQ(lines[0]["total"], 10);
  EXPECT_EQ(lines[0]["new_files"], nlohmann::json::array({"000001-seed0-cfg7.5.png"}));
  EXPECT_EQ(lines[0]["failures"], nlohmann::json::array({"item 3: boom"}));
  EXPECT_EQ(lines[1]["failures"], nlohmann::json::array());
}

TEST(ExitCodes, FollowTheSweepsEnd) {
  EXPECT_EQ(ExitCodeForSweep(Status(10, 0, 10, v1::DONE)), kExitOk);
  EXPECT_EQ(ExitCodeForSweep(Status(9, 1, 10, v1::DONE)), kExitSweepFailed);
  EXPECT_EQ(ExitCodeForSweep(Status(3, 0, 10, v1::CANCELLED)), kExitSweepCancelled);
  // Redis lost the sweep's state and the coordinator could not rebuild it.
  v1::SweepStatus lost = Status(3, 0, 10, v1::RUNNING);
  lost.set_state_lost(true);
  EXPECT_EQ(ExitCodeForSweep(lost), kExitSweepStateLost);
  // A loss it repaired leaves the ordinary outcome.
  v1::SweepStatus repaired = Status(10, 0, 10, v1::DONE);
  repaired.set_recoveries(2);
  EXPECT_EQ(ExitCodeForSweep(repaired), kExitOk);
}

// ---------------------------------------------------- local mode --

TEST(LocalBinaries, LookupOrderIsEnvThenNextToSdfarmThenBuildTreeThenPath) {
  const fs::path root = FreshDir("binaries");
  const fs::path self_dir = root / "build/client";
  const fs::path env_bin = root / "custom/my-coordinator";
  const fs::path next_to = self_dir / "sdfarm-coordinator";
  const fs::path tree = root / "build/coordinator/sdfarm-coordinator";
  const fs::path path1 = root / "path1/sdfarm-coordinator";
  const fs::path path2 = root / "path2/sdfarm-coordinator";
  const std::string path_env = (root / "path1").string() + ":" + (root / "path2").string();
  fs::create_directories(root / "path1");
  for (const fs::path& p : {env_bin, next_to, tree, path2}) WriteFile(p, "#!/bin/sh\n", true);
  WriteFile(path1, "not executable\n");

  EXPECT_THAT(BinaryCandidates(CoordinatorBinary(), env_bin.string(), self_dir.string(), path_env),
              ElementsAre(env_bin.string(), next_to.string(), tree.string(), path1.string(), path2.string()));
  auto find = [&](const std::string& env) {
    absl::StatusOr<std::string> found = LocateBinary(CoordinatorBinary(), env, self_dir.string(), path_env);
    return found.ok() ? *found : "error: " + std::string(found.status().message());
  };
  EXPECT_EQ(find(env_bin.string()), env_bin.string());
  EXPECT_EQ(find(""), next_to.string());
  fs::remove(next_to);
  EXPECT_EQ(find(""), tree.string());
  fs::remove(tree);
  EXPECT_EQ(find(""), path2.string());  // path1's file is not executable
  fs::remove(path2);
  EXPECT_THAT(find(""), AllOf(HasSubstr("cannot find sdfarm-coordinator"), HasSubstr("SDFARM_COORDINATOR_BIN")));
  // A wrong override is an error, not a silent fallback.
  EXPECT_THAT(find((root / "nope").string()), HasSubstr("SDFARM_COORDINATOR_BIN="));
  fs::create_directories(root / "dir-not-file");
  EXPECT_THAT(find((root / "dir-not-file").string()), HasSubstr("not an executable file"));

  // The worker's build-tree place, and redis-server from PATH only.
  EXPECT_THAT(BinaryCandidates(WorkerBinary(), "", self_dir.string(), ""),
              ElementsAre((self_dir / "sdfarm-worker").string(), (root / "build/worker/farm/sdfarm-worker").string()));
  WriteFile(self_dir / "redis-server", "#!/bin/sh\n", true);
  absl::StatusOr<std::string> redis = LocateBinary(RedisBinary(), "", self_dir.string(), path_env);
  ASSERT_FALSE(redis.ok());
  EXPECT_THAT(std::string(redis.status().message()), HasSubstr("apt-get install redis-server"));
  WriteFile(root / "path1/redis-server", "#!/bin/sh\n", true);
  EXPECT_EQ(LocateBinary(RedisBinary(), "", self_dir.string(), path_env).value_or(""),
            (root / "path1/redis-server").string());
}

TEST(LocalMode, ModelNameComesFromTheFlagTheFolderOrTheSyntheticEngine) {
  const fs::path root = FreshDir("model-name");
  fs::create_directories(root / "tiny-sd");
  EXPECT_EQ(LocalModelName((root / "tiny-sd").string(), "", "").value_or(""), "tiny-sd");
  EXPECT_EQ(LocalModelName((root / "tiny-sd/").string(), "", "").value_or(""), "tiny-sd");
  EXPECT_EQ(LocalModelName((root / "tiny-sd").string(), "sd15", "").value_or(""), "sd15");
  EXPECT_EQ(LocalModelName("", "", "synthetic:5").value_or(""), "synthetic");
  EXPECT_EQ(LocalModelName("x", "synthetic", "synthetic:5").value_or(""), "synthetic");
  EXPECT_FALSE(LocalModelName("", "", "").ok());
  fs::create_directories(root / "my model");
  absl::StatusOr<std::string> bad = LocalModelName((root / "my model").string(), "", "");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("--model-name"));
}

TEST(LocalMode, GridFlagTakesRowsAndColumnsOrNothing) {
  using Axes = std::pair<std::string, std::string>;
  EXPECT_EQ(ParseGridAxes("seed:guidance").value_or(Axes()), Axes("seed", "guidance"));
  EXPECT_FALSE(ParseGridAxes("seed").ok());
  EXPECT_FALSE(ParseGridAxes("seed:").ok());
  EXPECT_FALSE(ParseGridAxes("a:b:c").ok());
  EXPECT_THAT(ExpandBareGrid({"sdfarm local", "--grid", "--workers", "2", "--grid"}),
              ElementsAre("sdfarm local", "--grid=seed:guidance", "--workers", "2", "--grid=seed:guidance"));
  EXPECT_THAT(ExpandBareGrid({"sdfarm local", "--grid", "prompt:sampler"}),
              ElementsAre("sdfarm local", "--grid", "prompt:sampler"));
}

TEST(LocalMode, RedisIsLoopbackAppendOnlyNoEvictionWithAPassword) {
  const std::string conf = RedisConfig("/data/my \"dir\"", 6390, "secret");
  for (const char* line :
       {"bind 127.0.0.1\n", "port 6390\n", "dir \"/data/my \\\"dir\\\"\"\n", "appendonly yes\n", "appendfsync always\n",
        "save \"\"\n", "maxmemory-policy noeviction\n", "requirepass secret\n"}) {
    EXPECT_THAT(conf, HasSubstr(line));
  }
}

TEST(LocalMode, LogTailKeepsTheLastLines) {
  const fs::path dir = FreshDir("logtail");
  std::string text;
  for (int i = 1; i <= 30; ++i) absl::StrAppend(&text, "line ", i, "\n");
  WriteFile(dir / "w.log", text + "\n\n");
  EXPECT_EQ(LogTail((dir / "w.log").string(), 3), "    line 28\n    line 29\n    line 30\n");
  EXPECT_EQ(LogTail((dir / "missing.log").string(), 3), "");
}

// ------------------------------------- commands against a fake coordinator --

// A scripted ClientService on a loopback port.
class FakeCoordinator final : public v1::ClientService::Service {
 public:
  struct Stream {
    std::vector<v1::WatchEvent> events;
    grpc::Status end = grpc::Status::OK;
  };

  FakeCoordinator() {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
  }
  ~FakeCoordinator() override { server_->Shutdown(std::chrono::system_clock::now()); }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }

  absl::Mutex mu;
  int unavailable_submits ABSL_GUARDED_BY(mu) = 0;
  std::vector<std::string> request_ids ABSL_GUARDED_BY(mu);
  std::vector<std::string> spec_jsons ABSL_GUARDED_BY(mu);
  std::vector<Stream> streams ABSL_GUARDED_BY(mu);
  int watch_calls ABSL_GUARDED_BY(mu) = 0;
  std::string sweep_name ABSL_GUARDED_BY(mu) = "fox-study";
  std::vector<v1::FileChunk> chunks ABSL_GUARDED_BY(mu);

  grpc::Status Submit(grpc::ServerContext* ctx, const v1::SubmitRequest* req, v1::SubmitResponse* resp) override {
    if (grpc::Status auth = Auth(ctx); !auth.ok()) return auth;
    absl::MutexLock lock(&mu);
    request_ids.push_back(req->request_id());
    spec_jsons.push_back(req->spec_json());
    if (unavailable_submits > 0) {
      --unavailable_submits;
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "restarting");
    }
    resp->set_sweep_id("s1");
    resp->set_images(8);
    resp->set_jobs(2);
    return grpc::Status::OK;
  }
  grpc::Status Status(grpc::ServerContext* ctx, const v1::SweepRef* ref, v1::SweepStatus* resp) override {
    if (grpc::Status auth = Auth(ctx); !auth.ok()) return auth;
    absl::MutexLock lock(&mu);
    if (ref->sweep() != "s1" && ref->sweep() != sweep_name)
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no sweep");
    resp->set_sweep_id("s1");
    resp->set_name(sweep_name);
    resp->set_output_dir("/srv/out/" + sweep_name);
    return grpc::Status::OK;
  }
  grpc::Status Watch(grpc::ServerContext* ctx, const v1::SweepRef* ref,
                     grpc::ServerWriter<v1::WatchEvent>* writer) override {
    if (grpc::Status auth = Auth(ctx); !auth.ok()) return auth;
    Stream stream;
    {
      absl::MutexLock lock(&mu);
      if (ref->sweep() != "s1") return grpc::Status(grpc::StatusCode::NOT_FOUND, "no sweep named " + ref->sweep());
      const int n = watch_calls++;
      if (n >= static_cast<int>(streams.size())) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "script ended");
      stream = streams[n];
    }
    for (const v1::WatchEvent& e : stream.events) writer->Write(e);
    return stream.end;
  }
  grpc::Status Get(grpc::ServerContext* ctx, const v1::SweepRef*, grpc::ServerWriter<v1::FileChunk>* writer) override {
    if (grpc::Status auth = Auth(ctx); !auth.ok()) return auth;
    std::vector<v1::FileChunk> copy;
    {
      absl::MutexLock lock(&mu);
      copy = chunks;
    }
    for (const v1::FileChunk& c : copy) writer->Write(c);
    return grpc::Status::OK;
  }

 private:
  static grpc::Status Auth(grpc::ServerContext* ctx) {
    auto it = ctx->client_metadata().find("authorization");
    if (it == ctx->client_metadata().end() || it->second != "Bearer tok") {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "bad token");
    }
    return grpc::Status::OK;
  }

  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

int Cli(std::vector<std::string> args) {
  args.insert(args.begin(), "sdfarm");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  return RunCli(static_cast<int>(argv.size()), argv.data());
}

TEST(Commands, UsageErrorsExitTwoAndHelpExitsZero) {
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(Cli({}), kExitUsage);
  EXPECT_EQ(Cli({"frobnicate"}), kExitUsage);
  EXPECT_EQ(Cli({"--verbose", "ls"}), kExitUsage);
  EXPECT_EQ(Cli({"status"}), kExitUsage);
  EXPECT_EQ(Cli({"submit", "--model", "m", "--prompt", "a", "--seeds", "x"}), kExitUsage);
  EXPECT_EQ(Cli({"submit", "--bogus"}), kExitUsage);
  EXPECT_EQ(Cli({"submit", "--model", "m", "--prompt", "a", "--seeds", "1", "--dry-run", "--watch"}), kExitUsage);
  EXPECT_EQ(Cli({"local", "--workers", "0", "--engine", "synthetic:1", "--prompt", "a", "--seeds", "1"}), kExitUsage);
  EXPECT_EQ(Cli({"--help"}), kExitOk);
  EXPECT_EQ(Cli({"watch", "--help"}), kExitOk);
  EXPECT_EQ(Cli({"help", "local"}), kExitOk);
  const std::string out = ::testing::internal::GetCapturedStdout();
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(err, HasSubstr("sdfarm: error: unknown command \"frobnicate\""));
  EXPECT_THAT(err, HasSubstr("sdfarm: error: --seeds: bad seed \"x\""));
  EXPECT_THAT(err, HasSubstr("sdfarm: error: missing SWEEP"));
  EXPECT_THAT(out, HasSubstr("Exit codes: 0 when the sweep is DONE"));
  EXPECT_THAT(out, HasSubstr("Usage: sdfarm local"));
}

TEST(Commands, UnreachableCoordinatorFailsWithAHint) {
  const int port = [] {
    FakeCoordinator gone;  // a port that was just free
    return std::stoi(gone.address().substr(10));
  }();
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(Cli({"--coordinator", absl::StrCat("127.0.0.1:", port), "--timeout", "0.5", "ls"}), kExitFailure);
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(err, HasSubstr("sdfarm: error: cannot reach the coordinator at 127.0.0.1:"));
  EXPECT_THAT(err, HasSubstr("SDFARM_COORDINATOR"));
}

TEST(Commands, SubmitRetriesUnavailableWithOneRequestId) {
  FakeCoordinator fake;
  {
    absl::MutexLock lock(&fake.mu);
    fake.unavailable_submits = 2;
  }
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  const int code = Cli({"submit", "--coordinator", fake.address(), "--token", "tok", "--model", "sd15", "--prompt",
                        "a fox", "--seeds", "0-3", "--guidance", "1,7.5", "--name", "fox-study"});
  const std::string out = ::testing::internal::GetCapturedStdout();
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(code, kExitOk) << err;
  absl::MutexLock lock(&fake.mu);
  ASSERT_EQ(fake.request_ids.size(), 3u);
  EXPECT_EQ(fake.request_ids[0].size(), 32u);
  EXPECT_EQ(fake.request_ids[0], fake.request_ids[1]);
  EXPECT_EQ(fake.request_ids[0], fake.request_ids[2]);
  // What travels is the canonical spec.
  const nlohmann::json spec = nlohmann::json::parse(fake.spec_jsons[0]);
  EXPECT_EQ(spec["name"], "fox-study");
  EXPECT_EQ(spec["seeds"], nlohmann::json::array({0, 1, 2, 3}));
  EXPECT_EQ(spec["guidance_scales"], nlohmann::json::array({1.0, 7.5}));
  EXPECT_THAT(out, HasSubstr("sweep s1 (fox-study): 8 images in 2 jobs"));
  EXPECT_THAT(out, HasSubstr("output: /srv/out/fox-study"));
  EXPECT_THAT(err, HasSubstr("unavailable"));
}

TEST(Commands, WrongTokenIsExplained) {
  FakeCoordinator fake;
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(Cli({"status", "s1", "--coordinator", fake.address(), "--token", "nope"}), kExitFailure);
  EXPECT_THAT(::testing::internal::GetCapturedStderr(), HasSubstr("--token or SDFARM_TOKEN"));
}

TEST(Commands, WatchReconnectsAndExitsThreeWhenImagesFailed) {
  FakeCoordinator fake;
  {
    absl::MutexLock lock(&fake.mu);
    fake.streams.push_back({{Event(Status(2, 0, 10))}, grpc::Status(grpc::StatusCode::UNAVAILABLE, "restart")});
    fake.streams.push_back({{Event(Status(5, 0, 10)), Event(Status(9, 1, 10, v1::DONE), {"item 4: boom"})}});
  }
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  const int code = Cli({"--token", "tok", "--coordinator", fake.address(), "watch", "s1", "--json"});
  const std::string out = ::testing::internal::GetCapturedStdout();
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(code, kExitSweepFailed) << err;
  EXPECT_THAT(out, HasSubstr("\"done\":2"));
  EXPECT_THAT(out, HasSubstr("\"state\":\"DONE\""));
  EXPECT_THAT(out, HasSubstr("item 4: boom"));
  EXPECT_THAT(err, HasSubstr("reconnecting"));
  EXPECT_THAT(err, HasSubstr("1 failed image"));
}

TEST(Commands, WatchEndsWithFourOnCancelAndOneOnUnknownSweeps) {
  FakeCoordinator fake;
  {
    absl::MutexLock lock(&fake.mu);
    fake.streams.push_back({{Event(Status(3, 0, 10, v1::CANCELLED))}});
  }
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(Cli({"--token=tok", "--coordinator", fake.address(), "watch", "s1"}), kExitSweepCancelled);
  EXPECT_EQ(Cli({"--token=tok", "--coordinator", fake.address(), "watch", "nope"}), kExitFailure);
  ::testing::internal::GetCapturedStdout();
  EXPECT_THAT(::testing::internal::GetCapturedStderr(), HasSubstr("no sweep named nope"));
}

TEST(Commands, WatchGivesUpAfterTheReconnectTimeout) {
  FakeCoordinator fake;  // no streams scripted: every Watch is UNAVAILABLE
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  const absl::Time start = absl::Now();
  EXPECT_EQ(Cli({"--token=tok", "--coordinator", fake.address(), "watch", "s1", "--reconnect-timeout", "1"}),
            kExitFailure);
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  ::testing::internal::GetCapturedStdout();
  EXPECT_THAT(::testing::internal::GetCapturedStderr(), HasSubstr("--reconnect-timeout"));
}

TEST(Commands, GetWritesTheSweepFolderAndRefusesEscapingPaths) {
  FakeCoordinator fake;
  const fs::path out = FreshDir("get");
  {
    absl::MutexLock lock(&fake.mu);
    fake.chunks = {Chunk("000000-seed0-cfg7.5.png", 0, "PNG1", false), Chunk("metadata.jsonl", 0, "{}\n", true),
                   Chunk("000000-seed0-cfg7.5.png", 4, "PNG2", true)};
  }
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(Cli({"get", "fox-study", "--out", out.string(), "--coordinator", fake.address(), "--token", "tok"}),
            kExitOk);
  EXPECT_EQ(ReadFile(out / "fox-study/000000-seed0-cfg7.5.png"), "PNG1PNG2");
  EXPECT_EQ(ReadFile(out / "fox-study/metadata.jsonl"), "{}\n");
  EXPECT_THAT(::testing::internal::GetCapturedStdout(), HasSubstr("fetched 2 files (11 bytes)"));
  ::testing::internal::GetCapturedStderr();

  {
    absl::MutexLock lock(&fake.mu);
    fake.chunks = {Chunk("../../escaped.txt", 0, "x", true)};
  }
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(Cli({"get", "s1", "--out", out.string(), "--coordinator", fake.address(), "--token", "tok"}), kExitFailure);
  EXPECT_THAT(::testing::internal::GetCapturedStderr(), HasSubstr("unsafe path"));
  EXPECT_FALSE(fs::exists(out.parent_path() / "escaped.txt"));
  EXPECT_FALSE(fs::exists(out / "escaped.txt"));

  {
    absl::MutexLock lock(&fake.mu);
    fake.sweep_name = "..";
  }
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(Cli({"get", "s1", "--out", out.string(), "--coordinator", fake.address(), "--token", "tok"}), kExitFailure);
  EXPECT_THAT(::testing::internal::GetCapturedStderr(), HasSubstr("refusing the sweep name"));
}

}  // namespace
}  // namespace sdfarm::client
