// PNG I/O: round trips, Pillow-exact conversion of every PNG flavour (the test
// builds each one with libpng and states the bytes Pillow's convert() gives),
// the golden pipeline inputs, text chunks, the atomic writer, and hostile
// input (truncated, garbage, lying chunks, absurd sizes), which must give a
// clear error and never crash.
#include "worker/engine/png_io.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <png.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <csetjmp>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <tuple>

#include "tests/engine/golden.h"

namespace sdfarm::engine {
namespace {

namespace fs = std::filesystem;
using ::sdfarm::testing::GoldenPath;
using ::sdfarm::testing::LoadGolden;
using ::sdfarm::testing::MakeTempDir;
using TextPairs = std::vector<std::pair<std::string, std::string>>;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

uint8_t Luma(int r, int g, int b) { return static_cast<uint8_t>((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16); }

Image MakeImage(int width, int height, int channels, uint32_t seed) {
  Image image{width, height, channels, std::vector<uint8_t>(size_t(width) * height * channels)};
  std::mt19937 rng(seed);
  for (auto& v : image.pixels) v = static_cast<uint8_t>(rng());
  return image;
}

// A smooth image: compresses well, so the truncation sweep stays short.
Image MakeGradient(int width, int height) {
  Image image{width, height, 3, {}};
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      image.pixels.push_back(static_cast<uint8_t>(x * 2));
      image.pixels.push_back(static_cast<uint8_t>(y * 3));
      image.pixels.push_back(static_cast<uint8_t>(x + y));
    }
  }
  return image;
}

// ------------------------- PNG chunk surgery -------------------------------

uint32_t Crc32(std::string_view bytes) {
  uint32_t crc = 0xffffffffu;
  for (char c : bytes) {
    crc ^= static_cast<uint8_t>(c);
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
  }
  return crc ^ 0xffffffffu;
}

std::string Be32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8), static_cast<char>(v)};
}
uint32_t ReadBe32(std::string_view s, size_t pos) {
  return (uint32_t(uint8_t(s[pos])) << 24) | (uint32_t(uint8_t(s[pos + 1])) << 16) |
         (uint32_t(uint8_t(s[pos + 2])) << 8) | uint32_t(uint8_t(s[pos + 3]));
}

const std::string kSignature("\x89PNG\r\n\x1a\n", 8);

struct Chunk {
  std::string type, data;
  size_t end_offset = 0;  // just past the CRC, in the parsed file
};

std::vector<Chunk> ParseChunks(const std::string& png) {
  std::vector<Chunk> chunks;
  size_t pos = 8;
  while (pos + 12 <= png.size()) {
    const uint32_t length = ReadBe32(png, pos);
    Chunk c{png.substr(pos + 4, 4), png.substr(pos + 8, length), pos + 12 + length};
    chunks.push_back(c);
    pos = c.end_offset;
  }
  return chunks;
}

std::string ChunkBytes(const std::string& type, const std::string& data) {
  return Be32(static_cast<uint32_t>(data.size())) + type + data + Be32(Crc32(type + data));
}

std::string Serialize(const std::vector<Chunk>& chunks) {
  std::string out = kSignature;
  for (const Chunk& c : chunks) out += ChunkBytes(c.type, c.data);
  return out;
}

std::string Ihdr(uint32_t width, uint32_t height, int bit_depth, int color_type, int interlace = 0) {
  return Be32(width) + Be32(height) + std::string{char(bit_depth), char(color_type), 0, 0, char(interlace)};
}

// --------------------- building any PNG with libpng ------------------------

struct PngSpec {
  int width = 0, height = 0, bit_depth = 8, color_type = PNG_COLOR_TYPE_RGB;
  bool interlaced = false;
  std::vector<png_color> palette;
  std::vector<png_byte> palette_alpha;       // tRNS for palette images
  std::optional<png_color_16> trns_color;    // tRNS for gray / RGB
  std::vector<std::vector<uint32_t>> samples;  // per row: width * channels sample values
  // (compression, key, text) written before / after the image data.
  std::vector<std::tuple<int, std::string, std::string>> text_before, text_after;
};

int SpecChannels(int color_type) {
  switch (color_type) {
    case PNG_COLOR_TYPE_GRAY_ALPHA: return 2;
    case PNG_COLOR_TYPE_RGB: return 3;
    case PNG_COLOR_TYPE_RGB_ALPHA: return 4;
    default: return 1;
  }
}

// Samples -> the packed bytes a PNG row holds (MSB first below 8 bits,
// big-endian at 16).
std::vector<png_byte> PackRow(const std::vector<uint32_t>& samples, int bit_depth) {
  std::vector<png_byte> out;
  if (bit_depth == 16) {
    for (uint32_t s : samples) {
      out.push_back(static_cast<png_byte>(s >> 8));
      out.push_back(static_cast<png_byte>(s));
    }
  } else if (bit_depth == 8) {
    for (uint32_t s : samples) out.push_back(static_cast<png_byte>(s));
  } else {
    out.assign((samples.size() * bit_depth + 7) / 8, 0);
    for (size_t i = 0; i < samples.size(); ++i) {
      const size_t bit = i * bit_depth;
      out[bit / 8] |= static_cast<png_byte>(samples[i] << (8 - bit_depth - bit % 8));
    }
  }
  return out;
}

struct BuildState {
  png_structp png = nullptr;
  png_infop info = nullptr, end_info = nullptr;
  const PngSpec* spec = nullptr;
  std::string* out = nullptr;
  png_bytepp rows = nullptr;
  png_textp before = nullptr, after = nullptr;
  int num_before = 0, num_after = 0;
  char error[256] = {};
};

