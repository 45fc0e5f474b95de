#include "coordinator/png_header_check.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace sdfarm::coordinator {
namespace {

constexpr unsigned char kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

uint32_t ReadBigEndian32(std::string_view s, size_t at) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data() + at);
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

}  // namespace

size_t MaxPngBytes(int64_t width, int64_t height) {
  if (width <= 0 || height <= 0) return 0;
  const size_t raw = static_cast<size_t>(height) * (static_cast<size_t>(width) * 3 + 1);
  return raw + raw / 64 + (size_t{1} << 20);
}

absl::Status CheckPngHeader(std::string_view png, const ExpectedPng& expected) {
  // signature (8), IHDR length (4), "IHDR" (4), width, height (4 + 4), bit
  // depth, colour type, compression, filter, interlace (5), CRC (4).
  constexpr size_t kHeaderBytes = 8 + 4 + 4 + 13 + 4;
  if (png.size() < kHeaderBytes || std::memcmp(png.data(), kSignature, sizeof(kSignature)) != 0) {
    return absl::InvalidArgumentError("not a PNG file (no PNG signature)");
  }
  if (ReadBigEndian32(png, 8) != 13 || png.substr(12, 4) != "IHDR") {
    return absl::InvalidArgumentError("malformed PNG: the first chunk is not a 13-byte IHDR");
  }
  const uint32_t width = ReadBigEndian32(png, 16);
  const uint32_t height = ReadBigEndian32(png, 20);
  const int bit_depth = static_cast<unsigned char>(png[24]);
  const int colour_type = static_cast<unsigned char>(png[25]);
  if (width != static_cast<uint64_t>(expected.width) || height != static_cast<uint64_t>(expected.height)) {
    return absl::InvalidArgumentError(absl::StrCat("the PNG header says ", width, "x", height, "; the job's images are ",
                                                   expected.width, "x", expected.height));
  }
  if (bit_depth != 8 || colour_type != 2) {
    return absl::InvalidArgumentError(absl::StrCat("the PNG header says bit depth ", bit_depth, ", colour type ",
                                                   colour_type, "; images must be 8-bit RGB (colour type 2)"));
  }
  if (png[26] != 0 || png[27] != 0 || (png[28] != 0 && png[28] != 1)) {
    return absl::InvalidArgumentError("malformed PNG: unknown compression, filter or interlace method in IHDR");
  }
  const size_t cap = MaxPngBytes(expected.width, expected.height);
  if (png.size() > cap) {
    return absl::InvalidArgumentError(absl::StrCat("the PNG is ", png.size(), " bytes; a ", expected.width, "x",
                                                   expected.height, " image is at most ", cap, " bytes"));
  }
  return absl::OkStatus();
}

}  // namespace sdfarm::coordinator
