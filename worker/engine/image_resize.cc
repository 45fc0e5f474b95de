// Pillow-compatible Lanczos resizing (see image_resize.h).
#include "worker/engine/image_resize.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace sdfarm::engine {
namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr double kSupport = 3.0;  // Lanczos-3
// Pillow's PRECISION_BITS: 8 bits of result, 2 bits of headroom in an int32.
constexpr int kPrecisionBits = 32 - 8 - 2;

double Sinc(double x) {
  if (x == 0.0) return 1.0;
  x *= kPi;
  return std::sin(x) / x;
}

double Lanczos(double x) { return (-kSupport <= x && x < kSupport) ? Sinc(x) * Sinc(x / kSupport) : 0.0; }

// The taps of one output pixel along one axis: input pixels first..first+n-1.
struct Taps {
  int first = 0;
  std::vector<int32_t> weights;  // fixed point, kPrecisionBits
};

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for the box (0, in_size).
std::vector<Taps> Coefficients(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filter_scale = std::max(scale, 1.0);
  const double support = kSupport * filter_scale;
  std::vector<Taps> out(static_cast<size_t>(out_size));
  std::vector<double> w;
  for (int i = 0; i < out_size; ++i) {
    const double center = (i + 0.5) * scale;
    int lo = static_cast<int>(center - support + 0.5);  // C truncation, as Pillow
    lo = std::max(lo, 0);
    int hi = static_cast<int>(center + support + 0.5);
    hi = std::min(hi, in_size);
    const int n = std::max(hi - lo, 0);
    w.assign(static_cast<size_t>(n), 0.0);
    double sum = 0.0;
    for (int x = 0; x < n; ++x) {
      w[x] = Lanczos((x + lo - center + 0.5) / filter_scale);
      sum += w[x];
    }
    Taps& t = out[static_cast<size_t>(i)];
    t.first = lo;
    t.weights.resize(static_cast<size_t>(n));
    for (int x = 0; x < n; ++x) {
      const double k = sum != 0.0 ? w[x] / sum : w[x];
      const double fixed = k * (1 << kPrecisionBits);
      t.weights[x] = static_cast<int32_t>(k < 0 ? -0.5 + fixed : 0.5 + fixed);
    }
  }
  return out;
}

uint8_t Clip8(int32_t v) {
  // Pillow's clip8: an arithmetic shift (floor), then clamp.
  const int32_t shifted = v >> kPrecisionBits;
  return static_cast<uint8_t>(std::clamp<int32_t>(shifted, 0, 255));
}

// One pass along x (horizontal) or y (vertical).
Image Pass(const Image& in, int out_size, bool horizontal) {
  const int c = in.channels;
  Image out;
  out.channels = c;
  out.width = horizontal ? out_size : in.width;
  out.height = horizontal ? in.height : out_size;
  out.pixels.resize(static_cast<size_t>(out.width) * out.height * c);
  const std::vector<Taps> taps = Coefficients(horizontal ? in.width : in.height, out_size);
  const size_t in_row = static_cast<size_t>(in.width) * c;
  for (int y = 0; y < out.height; ++y) {
    for (int x = 0; x < out.width; ++x) {
      const Taps& t = taps[static_cast<size_t>(horizontal ? x : y)];
      for (int ch = 0; ch < c; ++ch) {
        int32_t sum = int32_t{1} << (kPrecisionBits - 1);
        for (size_t j = 0; j < t.weights.size(); ++j) {
          const int src = t.first + static_cast<int>(j);
          const size_t at = horizontal ? static_cast<size_t>(y) * in_row + static_cast<size_t>(src) * c + ch
                                       : static_cast<size_t>(src) * in_row + static_cast<size_t>(x) * c + ch;
          sum += static_cast<int32_t>(in.pixels[at]) * t.weights[j];
        }
        out.pixels[(static_cast<size_t>(y) * out.width + x) * c + ch] = Clip8(sum);
      }
    }
  }
  return out;
}

}  // namespace

Image ResizeLanczos(const Image& image, int width, int height) {
  Image out = image;
  if (width != image.width) out = Pass(out, width, /*horizontal=*/true);
  if (height != image.height) out = Pass(out, height, /*horizontal=*/false);
  return out;
}

}  // namespace sdfarm::engine