void BuildWrite(png_structp png, png_bytep data, size_t n) {
  static_cast<BuildState*>(png_get_io_ptr(png))->out->append(reinterpret_cast<char*>(data), n);
}
void BuildFlush(png_structp) {}
void BuildError(png_structp png, png_const_charp msg) {
  std::snprintf(static_cast<BuildState*>(png_get_error_ptr(png))->error, 256, "%s", msg);
  png_longjmp(png, 1);
}
void BuildWarning(png_structp, png_const_charp) {}

bool BuildProtected(BuildState* s) {
  if (setjmp(png_jmpbuf(s->png))) return false;
  png_set_benign_errors(s->png, 1);  // palette indices past PLTE are the point of some tests
  png_set_write_fn(s->png, s, BuildWrite, BuildFlush);
  png_set_IHDR(s->png, s->info, s->spec->width, s->spec->height, s->spec->bit_depth, s->spec->color_type,
               s->spec->interlaced ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (!s->spec->palette.empty()) {
    png_set_PLTE(s->png, s->info, s->spec->palette.data(), static_cast<int>(s->spec->palette.size()));
  }
  if (!s->spec->palette_alpha.empty()) {
    png_set_tRNS(s->png, s->info, s->spec->palette_alpha.data(), static_cast<int>(s->spec->palette_alpha.size()),
                 nullptr);
  }
  if (s->spec->trns_color) png_set_tRNS(s->png, s->info, nullptr, 0, &*s->spec->trns_color);
  if (s->num_before > 0) png_set_text(s->png, s->info, s->before, s->num_before);
  png_write_info(s->png, s->info);
  png_write_image(s->png, s->rows);
  if (s->num_after > 0) png_set_text(s->png, s->end_info, s->after, s->num_after);
  png_write_end(s->png, s->end_info);
  return true;
}

std::vector<png_text> ToPngText(std::vector<std::tuple<int, std::string, std::string>>& texts) {
  static char kEmpty[] = "";
  std::vector<png_text> out;
  for (auto& [compression, key, text] : texts) {
    png_text t = {};
    t.compression = compression;
    t.key = key.data();
    t.text = text.data();
    t.text_length = text.size();
    t.lang = compression >= PNG_ITXT_COMPRESSION_NONE ? kEmpty : nullptr;
    t.lang_key = compression >= PNG_ITXT_COMPRESSION_NONE ? kEmpty : nullptr;
    out.push_back(t);
  }
  return out;
}

std::string BuildPng(PngSpec spec) {
  std::vector<std::vector<png_byte>> packed;
  for (const auto& row : spec.samples) packed.push_back(PackRow(row, spec.bit_depth));
  std::vector<png_bytep> rows;
  for (auto& row : packed) rows.push_back(row.data());
  std::vector<png_text> before = ToPngText(spec.text_before), after = ToPngText(spec.text_after);
  std::string out;
  BuildState s;
  s.spec = &spec;
  s.out = &out;
  s.rows = rows.data();
  s.before = before.data();
  s.num_before = static_cast<int>(before.size());
  s.after = after.data();
  s.num_after = static_cast<int>(after.size());
  s.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &s, BuildError, BuildWarning);
  s.info = png_create_info_struct(s.png);
  s.end_info = png_create_info_struct(s.png);
  const bool ok = BuildProtected(&s);
  png_destroy_write_struct(&s.png, &s.info);
  png_destroy_info_struct(nullptr, &s.end_info);
  EXPECT_TRUE(ok) << "test PNG builder: " << s.error;
  return out;
}

// One-row spec: `samples` holds width * channels values.
PngSpec RowSpec(int color_type, int bit_depth, std::vector<uint32_t> samples) {
  PngSpec spec;
  spec.color_type = color_type;
  spec.bit_depth = bit_depth;
  spec.width = static_cast<int>(samples.size()) / SpecChannels(color_type);
  spec.height = 1;
  spec.samples = {std::move(samples)};
  return spec;
}

std::vector<uint8_t> Gray3(const std::vector<uint8_t>& gray) {
  std::vector<uint8_t> rgb;
  for (uint8_t v : gray) rgb.insert(rgb.end(), {v, v, v});
  return rgb;
}

// Decodes as RGB and as L and compares with Pillow's convert("RGB") / ("L").
void ExpectDecodes(const std::string& png, const std::vector<uint8_t>& rgb, const std::vector<uint8_t>& l) {
  ASSERT_OK_AND_ASSIGN(Image as_rgb, DecodePng(png, 3));
  EXPECT_EQ(as_rgb.channels, 3);
  EXPECT_EQ(as_rgb.pixels, rgb);
  ASSERT_OK_AND_ASSIGN(Image as_l, DecodePng(png, 1));
  EXPECT_EQ(as_l.channels, 1);
  EXPECT_EQ(as_l.pixels, l);
}

// ------------------------------ round trips --------------------------------

TEST(PngIo, RoundTripsRgbAndGrayAtOddSizes) {
  for (auto [w, h] : {std::pair{1, 1}, {96, 64}, {64, 96}, {97, 3}, {3, 97}, {17, 1}}) {
    for (int channels : {1, 3}) {
      const Image image = MakeImage(w, h, channels, 1000 * w + h + channels);
      ASSERT_OK_AND_ASSIGN(std::string png, EncodePng(image));
      ASSERT_OK_AND_ASSIGN(Image back, DecodePng(png, channels));
      EXPECT_EQ(back.width, w);
      EXPECT_EQ(back.height, h);
      EXPECT_EQ(back.channels, channels);
      EXPECT_EQ(back.pixels, image.pixels) << w << "x" << h << "x" << channels;
    }
  }
}

