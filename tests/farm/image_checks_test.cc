// Reported images are checked before they cost anything (security finding:
// a 2 MB PNG bomb or a 60 MB PNG was decoded, ~1.2 s of CPU each, before the
// ownership check): a worker that does not hold the job (job_binding.h) is
// turned away before its image is looked at; an owner's image whose PNG header does not fit the
// job (size, 8-bit RGB, file size) is refused from the header alone; a
// message over 40 MiB is refused by gRPC itself. The coordinator's CPU time
// is read from /proc, not timed on a wall clock. The hostile workers use the
// public proto only (Register, then Claim and ReportJob with their session).
#include <gtest/gtest.h>
#include <zlib.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/grpc_util.h"
#include "tests/farm/farm_fixture.h"
#include "tests/farm/hostile_worker.h"

namespace sdfarm::testing {
namespace {

// What refusing an image may cost the coordinator at most: decoding the bomb
// costs ~1.2 s in a Release build. Sanitized builds spend ~3x the CPU on every
// byte received, so their bound is higher (and still below a decode there).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr double kCpuBound = 1.0;
#else
constexpr double kCpuBound = 0.3;
#endif

namespace fs = std::filesystem;
namespace pb = sdfarm::v1;
using json = nlohmann::json;

std::string BigEndian(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8), static_cast<char>(v)};
}

std::string Chunk(const std::string& type, const std::string& data) {
  std::string body = type + data;
  const uLong crc = crc32(0, reinterpret_cast<const Bytef*>(body.data()), static_cast<uInt>(body.size()));
  return BigEndian(static_cast<uint32_t>(data.size())) + body + BigEndian(static_cast<uint32_t>(crc));
}

std::string Ihdr(uint32_t width, uint32_t height, int bit_depth, int colour_type) {
  std::string d = BigEndian(width) + BigEndian(height);
  d += static_cast<char>(bit_depth);
  d += static_cast<char>(colour_type);
  d += std::string(3, '\0');
  return Chunk("IHDR", d);
}

// About 2 MB of deflate data that inflates to about 2 GB: 1 MiB of zeros
// compressed once with a full flush (a self-contained block sequence),
// repeated. Claims 16384x16384 RGBA with 16-bit samples.
std::string PngBomb() {
  z_stream z{};
  EXPECT_EQ(deflateInit(&z, 9), Z_OK);
  std::string zeros(1 << 20, '\0'), out(1 << 16, '\0');
  z.next_in = reinterpret_cast<Bytef*>(zeros.data());
  z.avail_in = static_cast<uInt>(zeros.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&z, Z_FULL_FLUSH), Z_OK);
  const std::string header = out.substr(0, 2);  // the zlib header comes once
  const std::string block = out.substr(2, out.size() - z.avail_out - 2);
  deflateEnd(&z);
  std::string idat = header;
  while (idat.size() < (size_t{2} << 20)) idat += block;
  return "\x89PNG\r\n\x1a\n" + Ihdr(16384, 16384, 16, 6) + Chunk("IDAT", idat) + Chunk("IEND", "");
}

// A well-formed header for a 64x64 RGB image, followed by `bytes` of data.
std::string OversizedPng(size_t bytes) {
  return "\x89PNG\r\n\x1a\n" + Ihdr(64, 64, 8, 2) + Chunk("tEXt", std::string(bytes, 'x')) + Chunk("IEND", "");
}

int PngFiles(const std::string& dir) {
  int n = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) n += e.path().extension() == ".png";
  return n;
}

