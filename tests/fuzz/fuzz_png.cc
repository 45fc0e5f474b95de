// Fuzzes the PNG reader (worker/engine/png_io.h) that init images, masks and
// A1111 parameters come in through: DecodePng to L and to RGB, DecodePngText.
// What decodes is checked for consistency and written back with EncodePng,
// which must give the same pixels (and text) again.
//
// libpng rejects a critical chunk with a bad CRC, which almost every mutation
// causes; so each input is tried as it is and, when that differs, once more
// with every complete chunk's CRC recomputed, which lets the mutations reach
// the chunk parsers and the decoder.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <zlib.h>

#include "fuzz_check.h"
#include "worker/engine/png_io.h"

namespace {

using sdfarm::engine::DecodePng;
using sdfarm::engine::DecodePngText;
using sdfarm::engine::EncodePng;
using sdfarm::engine::Image;
using sdfarm::engine::kMaxPngDimension;
using sdfarm::engine::StatusCode;

// Pillow's L from RGB, as png_io.h documents it.
uint8_t Luma(uint32_t r, uint32_t g, uint32_t b) {
  return static_cast<uint8_t>((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16);
}

void CheckImage(const Image& image, int channels) {
  FUZZ_CHECK(image.channels == channels);
  FUZZ_CHECK(image.width >= 1 && image.width <= kMaxPngDimension);
  FUZZ_CHECK(image.height >= 1 && image.height <= kMaxPngDimension);
  FUZZ_CHECK(image.pixels.size() == size_t(image.width) * image.height * channels);
}

// Encoding is slow at level 6; small images only, to keep the fuzzer fast.
constexpr size_t kMaxRoundTripPixels = 64 * 64;

void RoundTripPixels(const Image& image) {
  if (size_t(image.width) * image.height > kMaxRoundTripPixels) return;
  auto encoded = EncodePng(image, {}, /*compression_level=*/1);
  FUZZ_CHECK(encoded.ok());
  auto decoded = DecodePng(*encoded, image.channels);
  FUZZ_CHECK(decoded.ok());
  FUZZ_CHECK(decoded->width == image.width && decoded->height == image.height);
  FUZZ_CHECK(decoded->pixels == image.pixels);
}

uint32_t LoadBe32(const std::string& s, size_t pos) {
  return (uint32_t{static_cast<uint8_t>(s[pos])} << 24) | (uint32_t{static_cast<uint8_t>(s[pos + 1])} << 16) |
         (uint32_t{static_cast<uint8_t>(s[pos + 2])} << 8) | uint32_t{static_cast<uint8_t>(s[pos + 3])};
}

// The input with the CRC of every complete chunk after the signature fixed.
std::string FixCrcs(std::string bytes) {
  size_t pos = 8;
  while (pos + 12 <= bytes.size()) {
    const uint32_t length = LoadBe32(bytes, pos);
    if (length > bytes.size() - pos - 12) break;
    const auto* typed = reinterpret_cast<const Bytef*>(bytes.data() + pos + 4);
    const uint32_t crc = static_cast<uint32_t>(crc32(0, typed, 4 + length));
    for (int i = 0; i < 4; ++i) bytes[pos + 8 + length + i] = static_cast<char>(crc >> (24 - 8 * i));
    pos += size_t{12} + length;
  }
  return bytes;
}

void FuzzOne(const std::string& bytes) {

  auto rgb = DecodePng(bytes, 3);
  auto gray = DecodePng(bytes, 1);
  // The conversion cannot fail where the decoding succeeded.
  FUZZ_CHECK(rgb.ok() == gray.ok());
  if (rgb.ok()) {
    CheckImage(*rgb, 3);
    CheckImage(*gray, 1);
    FUZZ_CHECK(rgb->width == gray->width && rgb->height == gray->height);
    // L of a colour image is the luma of its RGB; of a gray one, the gray
    // itself, which RGB replicates (luma(v, v, v) == v): one rule for both.
    for (size_t i = 0; i < gray->pixels.size(); ++i) {
      const uint8_t* px = &rgb->pixels[3 * i];
      FUZZ_CHECK(gray->pixels[i] == Luma(px[0], px[1], px[2]));
    }
    RoundTripPixels(*rgb);
    RoundTripPixels(*gray);
  } else {
    const StatusCode code = rgb.status().code();
    FUZZ_CHECK(code == StatusCode::kInvalidArgument || code == StatusCode::kDataLoss ||
               code == StatusCode::kResourceExhausted);
  }

  auto text = DecodePngText(bytes);
  if (text.ok()) {
    // Whatever parses as text was also an image.
    FUZZ_CHECK(rgb.ok());
    if (size_t(rgb->width) * rgb->height <= kMaxRoundTripPixels) {
      // Keys and values come back as UTF-8; EncodePng refuses what PNG cannot
      // hold (bad keywords), and what it accepts must read back unchanged.
      auto encoded = EncodePng(*rgb, *text, /*compression_level=*/1);
      if (encoded.ok()) {
        auto again = DecodePngText(*encoded);
        FUZZ_CHECK(again.ok());
        FUZZ_CHECK(*again == *text);
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  FuzzOne(bytes);
  const std::string fixed = FixCrcs(bytes);
  if (fixed != bytes) FuzzOne(fixed);
  return 0;
}