TEST(PngIo, WritesMinimalEightBitFilesWithTheRequestedColourType) {
  ASSERT_OK_AND_ASSIGN(std::string rgb, EncodePng(MakeImage(5, 4, 3, 1)));
  ASSERT_OK_AND_ASSIGN(std::string gray, EncodePng(MakeImage(5, 4, 1, 1)));
  for (const auto& [png, color_type] : {std::pair{rgb, 2}, {gray, 0}}) {
    const std::vector<Chunk> chunks = ParseChunks(png);
    ASSERT_GE(chunks.size(), 3u);
    EXPECT_EQ(png.substr(0, 8), kSignature);
    EXPECT_EQ(chunks.front().type, "IHDR");
    EXPECT_EQ(chunks.front().data, Ihdr(5, 4, 8, color_type));
    EXPECT_EQ(chunks.back().type, "IEND");
    for (const Chunk& c : chunks) EXPECT_TRUE(c.type == "IHDR" || c.type == "IDAT" || c.type == "IEND") << c.type;
  }
}

TEST(PngIo, CompressionLevelChangesSizeNotPixels) {
  const Image image = MakeGradient(96, 64);
  ASSERT_OK_AND_ASSIGN(std::string stored, EncodePng(image, {}, 0));
  ASSERT_OK_AND_ASSIGN(std::string best, EncodePng(image, {}, 9));
  EXPECT_GT(stored.size(), best.size());
  for (const std::string* png : {&stored, &best}) {
    ASSERT_OK_AND_ASSIGN(Image back, DecodePng(*png, 3));
    EXPECT_EQ(back.pixels, image.pixels);
  }
  EXPECT_EQ(EncodePng(image, {}, 10).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodePng(image, {}, -1).status().code(), StatusCode::kInvalidArgument);
}

TEST(PngIo, EncodeRejectsMalformedImages) {
  Image wrong_size = MakeImage(4, 4, 3, 1);
  wrong_size.pixels.pop_back();
  Image rgba = MakeImage(4, 4, 4, 1);
  Image empty{0, 0, 3, {}};
  Image too_wide{kMaxPngDimension + 1, 1, 1, std::vector<uint8_t>(kMaxPngDimension + 1)};
  for (const Image* image : {&wrong_size, &rgba, &empty, &too_wide}) {
    auto png = EncodePng(*image);
    EXPECT_EQ(png.status().code(), StatusCode::kInvalidArgument) << png.status().ToString();
    EXPECT_NE(png.status().message().find("EncodePng"), std::string::npos) << png.status().ToString();
  }
}

TEST(PngIo, GrayDecodesToReplicatedRgbAndRgbToPillowLuma) {
  const Image gray = MakeImage(7, 5, 1, 7);
  ASSERT_OK_AND_ASSIGN(std::string gray_png, EncodePng(gray));
  ASSERT_OK_AND_ASSIGN(Image gray_as_rgb, DecodePng(gray_png, 3));
  EXPECT_EQ(gray_as_rgb.pixels, Gray3(gray.pixels));

  const Image rgb = MakeImage(7, 5, 3, 8);
  ASSERT_OK_AND_ASSIGN(std::string rgb_png, EncodePng(rgb));
  ASSERT_OK_AND_ASSIGN(Image rgb_as_l, DecodePng(rgb_png, 1));
  ASSERT_EQ(rgb_as_l.pixels.size(), 35u);
  for (size_t i = 0; i < 35; ++i) {
    EXPECT_EQ(rgb_as_l.pixels[i], Luma(rgb.pixels[3 * i], rgb.pixels[3 * i + 1], rgb.pixels[3 * i + 2])) << i;
  }
}

TEST(PngIo, RejectsBadWantChannels) {
  ASSERT_OK_AND_ASSIGN(std::string png, EncodePng(MakeImage(2, 2, 3, 1)));
  for (int want : {0, 2, 4}) EXPECT_EQ(DecodePng(png, want).status().code(), StatusCode::kInvalidArgument);
}

// -------------------- conversion of every PNG flavour ----------------------
// Expected bytes are Pillow's: PngImagePlugin._MODES picks the mode/rawmode,
// Unpack.c unpacks, Convert.c converts (checked against Pillow's sources).

TEST(PngConvert, PillowLumaUsesTheIntegerL24Formula) {
  // 0x00ff00 is 150 with L24 (Pillow >= 7.0, PR #4320; P -> L since 9.0, PR
  // #5824); the older integer "L / 1000" formula gave 149.
  const std::string png = BuildPng(RowSpec(PNG_COLOR_TYPE_RGB, 8, {255, 0, 0, 0, 255, 0, 0, 0, 255, 12, 34, 56}));
  ExpectDecodes(png, {255, 0, 0, 0, 255, 0, 0, 0, 255, 12, 34, 56}, {76, 150, 29, 30});
}

TEST(PngConvert, OneTwoFourBitGrayScaleToFullRange) {
  // Odd widths leave partial bytes at the end of the row.
  ExpectDecodes(BuildPng(RowSpec(PNG_COLOR_TYPE_GRAY, 1, {0, 1, 1, 0, 1})), Gray3({0, 255, 255, 0, 255}),
                {0, 255, 255, 0, 255});
  ExpectDecodes(BuildPng(RowSpec(PNG_COLOR_TYPE_GRAY, 2, {0, 1, 2, 3, 2})), Gray3({0, 85, 170, 255, 170}),
                {0, 85, 170, 255, 170});
  ExpectDecodes(BuildPng(RowSpec(PNG_COLOR_TYPE_GRAY, 4, {0, 1, 7, 15, 8})), Gray3({0, 17, 119, 255, 136}),
                {0, 17, 119, 255, 136});
}

TEST(PngConvert, EightBitGrayIgnoresTrns) {
  PngSpec spec = RowSpec(PNG_COLOR_TYPE_GRAY, 8, {0, 7, 128, 255});
  spec.trns_color = png_color_16{0, 0, 0, 0, 7};
  ExpectDecodes(BuildPng(spec), Gray3({0, 7, 128, 255}), {0, 7, 128, 255});
}