TEST(ImageChecks, BombsAndHugeImagesAreRefusedFromTheHeaderAndNothingIsWritten) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0, .engine = "synthetic:1"}));
  const json spec = {{"name", "bombed"},     {"model", "tiny-sd"}, {"prompts", {"a red fox"}}, {"seeds", "0-7"},
                     {"guidance_scales", {7.5}}, {"steps", 2},     {"sizes", {"64x64"}}};
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(spec.dump()));
  HostileWorker evil(farm->channel(), farm->worker_token()), thief(farm->channel(), farm->worker_token());
  pb::RegisterResponse reg;
  ASSERT_TRUE(evil.Register("evil", "tiny-sd", "synthetic", &reg).ok());
  ASSERT_TRUE(thief.Register("thief", "tiny-sd", "synthetic", &reg).ok());
  FARM_ASSERT_OK_AND_ASSIGN(pb::ClaimedJob job0, evil.ClaimJob(absl::Seconds(30)));
  const std::string bomb = PngBomb();
  const std::string huge = OversizedPng(60 << 20), big = OversizedPng(12 << 20);
  ASSERT_GT(bomb.size(), size_t{2} << 20);
  ASSERT_GT(huge.size(), size_t{60} << 20);
  const int pid = farm->coordinator()->pid();
  const std::string folder = farm->output_root() + "/bombed";

  // Not the owner: turned away before the image is looked at.
  double before = ProcessCpuSeconds(pid);
  pb::ReportAck ack;
  grpc::Status st = thief.Report({HostileWorker::Image(job0, 0, bomb)}, &ack);
  double cpu = ProcessCpuSeconds(pid) - before;
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_FALSE(ack.accepted());
  EXPECT_LT(cpu, kCpuBound) << "a non-owner's PNG bomb cost the coordinator " << cpu << " s of CPU";

  // The owner's bomb: refused from its header.
  before = ProcessCpuSeconds(pid);
  ack.Clear();
  st = evil.Report({HostileWorker::Image(job0, 0, bomb)}, &ack);
  cpu = ProcessCpuSeconds(pid) - before;
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_LT(cpu, kCpuBound) << "a PNG bomb cost the coordinator " << cpu << " s of CPU";

  // 60 MB: over the largest message the coordinator receives at all.
  FARM_ASSERT_OK_AND_ASSIGN(pb::ClaimedJob job1, evil.ClaimJob(absl::Seconds(30)));
  ASSERT_NE(job1.job_id(), job0.job_id());
  const int64_t first_item = job1.job_id() == id + "/1" ? 4 : 0;
  before = ProcessCpuSeconds(pid);
  st = evil.Report({HostileWorker::Image(job1, first_item, huge)}, &ack);
  cpu = ProcessCpuSeconds(pid) - before;
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  EXPECT_LT(cpu, kCpuBound) << "a 60 MB PNG cost the coordinator " << cpu << " s of CPU";

  // 12 MB with a 64x64 header: refused for its size, before decoding.
  before = ProcessCpuSeconds(pid);
  st = evil.Report({HostileWorker::Image(job1, first_item, big)}, &ack);
  cpu = ProcessCpuSeconds(pid) - before;
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_LT(cpu, kCpuBound) << "a 12 MB PNG cost the coordinator " << cpu << " s of CPU";

  const std::string log = farm->CoordinatorLog();
  EXPECT_NE(log.find("the PNG header says 16384x16384; the job's images are 64x64"), std::string::npos) << log;
  EXPECT_NE(log.find("a 64x64 image is at most"), std::string::npos) << log;
  EXPECT_EQ(PngFiles(folder), 0);
  EXPECT_TRUE(ReadFileOrEmpty(folder + "/metadata.jsonl").empty());

  // Both failures were counted against the jobs (released for another
  // attempt): an honest worker then renders the whole sweep, once.
  FARM_ASSERT_OK_AND_ASSIGN(int w, farm->StartWorker());
  (void)w;
  FARM_ASSERT_OK_AND_ASSIGN(auto status, farm->WaitForState(id, sdfarm::v1::DONE, absl::Minutes(2)));
  EXPECT_EQ(status.done(), 8);
  EXPECT_EQ(status.failed(), 0);
  EXPECT_EQ(PngFiles(folder), 8);
  EXPECT_EQ(ReadManifest(folder).size(), 8u);
}

}  // namespace
}  // namespace sdfarm::testing
