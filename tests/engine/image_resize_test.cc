// ResizeLanczos against Pillow's Image.resize(..., Image.LANCZOS): what
// diffusers does to an init image or mask of another size.
#include "worker/engine/image_resize.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

namespace sdfarm::engine {
namespace {

Image Gray(int width, int height, std::vector<uint8_t> pixels) { return Image{width, height, 1, std::move(pixels)}; }

TEST(ImageResize, SizesAreTheRequestedOnes) {
  const Image rgb{100, 60, 3, std::vector<uint8_t>(100 * 60 * 3, 7)};
  for (auto [w, h] : std::vector<std::pair<int, int>>{{64, 64}, {96, 56}, {200, 8}, {1, 1}, {100, 61}}) {
    const Image out = ResizeLanczos(rgb, w, h);
    EXPECT_EQ(out.width, w);
    EXPECT_EQ(out.height, h);
    EXPECT_EQ(out.channels, 3);
    EXPECT_EQ(out.pixels.size(), static_cast<size_t>(w) * h * 3);
  }
}

TEST(ImageResize, AConstantImageStaysConstant) {
  // The weights of every output pixel are normalised to sum 1 (then rounded
  // to 22-bit fixed point; the +0.5 start of the sum absorbs the rounding).
  for (uint8_t value : {uint8_t{0}, uint8_t{1}, uint8_t{128}, uint8_t{254}, uint8_t{255}}) {
    const Image in{37, 23, 3, std::vector<uint8_t>(37 * 23 * 3, value)};
    for (auto [w, h] : std::vector<std::pair<int, int>>{{16, 8}, {80, 48}, {37, 5}, {3, 100}}) {
      const Image out = ResizeLanczos(in, w, h);
      for (uint8_t v : out.pixels) ASSERT_EQ(v, value) << w << "x" << h;
    }
  }
}

TEST(ImageResize, SameSizeIsACopy) {
  const Image in = Gray(3, 2, {0, 10, 255, 7, 99, 200});
  EXPECT_EQ(ResizeLanczos(in, 3, 2).pixels, in.pixels);
}

// Worked by hand from Pillow's Resample.c (precompute_coeffs,
// normalize_coeffs_8bpc, clip8). Downscaling 4 -> 2 pixels: scale = 2, so the
// Lanczos-3 kernel is stretched by 2 (support 6 input pixels). Output pixel 0
// is centred at (0 + 0.5) * 2 = 1.0 and takes input pixels 0..3 (the window
// [1 - 6, 1 + 6) clipped to the image), at kernel positions
// (j + 0.5 - 1.0) / 2 = -0.25, 0.25, 0.75, 1.25, where
//   L(x) = sinc(x) sinc(x / 3):  L(+-0.25) = 0.900316 * 0.988616 = 0.890067,
//   L(0.75) = 0.300105 * 0.900316 = 0.270190,
//   L(1.25) = -0.180063 * 0.737913 = -0.132871;
// their sum is 1.917453, so the normalised weights are 0.464192, 0.464192,
// 0.140911, -0.069296. For the row 0, 0, 255, 255 the result is
// 255 * (0.140911 - 0.069296) = 18.26 -> 18; pixel 1 is the mirror image,
// 255 * 2 * 0.464192 = 236.74 -> 237. (Fixed point: the weights times 2^22
// rounded are 1946964, 1946964, 591023, -290647; (255 * (591023 - 290647) +
// 2^21) >> 22 = 18.)
TEST(ImageResize, DownscaleMatchesPillowWorkedByHand) {
  EXPECT_EQ(ResizeLanczos(Gray(4, 1, {0, 0, 255, 255}), 2, 1).pixels, (std::vector<uint8_t>{18, 237}));
  // The same along y: only the vertical pass runs.
  EXPECT_EQ(ResizeLanczos(Gray(1, 4, {0, 0, 255, 255}), 1, 2).pixels, (std::vector<uint8_t>{18, 237}));
}

// Upscaling 2 -> 4: scale = 0.5, the kernel is not stretched (support 3).
// Output pixel 1 is centred at 1.5 * 0.5 = 0.75 and takes inputs 0 and 1 at
// positions -0.25 and 0.75: weights 0.890067 and 0.270190, normalised 0.767129
// and 0.232871, so 255 * 0.232871 = 59.38 -> 59; pixel 2 mirrors it:
// 255 * 0.767129 = 195.6 -> 196. Pixels 0 and 3 (centres 0.25 and 1.75) get
// weights 1.0 (L(0) on the near pixel) and L(1) = 0 on the far one.
TEST(ImageResize, UpscaleMatchesPillowWorkedByHand) {
  EXPECT_EQ(ResizeLanczos(Gray(2, 1, {0, 255}), 4, 1).pixels, (std::vector<uint8_t>{0, 59, 196, 255}));
}

// Both passes, with negative lobes and clipping: values from a line-by-line
// Python transcription of Resample.c's 8-bit path (horizontal pass into an
// 8-bit image, then vertical), the same arithmetic as above.
TEST(ImageResize, TwoPassDownscaleMatchesPillowsArithmetic) {
  std::vector<uint8_t> ramp;
  for (int y = 0; y < 4; ++y) {
    for (int x = 0; x < 6; ++x) ramp.push_back(static_cast<uint8_t>((x * 40 + y * 50) % 256));
  }
  EXPECT_EQ(ResizeLanczos(Gray(6, 4, ramp), 3, 2).pixels, (std::vector<uint8_t>{45, 133, 193, 156, 156, 61}));
  std::vector<uint8_t> checker;
  for (int y = 0; y < 5; ++y) {
    for (int x = 0; x < 5; ++x) checker.push_back((x + y) % 2 == 0 ? 255 : 0);
  }
  EXPECT_EQ(ResizeLanczos(Gray(5, 5, checker), 2, 3).pixels, (std::vector<uint8_t>{130, 130, 126, 126, 130, 130}));
}

TEST(ImageResize, ChannelsAreResizedIndependently) {
  // R: the worked row; G: its negative; B: constant.
  const Image rgb{4, 1, 3, {0, 255, 9, 0, 255, 9, 255, 0, 9, 255, 0, 9}};
  EXPECT_EQ(ResizeLanczos(rgb, 2, 1).pixels, (std::vector<uint8_t>{18, 237, 9, 237, 18, 9}));
}

}  // namespace
}  // namespace sdfarm::engine