TEST(PngConvert, SixteenBitGrayIsClippedNotShifted) {
  // Pillow opens 16-bit gray as "I;16"; convert() clips to 255 (I16_RGB,
  // I16B_L), so 200 stays 200 and 0x1234 becomes 255, not 0x12.
  const std::vector<uint8_t> expected = {0, 200, 255, 255, 255, 255, 255};
  ExpectDecodes(BuildPng(RowSpec(PNG_COLOR_TYPE_GRAY, 16, {0, 200, 255, 256, 1000, 0x1234, 65535})),
                Gray3(expected), expected);
}

TEST(PngConvert, GrayAlphaDropsAlpha) {
  ExpectDecodes(BuildPng(RowSpec(PNG_COLOR_TYPE_GRAY_ALPHA, 8, {10, 0, 200, 255, 77, 128})), Gray3({10, 200, 77}),
                {10, 200, 77});
  // "LA;16B" keeps the high byte (unlike 16-bit gray without alpha).
  ExpectDecodes(BuildPng(RowSpec(PNG_COLOR_TYPE_GRAY_ALPHA, 16, {0x1234, 0, 0xabcd, 0xffff, 0x00c8, 0x8000})),
                Gray3({0x12, 0xab, 0x00}), {0x12, 0xab, 0x00});
}

TEST(PngConvert, RgbaDropsAlphaWithoutCompositing) {
  ExpectDecodes(BuildPng(RowSpec(PNG_COLOR_TYPE_RGB_ALPHA, 8, {255, 0, 0, 0, 0, 255, 0, 128, 0, 0, 255, 255, 12, 34, 56, 78})),
                {255, 0, 0, 0, 255, 0, 0, 0, 255, 12, 34, 56}, {76, 150, 29, 30});
}

TEST(PngConvert, SixteenBitColourKeepsTheHighByte) {
  ExpectDecodes(BuildPng(RowSpec(PNG_COLOR_TYPE_RGB, 16, {0x1234, 0x5678, 0x9abc, 0xabff, 0xcd00, 0xef80})),
                {0x12, 0x56, 0x9a, 0xab, 0xcd, 0xef}, {73, 199});
  ExpectDecodes(BuildPng(RowSpec(PNG_COLOR_TYPE_RGB_ALPHA, 16, {0x1234, 0x5678, 0x9abc, 0, 0xabff, 0xcd00, 0xef80, 0x1})),
                {0x12, 0x56, 0x9a, 0xab, 0xcd, 0xef}, {73, 199});
}

TEST(PngConvert, PaletteExpandsAndIndicesPastPlteAreBlack) {
  PngSpec spec = RowSpec(PNG_COLOR_TYPE_PALETTE, 8, {0, 1, 2, 5, 255, 1});
  spec.palette = {{10, 20, 30}, {200, 100, 50}, {0, 255, 0}};
  spec.palette_alpha = {0, 128};  // transparency is dropped, not composited
  ExpectDecodes(BuildPng(spec), {10, 20, 30, 200, 100, 50, 0, 255, 0, 0, 0, 0, 0, 0, 0, 200, 100, 50},
                {18, 124, 150, 0, 0, 124});
}

TEST(PngConvert, LowBitDepthPalettes) {
  const std::vector<png_color> palette = {{1, 2, 3}, {255, 0, 0}, {0, 0, 255}, {10, 20, 30}, {9, 9, 9}};
  struct Case {
    int bit_depth;
    std::vector<uint32_t> indices;
  };
  for (const Case& c : {Case{1, {0, 1, 1, 0, 1, 0, 0, 1, 1}}, Case{2, {3, 2, 1, 0, 3}}, Case{4, {4, 0, 3, 15, 2}}}) {
    PngSpec spec = RowSpec(PNG_COLOR_TYPE_PALETTE, c.bit_depth, c.indices);
    spec.palette.assign(palette.begin(), palette.begin() + std::min<size_t>(palette.size(), 1u << c.bit_depth));
    std::vector<uint8_t> rgb, l;
    for (uint32_t i : c.indices) {
      const png_color p = i < spec.palette.size() ? spec.palette[i] : png_color{0, 0, 0};
      rgb.insert(rgb.end(), {p.red, p.green, p.blue});
      l.push_back(Luma(p.red, p.green, p.blue));
    }
    SCOPED_TRACE(c.bit_depth);
    ExpectDecodes(BuildPng(spec), rgb, l);
  }
}

TEST(PngConvert, InterlacedImagesDecodeLikeProgressiveOnes) {
  for (auto [color_type, bit_depth] : {std::pair{PNG_COLOR_TYPE_RGB, 8}, {PNG_COLOR_TYPE_GRAY, 16},
                                       {PNG_COLOR_TYPE_RGB_ALPHA, 16}, {PNG_COLOR_TYPE_GRAY, 2}}) {
    PngSpec spec;
    spec.width = 13;
    spec.height = 11;
    spec.color_type = color_type;
    spec.bit_depth = bit_depth;
    std::mt19937 rng(color_type * 100 + bit_depth);
    for (int y = 0; y < spec.height; ++y) {
      std::vector<uint32_t> row(spec.width * SpecChannels(color_type));
      for (auto& v : row) v = rng() & ((1u << bit_depth) - 1);
      spec.samples.push_back(row);
    }
    const std::string progressive = BuildPng(spec);
    spec.interlaced = true;
    const std::string interlaced = BuildPng(spec);
    ASSERT_EQ(interlaced[28], 1) << "interlace byte of IHDR";
    for (int want : {1, 3}) {
      ASSERT_OK_AND_ASSIGN(Image a, DecodePng(progressive, want));
      ASSERT_OK_AND_ASSIGN(Image b, DecodePng(interlaced, want));
      EXPECT_EQ(a.pixels, b.pixels) << color_type << "/" << bit_depth << " want " << want;
      EXPECT_EQ(b.pixels.size(), size_t(13 * 11 * want));
    }
  }
}

