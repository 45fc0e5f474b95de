#include "worker/farm/synthetic_engine.h"

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <utility>

#include "worker/engine/scheduler.h"

namespace sdfarm::worker {
namespace {

using Clock = std::chrono::steady_clock;

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// FNV-1a over the prompt, mixed with the seed and guidance bits: the whole
// identity of a synthetic image.
uint64_t ItemHash(const engine::RenderItem& item) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char c : item.prompt) h = (h ^ c) * 0x100000001B3ull;
  uint64_t g = 0;
  static_assert(sizeof(g) == sizeof(item.guidance_scale));
  std::memcpy(&g, &item.guidance_scale, sizeof(g));
  uint64_t state = h ^ item.seed;
  h ^= SplitMix64(state);
  state = h ^ g;
  return SplitMix64(state);
}

}  // namespace

engine::StatusOr<SyntheticOptions> ParseSyntheticEngine(const std::string& spec) {
  constexpr char kPrefix[] = "synthetic";
  SyntheticOptions o;
  if (spec == kPrefix) return o;
  const std::string prefix = std::string(kPrefix) + ":";
  if (spec.rfind(prefix, 0) != 0) {
    return engine::InvalidArgumentError("unknown engine '" + spec + "' (the real engine is the default; "
                                        "'synthetic:MS' is the test engine)");
  }
  const std::string ms = spec.substr(prefix.size());
  if (ms.empty() || ms.size() > 5 || ms.find_first_not_of("0123456789") != std::string::npos ||
      std::stoi(ms) > 60000) {
    return engine::InvalidArgumentError("synthetic engine: '" + ms +
                                        "' is not a step time in milliseconds (0..60000), as in synthetic:20");
  }
  o.step_ms = std::stoi(ms);
  return o;
}

SyntheticRenderer::SyntheticRenderer(SyntheticOptions options) : options_(std::move(options)) {
  info_.name = options_.model_name;
  info_.hash = kModelHash;
  info_.device = "cpu";
  info_.dtype = "fp32";
  info_.default_width = info_.default_height = kDefaultSize;
  info_.prediction_type = "epsilon";
  info_.default_sampler = "euler_a";
}

engine::Status SyntheticRenderer::Validate(const engine::RenderRequest& r) const {
  if (r.items.empty()) return engine::InvalidArgumentError("no prompt: the request has no items");
  for (size_t i = 0; i < r.items.size(); ++i) {
    const engine::RenderItem& it = r.items[i];
    if (it.prompt.find_first_not_of(" \t\r\n") == std::string::npos) {
      return engine::InvalidArgumentError("item " + std::to_string(i) + ": the prompt is empty");
    }
    if (!std::isfinite(it.guidance_scale) || it.guidance_scale < 0 || it.guidance_scale > 100) {
      return engine::InvalidArgumentError("item " + std::to_string(i) + ": guidance scale must be in [0, 100]");
    }
  }
  const int width = r.width == 0 ? info_.default_width : r.width;
  const int height = r.height == 0 ? info_.default_height : r.height;
  if (width % 8 != 0 || height % 8 != 0 || width < 8 || height < 8 || width > 8192 || height > 8192) {
    return engine::InvalidArgumentError("width and height must be multiples of 8 in [8, 8192], got " +
                                        std::to_string(width) + "x" + std::to_string(height));
  }
  if (r.steps <= 0 || r.steps > 1000) {
    return engine::InvalidArgumentError("steps must be in [1, 1000], got " + std::to_string(r.steps));
  }
  if (!r.sampler.empty()) {
    if (auto s = engine::ParseSampler(r.sampler); !s.ok()) return s.status();
  }
  if (r.init_image || r.mask) {
    return engine::UnimplementedError("the synthetic engine renders txt2img only");
  }
  return engine::OkStatus();
}

engine::StatusOr<engine::RenderResult> SyntheticRenderer::Render(const engine::RenderRequest& r,
                                                                 const engine::StepCallback& on_step) const {
  if (auto s = Validate(r); !s.ok()) return s;
  const auto start = Clock::now();
  const int width = r.width == 0 ? info_.default_width : r.width;
  const int height = r.height == 0 ? info_.default_height : r.height;
  preview_width_ = width;
  preview_height_ = height;
  preview_items_ = static_cast<int>(r.items.size());
  auto seconds_since = [](Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
  };
  for (int step = 0; step < r.steps; ++step) {
    const auto step_start = Clock::now();
    if (options_.step_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(options_.step_ms));
    if (on_step) {
      engine::StepInfo info;
      info.step = step;
      info.total_steps = r.steps;
      info.timestep = 999.0 * (r.steps - 1 - step) / std::max(1, r.steps - 1);
      info.elapsed_seconds = seconds_since(start);
      info.step_seconds = seconds_since(step_start);
      if (!on_step(info)) {
        return engine::CancelledError("render cancelled after step " + std::to_string(step + 1));
      }
    }
  }
  engine::RenderResult result;
  result.denoise_seconds = seconds_since(start);
  const auto decode_start = Clock::now();
  for (const engine::RenderItem& item : r.items) result.images.push_back(Pattern(item, width, height));
  result.dropped_tokens.assign(r.items.size(), 0);
  result.decode_seconds = seconds_since(decode_start);
  return result;
}

std::vector<engine::Image> SyntheticRenderer::Previews(const engine::StepInfo& step) const {
  std::vector<engine::Image> out;
  const int w = std::max(1, preview_width_ / 8), h = std::max(1, preview_height_ / 8);
  const uint8_t level =
      static_cast<uint8_t>(255 * (step.step + 1) / std::max(1, step.total_steps));
  for (int i = 0; i < preview_items_; ++i) {
    engine::Image img;
    img.width = w;
    img.height = h;
    img.channels = 3;
    img.pixels.assign(static_cast<size_t>(w) * h * 3, level);
    out.push_back(std::move(img));
  }
  return out;
}

engine::Image SyntheticRenderer::Pattern(const engine::RenderItem& item, int width, int height) {
  // Diagonal colour bands plus an XOR texture: cheap to make, small as a PNG
  // (benchmarks encode thousands), and different for every (prompt, seed,
  // guidance) in every channel with overwhelming probability.
  uint64_t state = ItemHash(item);
  int ax[3], ay[3], offset[3], texture[3];
  for (int c = 0; c < 3; ++c) {
    const uint64_t v = SplitMix64(state);
    ax[c] = static_cast<int>(v % 7) + 1;
    ay[c] = static_cast<int>((v >> 8) % 7) + 1;
    offset[c] = static_cast<int>((v >> 16) & 255);
    texture[c] = static_cast<int>((v >> 24) & 63);
  }
  engine::Image img;
  img.width = width;
  img.height = height;
  img.channels = 3;
  img.pixels.resize(static_cast<size_t>(width) * height * 3);
  uint8_t* p = img.pixels.data();
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      for (int c = 0; c < 3; ++c) {
        *p++ = static_cast<uint8_t>((x * ax[c] + y * ay[c] + offset[c] + ((x ^ y) & texture[c])) & 255);
      }
    }
  }
  return img;
}

}  // namespace sdfarm::worker
