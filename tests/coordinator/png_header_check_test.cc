// CheckPngHeader: what the coordinator reads of a reported image before it
// decodes anything (coordinator/png_header_check.h).
#include "coordinator/png_header_check.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>

#include "worker/engine/png_io.h"

namespace sdfarm::coordinator {
namespace {

std::string BigEndian(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8), static_cast<char>(v)};
}

// A PNG signature and IHDR (CRC not checked here), then `tail`.
std::string Header(uint32_t width, uint32_t height, int bit_depth, int colour_type, const std::string& tail = "") {
  std::string s = "\x89PNG\r\n\x1a\n";
  s += BigEndian(13) + "IHDR" + BigEndian(width) + BigEndian(height);
  s += static_cast<char>(bit_depth);
  s += static_cast<char>(colour_type);
  s += std::string(3, '\0');
  s += "CRC!";
  return s + tail;
}

std::string NoisePng(int width, int height, const std::string& text) {
  engine::Image image{width, height, 3, std::vector<uint8_t>(static_cast<size_t>(width) * height * 3)};
  std::mt19937 rng(7);
  for (auto& p : image.pixels) p = static_cast<uint8_t>(rng());
  auto png = engine::EncodePng(image, {{"parameters", text}}, /*compression_level=*/0);
  EXPECT_TRUE(png.ok());
  return png.ok() ? *png : "";
}

TEST(PngHeaderCheck, AcceptsWhatAWorkerEncodesEvenIncompressibleWithLongPrompts) {
  // Noise at compression level 0 is the largest honest encoding; the text
  // chunk holds two 4,000-code-point prompts of 4-byte characters.
  std::string text;
  for (int i = 0; i < 8000; ++i) text += "\xF0\x9F\xA6\x8A";
  const std::string png = NoisePng(512, 512, text);
  EXPECT_GT(png.size(), size_t{512} * 512 * 3);
  EXPECT_TRUE(CheckPngHeader(png, {512, 512}).ok()) << CheckPngHeader(png, {512, 512});
}

TEST(PngHeaderCheck, RefusesAnotherSizeThanTheJobs) {
  const std::string png = NoisePng(64, 72, "p");
  const absl::Status s = CheckPngHeader(png, {64, 64});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("64x72"), std::string::npos) << s;
}

TEST(PngHeaderCheck, RefusesABombByItsHeaderAlone) {
  // 16384x16384 RGBA16 claimed; the check must not look past the header.
  const std::string bomb = Header(16384, 16384, 16, 6, std::string(2 << 20, '\0'));
  const absl::Status s = CheckPngHeader(bomb, {64, 64});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("16384x16384"), std::string::npos) << s;
}

TEST(PngHeaderCheck, RefusesOtherBitDepthsAndColourTypes) {
  for (auto [depth, type] : {std::pair{16, 2}, std::pair{8, 6}, std::pair{8, 0}, std::pair{8, 3}}) {
    const absl::Status s = CheckPngHeader(Header(64, 64, depth, type), {64, 64});
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << depth << " " << type;
    EXPECT_NE(s.message().find("8-bit RGB"), std::string::npos) << s;
  }
  EXPECT_TRUE(CheckPngHeader(Header(64, 64, 8, 2), {64, 64}).ok());
}

TEST(PngHeaderCheck, RefusesAFileLargerThanAnyHonestEncoding) {
  const std::string big = Header(64, 64, 8, 2, std::string(60 << 20, 'x'));
  const absl::Status s = CheckPngHeader(big, {64, 64});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("at most"), std::string::npos) << s;
  EXPECT_LT(MaxPngBytes(64, 64), size_t{2} << 20);
  EXPECT_GT(MaxPngBytes(2048, 2048), size_t{2048} * 2048 * 3);
}

TEST(PngHeaderCheck, RefusesWhatIsNotAPng) {
  EXPECT_EQ(CheckPngHeader("", {64, 64}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckPngHeader("GIF89a and more bytes than a PNG header needs", {64, 64}).code(),
            absl::StatusCode::kInvalidArgument);
  std::string no_ihdr = Header(64, 64, 8, 2);
  no_ihdr.replace(12, 4, "IDAT");
  const absl::Status s = CheckPngHeader(no_ihdr, {64, 64});
  EXPECT_NE(s.message().find("IHDR"), std::string::npos) << s;
  EXPECT_EQ(CheckPngHeader(Header(64, 64, 8, 2).substr(0, 20), {64, 64}).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sdfarm::coordinator