TEST(PngConvert, AncillaryChunksAreIgnored) {
  // gAMA, sRGB-like and an unknown private chunk change nothing, as in Pillow.
  ASSERT_OK_AND_ASSIGN(std::string png, EncodePng(MakeImage(6, 6, 3, 3)));
  std::vector<Chunk> chunks = ParseChunks(png);
  chunks.insert(chunks.begin() + 1, {Chunk{"gAMA", Be32(100000)}, Chunk{"prVt", "whatever"},
                                      Chunk{"sBIT", std::string("\x05\x05\x05", 3)}});
  ASSERT_OK_AND_ASSIGN(Image back, DecodePng(Serialize(chunks), 3));
  EXPECT_EQ(back.pixels, MakeImage(6, 6, 3, 3).pixels);
}

// -------------------------- golden pipeline inputs -------------------------

Image ImageFromTensor(const at::Tensor& t) {
  EXPECT_EQ(t.scalar_type(), at::kByte);
  const at::Tensor c = t.contiguous();
  Image image;
  image.height = static_cast<int>(c.size(0));
  image.width = static_cast<int>(c.size(1));
  image.channels = c.dim() == 3 ? static_cast<int>(c.size(2)) : 1;
  image.pixels.assign(c.data_ptr<uint8_t>(), c.data_ptr<uint8_t>() + c.numel());
  return image;
}

void ExpectGoldenRoundTrip(const std::string& file, const std::string& tensor, int channels,
                           std::vector<int64_t> shape) {
  SCOPED_TRACE(file + ":" + tensor);
  auto golden = LoadGolden(file);
  ASSERT_EQ(golden.count(tensor), 1u) << "missing tensor " << tensor << " in " << GoldenPath(file);
  const at::Tensor& t = golden.at(tensor);
  ASSERT_EQ(t.sizes().vec(), shape);
  const Image image = ImageFromTensor(t);
  ASSERT_EQ(image.channels, channels);
  const std::string path = MakeTempDir() + "/" + tensor + ".png";
  ASSERT_OK(WritePngAtomic(path, image, {{"parameters", "golden " + tensor}}));
  ASSERT_OK_AND_ASSIGN(Image back, ReadPng(path, channels));
  EXPECT_EQ(back.width, image.width);
  EXPECT_EQ(back.height, image.height);
  EXPECT_EQ(back.pixels, image.pixels);
  // Bit-exact through the tensor view too.
  const at::Tensor back_t = at::from_blob(back.pixels.data(), t.sizes(), at::kByte);
  EXPECT_TRUE(at::equal(back_t, t));
  // The other conversion: L replicated to RGB, or RGB to Pillow's luma.
  ASSERT_OK_AND_ASSIGN(Image other, ReadPng(path, 4 - channels));
  if (channels == 1) {
    EXPECT_EQ(other.pixels, Gray3(image.pixels));
  } else {
    ASSERT_EQ(other.pixels.size(), image.pixels.size() / 3);
    for (size_t i = 0; i < other.pixels.size(); ++i) {
      ASSERT_EQ(other.pixels[i], Luma(image.pixels[3 * i], image.pixels[3 * i + 1], image.pixels[3 * i + 2])) << i;
    }
  }
}

TEST(PngGolden, Img2ImgInputImageRoundTripsBitExactly) {
  ExpectGoldenRoundTrip("pipelines/img2img_pndm_s06.safetensors", "input_image_uint8", 3, {64, 64, 3});
}

TEST(PngGolden, NonSquareImg2ImgInputRoundTripsBitExactly) {
  ExpectGoldenRoundTrip("pipelines/img2img_ddim_s06_64x96.safetensors", "input_image_uint8", 3, {64, 96, 3});
}

TEST(PngGolden, InpaintImageAndMaskRoundTripBitExactly) {
  ExpectGoldenRoundTrip("pipelines/inpaint_pndm.safetensors", "input_image_uint8", 3, {64, 64, 3});
  ExpectGoldenRoundTrip("pipelines/inpaint_pndm.safetensors", "input_mask_uint8", 1, {64, 64});
}

// --------------------------------- text ------------------------------------

TEST(PngText, RoundTripsInOrderIncludingNonAscii) {
  const TextPairs text = {
      {"parameters", "a cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64"},
      {"Comment", "café, naïve"},              // fits Latin-1: tEXt
      {"prompt", "猫 😀 emoji, 'quotes' \"double\""},  // does not: iTXt
      {"Empty", ""},
      {"Software", "sdfarm"},
  };
  const std::string path = MakeTempDir() + "/text.png";
  ASSERT_OK(WritePngAtomic(path, MakeImage(3, 2, 3, 5), text));
  ASSERT_OK_AND_ASSIGN(TextPairs back, ReadPngText(path));
  EXPECT_EQ(back, text);
  ASSERT_OK_AND_ASSIGN(Image image, ReadPng(path, 3));
  EXPECT_EQ(image.pixels, MakeImage(3, 2, 3, 5).pixels);
}

TEST(PngText, ChunkTypesMirrorPillowsAddText) {
  // PngInfo.add_text: tEXt with Latin-1 bytes when the value encodes as
  // Latin-1, otherwise iTXt: key\0 + flag 0 + method 0 + empty lang\0 + empty
  // translated key\0 + UTF-8. All before IDAT, in the order given.
  ASSERT_OK_AND_ASSIGN(std::string png,
                       EncodePng(MakeImage(2, 2, 3, 1), {{"parameters", "Steps: 20"}, {"Comment", "caf\xc3\xa9"},
                                                         {"prompt", "\xe7\x8c\xab"}}));
  const std::vector<Chunk> chunks = ParseChunks(png);
  ASSERT_GE(chunks.size(), 5u);
  EXPECT_EQ(chunks[1].type, "tEXt");
  EXPECT_EQ(chunks[1].data, std::string("parameters\0Steps: 20", 20));
  EXPECT_EQ(chunks[2].type, "tEXt");
  EXPECT_EQ(chunks[2].data, std::string("Comment\0caf\xe9", 12));
  EXPECT_EQ(chunks[3].type, "iTXt");
  EXPECT_EQ(chunks[3].data, std::string("prompt\0\0\0\0\0\xe7\x8c\xab", 14));
  EXPECT_EQ(chunks[4].type, "IDAT");
}

TEST(PngText, ReadsZtxtCompressedItxtAndChunksAfterTheImage) {
  PngSpec spec = RowSpec(PNG_COLOR_TYPE_RGB, 8, {1, 2, 3, 4, 5, 6});
  spec.text_before = {{PNG_TEXT_COMPRESSION_NONE, "Title", "plain"},
                      {PNG_TEXT_COMPRESSION_zTXt, "Description", std::string(3000, 'z') + "\xe9"},
                      {PNG_ITXT_COMPRESSION_zTXt, "parameters", "\xe7\x8c\xab, Steps: 5"}};
  spec.text_after = {{PNG_ITXT_COMPRESSION_NONE, "Comment", "after \xe2\x9c\x93"},
                     {PNG_TEXT_COMPRESSION_NONE, "Author", "\xb5s"}};
  const std::string path = MakeTempDir() + "/ztxt.png";
  WriteAll(path, BuildPng(spec));
  ASSERT_OK_AND_ASSIGN(TextPairs text, ReadPngText(path));
  const TextPairs expected = {{"Title", "plain"},
                              {"Description", std::string(3000, 'z') + "\xc3\xa9"},  // Latin-1 -> UTF-8
                              {"parameters", "\xe7\x8c\xab, Steps: 5"},
                              {"Comment", "after \xe2\x9c\x93"},
                              {"Author", "\xc2\xb5s"}};
  EXPECT_EQ(text, expected);
}

TEST(PngText, InvalidUtf8InItxtBecomesReplacementCharacters) {
  PngSpec spec = RowSpec(PNG_COLOR_TYPE_GRAY, 8, {1});
  spec.text_before = {{PNG_ITXT_COMPRESSION_NONE, "bad", "a\xff" "b\xc3"}};
  const std::string path = MakeTempDir() + "/bad.png";
  WriteAll(path, BuildPng(spec));
  ASSERT_OK_AND_ASSIGN(TextPairs text, ReadPngText(path));
  EXPECT_EQ(text, (TextPairs{{"bad", "a\xef\xbf\xbd" "b\xef\xbf\xbd"}}));
}

TEST(PngText, RejectsInvalidKeywordsAndValues) {
  const Image image = MakeImage(2, 2, 1, 1);
  for (const auto& [key, value] : TextPairs{{"", "x"},
                                            {std::string(80, 'k'), "x"},
                                            {" lead", "x"},
                                            {"trail ", "x"},
                                            {"dou  ble", "x"},
                                            {"\xe7\x8c\xab", "x"},
                                            {"tab\tkey", "x"},
                                            {"key", std::string("nul\0inside", 10)},
                                            {"key", "bad utf8 \xff"}}) {
    auto png = EncodePng(image, {{key, value}});
    EXPECT_EQ(png.status().code(), StatusCode::kInvalidArgument) << key;
  }
  EXPECT_OK(EncodePng(image, {{std::string(79, 'k'), "x"}, {"caf\xc3\xa9 key", "x"}}));
}

TEST(PngText, FileWithoutTextGivesAnEmptyList) {
  const std::string path = MakeTempDir() + "/plain.png";
  ASSERT_OK(WritePngAtomic(path, MakeImage(4, 4, 3, 2)));
  ASSERT_OK_AND_ASSIGN(TextPairs text, ReadPngText(path));
  EXPECT_TRUE(text.empty());
}

// ---------------------------- the atomic writer ----------------------------

std::vector<std::string> DirEntries(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

TEST(PngAtomicWrite, LeavesOnlyTheFinalFile) {
  const std::string dir = MakeTempDir();
  const std::string path = dir + "/out.png";
  ASSERT_OK(WritePngAtomic(path, MakeImage(8, 8, 3, 1), {{"parameters", "first"}}));
  EXPECT_EQ(DirEntries(dir), std::vector<std::string>{"out.png"});
  // Overwriting replaces the content, and again leaves no temporary file.
  ASSERT_OK(WritePngAtomic(path, MakeImage(9, 3, 1, 2), {{"parameters", "second"}}));
  EXPECT_EQ(DirEntries(dir), std::vector<std::string>{"out.png"});
  ASSERT_OK_AND_ASSIGN(Image back, ReadPng(path, 1));
  EXPECT_EQ(back.pixels, MakeImage(9, 3, 1, 2).pixels);
  ASSERT_OK_AND_ASSIGN(TextPairs text, ReadPngText(path));
  EXPECT_EQ(text, (TextPairs{{"parameters", "second"}}));
  // The written bytes are exactly EncodePng's.
  ASSERT_OK_AND_ASSIGN(std::string encoded, EncodePng(MakeImage(9, 3, 1, 2), {{"parameters", "second"}}));
  EXPECT_EQ(ReadAll(path), encoded);
}

TEST(PngAtomicWrite, ReplacesAStaleTemporaryFile) {
  const std::string dir = MakeTempDir();
  WriteAll(dir + "/out.png.tmp", std::string(100000, 'x'));  // left by a crashed writer
  ASSERT_OK(WritePngAtomic(dir + "/out.png", MakeImage(2, 2, 3, 1)));
  EXPECT_EQ(DirEntries(dir), std::vector<std::string>{"out.png"});
  EXPECT_OK(ReadPng(dir + "/out.png", 3).status());
}

TEST(PngAtomicWrite, FailuresLeaveNothingBehind) {
  const std::string dir = MakeTempDir();
  Status missing_dir = WritePngAtomic(dir + "/no/such/dir/out.png", MakeImage(2, 2, 3, 1));
  EXPECT_EQ(missing_dir.code(), StatusCode::kNotFound) << missing_dir.ToString();
  EXPECT_NE(missing_dir.message().find(dir + "/no/such/dir/out.png"), std::string::npos) << missing_dir.ToString();

  Image bad = MakeImage(2, 2, 3, 1);
  bad.pixels.resize(5);
  Status invalid = WritePngAtomic(dir + "/bad.png", bad);
  EXPECT_EQ(invalid.code(), StatusCode::kInvalidArgument) << invalid.ToString();
  Status bad_key = WritePngAtomic(dir + "/bad.png", MakeImage(2, 2, 3, 1), {{"", "x"}});
  EXPECT_EQ(bad_key.code(), StatusCode::kInvalidArgument) << bad_key.ToString();

  // The target is a directory: rename fails after the temporary was written.
  fs::create_directory(dir + "/taken.png");
  WriteAll(dir + "/taken.png/inside", "x");
  Status rename_fails = WritePngAtomic(dir + "/taken.png", MakeImage(2, 2, 3, 1));
  EXPECT_FALSE(rename_fails.ok());
  EXPECT_EQ(DirEntries(dir), std::vector<std::string>{"taken.png"});
}

// ------------------------------ hostile input ------------------------------

void ExpectCleanError(const StatusOr<Image>& result, const std::string& must_mention = "") {
  ASSERT_FALSE(result.ok());
  const StatusCode code = result.status().code();
  EXPECT_TRUE(code == StatusCode::kInvalidArgument || code == StatusCode::kDataLoss) << result.status().ToString();
  EXPECT_FALSE(result.status().message().empty());
  if (!must_mention.empty()) {
    EXPECT_NE(result.status().message().find(must_mention), std::string::npos) << result.status().ToString();
  }
}

TEST(PngCorrupt, EmptyAndZeroByteFile) {
  ExpectCleanError(DecodePng("", 3), "empty");
  const std::string path = MakeTempDir() + "/zero.png";
  WriteAll(path, "");
  ExpectCleanError(ReadPng(path, 3), path);
  EXPECT_FALSE(ReadPngText(path).ok());
}

TEST(PngCorrupt, GarbageIsNotAPng) {
  std::mt19937 rng(1);
  std::string garbage(1000, '\0');
  for (char& c : garbage) c = static_cast<char>(rng());
  ExpectCleanError(DecodePng(garbage, 3), "not a PNG");
  ExpectCleanError(DecodePng("GIF89a...", 3), "not a PNG");
  ExpectCleanError(DecodePng(std::string_view("\x89PN", 3), 3), "truncated");
}

TEST(PngCorrupt, EveryTruncationIsAnErrorUntilTheImageDataIsComplete) {
  ASSERT_OK_AND_ASSIGN(std::string png, EncodePng(MakeGradient(96, 64), {{"parameters", "Steps: 20"}}));
  size_t image_data_end = 0;
  for (const Chunk& c : ParseChunks(png)) {
    if (c.type == "IDAT") image_data_end = c.end_offset;
  }
  ASSERT_GT(image_data_end, 0u);
  for (size_t n = 0; n < png.size(); ++n) {
    auto result = DecodePng(std::string_view(png).substr(0, n), 3);
    if (n < image_data_end) {
      ExpectCleanError(result);
      if (n >= 8 && HasFailure()) break;
    } else {
      // Only IEND is missing: Pillow decodes this too.
      EXPECT_TRUE(result.ok()) << n << ": " << result.status().ToString();
    }
  }
  ExpectCleanError(DecodePng(std::string_view(png).substr(0, png.size() / 2), 3), "truncated");
}

TEST(PngCorrupt, TruncatedFileNamesThePath) {
  ASSERT_OK_AND_ASSIGN(std::string png, EncodePng(MakeImage(32, 32, 3, 9)));
  const std::string path = MakeTempDir() + "/cut.png";
  WriteAll(path, png.substr(0, png.size() - 100));
  const auto result = ReadPng(path, 3);
  ExpectCleanError(result, path);
  EXPECT_EQ(result.status().code(), StatusCode::kDataLoss);
}

TEST(PngCorrupt, LyingIdatChunks) {
  ASSERT_OK_AND_ASSIGN(std::string png, EncodePng(MakeImage(16, 16, 3, 4)));
  const std::vector<Chunk> good = ParseChunks(png);
  ASSERT_EQ(good[1].type, "IDAT");

  {  // IDAT claims 1 MB but the file ends right after it.
    std::string lying = png.substr(0, good[0].end_offset) + Be32(1 << 20) + "IDAT" + good[1].data;
    ExpectCleanError(DecodePng(lying, 3), "truncated");
  }
  {  // Garbage compressed data, with a correct CRC.
    std::vector<Chunk> chunks = good;
    for (size_t i = 2; i < chunks[1].data.size(); i += 3) chunks[1].data[i] ^= 0x5a;
    ExpectCleanError(DecodePng(Serialize(chunks), 3), "corrupt PNG");
  }
  {  // Right data, wrong CRC.
    std::string bad_crc = png;
    bad_crc[good[1].end_offset - 1] ^= 1;
    ExpectCleanError(DecodePng(bad_crc, 3), "CRC");
  }
  {  // IHDR says 16x64 but IDAT holds only 16 rows.
    std::vector<Chunk> chunks = good;
    chunks[0].data = Ihdr(16, 64, 8, 2);
    ExpectCleanError(DecodePng(Serialize(chunks), 3));
  }
  {  // No IDAT at all.
    std::vector<Chunk> chunks = {good[0], good.back()};
    ExpectCleanError(DecodePng(Serialize(chunks), 3));
  }
  {  // A palette image without PLTE.
    std::vector<Chunk> chunks = good;
    chunks[0].data = Ihdr(16, 16, 8, 3);
    ExpectCleanError(DecodePng(Serialize(chunks), 3), "PLTE");
  }
  {  // An invalid bit depth for the colour type.
    std::vector<Chunk> chunks = good;
    chunks[0].data = Ihdr(16, 16, 4, 2);
    ExpectCleanError(DecodePng(Serialize(chunks), 3), "IHDR");
  }
}

TEST(PngCorrupt, AbsurdDimensionsAreRejectedBeforeAllocating) {
  const std::string idat = ChunkBytes("IDAT", std::string("\x78\x9c\x03\x00\x00\x00\x00\x01", 8));
  const std::string iend = ChunkBytes("IEND", "");
  auto png_with = [&](uint32_t w, uint32_t h, int depth, int type, int interlace) {
    return kSignature + ChunkBytes("IHDR", Ihdr(w, h, depth, type, interlace)) + idat + iend;
  };
  ExpectCleanError(DecodePng(png_with(1000000, 1000000, 8, 2, 0), 3), "1000000x1000000");
  ExpectCleanError(DecodePng(png_with(0x7fffffff, 1, 8, 2, 0), 3), "limit");
  ExpectCleanError(DecodePng(png_with(kMaxPngDimension + 1, 1, 8, 0, 0), 1), "limit");
  ExpectCleanError(DecodePng(png_with(1, kMaxPngDimension + 1, 8, 0, 0), 1), "limit");
  ExpectCleanError(DecodePng(png_with(0, 0, 8, 2, 0), 3), "IHDR");
  // Interlaced 16384x16384 RGBA16 would need a 2 GiB buffer.
  ExpectCleanError(DecodePng(png_with(kMaxPngDimension, kMaxPngDimension, 16, 6, 1), 3), "MiB");
  // Within the limits but with almost no data: fails fast instead of first
  // allocating and clearing 768 MiB of output.
  const auto start = std::chrono::steady_clock::now();
  ExpectCleanError(DecodePng(png_with(kMaxPngDimension, kMaxPngDimension, 8, 2, 0), 3));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
}

TEST(PngCorrupt, FileErrors) {
  const std::string dir = MakeTempDir();
  const auto missing = ReadPng(dir + "/missing.png", 3);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound) << missing.status().ToString();
  EXPECT_NE(missing.status().message().find(dir + "/missing.png"), std::string::npos);
  EXPECT_EQ(ReadPngText(dir + "/missing.png").status().code(), StatusCode::kNotFound);
  const auto directory = ReadPng(dir, 3);
  EXPECT_FALSE(directory.ok());
  EXPECT_NE(directory.status().message().find(dir), std::string::npos) << directory.status().ToString();
}

TEST(PngCorrupt, TextChunkClaimingMoreThanTheFileIsCheap) {
  // libpng would allocate and clear the claimed 8 MB before noticing.
  ASSERT_OK_AND_ASSIGN(std::string png, EncodePng(MakeImage(4, 4, 3, 1)));
  const std::vector<Chunk> chunks = ParseChunks(png);
  const std::string lying = png.substr(0, chunks[0].end_offset) + Be32(7999999) + "tEXt" + "key" + '\0' + "text";
  const std::string path = MakeTempDir() + "/lying_text.png";
  WriteAll(path, lying);
  const auto text = ReadPngText(path);
  EXPECT_EQ(text.status().code(), StatusCode::kDataLoss) << text.status().ToString();
  EXPECT_NE(text.status().message().find("tEXt"), std::string::npos) << text.status().ToString();
}

TEST(PngCorrupt, FifoIsRefusedWithoutBlocking) {
  const std::string path = MakeTempDir() + "/fifo.png";
  ASSERT_EQ(mkfifo(path.c_str(), 0600), 0);
  const auto result = ReadPng(path, 3);
  EXPECT_EQ(result.status().code(), StatusCode::kInvalidArgument) << result.status().ToString();
}

TEST(PngCorrupt, RandomMutationsNeverCrash) {
  // A poor man's fuzzer: flip bytes of valid files (some with CRCs fixed up so
  // the damage reaches the decoder), decode, and require a clean answer.
  PngSpec palette = RowSpec(PNG_COLOR_TYPE_PALETTE, 4, {0, 1, 2, 3, 4, 5, 6, 7, 8});
  palette.palette.assign(16, png_color{1, 2, 3});
  palette.interlaced = true;
  palette.text_before = {{PNG_TEXT_COMPRESSION_zTXt, "k", "some text"}};
  ASSERT_OK_AND_ASSIGN(std::string rgb, EncodePng(MakeGradient(24, 20), {{"parameters", "x"}}));
  const std::vector<std::string> seeds = {rgb, BuildPng(palette)};
  std::mt19937 rng(1234);
  const std::string dir = MakeTempDir();
  for (int iteration = 0; iteration < 3000; ++iteration) {
    std::string png = seeds[iteration % seeds.size()];
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) png[8 + rng() % (png.size() - 8)] = static_cast<char>(rng());
    if (iteration % 2 == 1) png = Serialize(ParseChunks(png));  // fix every CRC
    for (int want : {1, 3}) {
      auto result = DecodePng(png, want);
      if (result.ok()) {
        EXPECT_EQ(result->pixels.size(), size_t(result->width) * result->height * want);
      } else {
        EXPECT_FALSE(result.status().message().empty());
      }
    }
    if (iteration % 10 == 0) {
      WriteAll(dir + "/m.png", png);
      auto text = ReadPngText(dir + "/m.png");
      if (!text.ok()) {
        EXPECT_FALSE(text.status().message().empty());
      }
    }
  }
}

}  // namespace
}  // namespace sdfarm::engine
