// The synthetic engine is the farm tests' stand-in for the real one: it must
// be deterministic per item, honour cancellation and count steps like the
// engine does.
#include "worker/farm/synthetic_engine.h"

#include <gtest/gtest.h>

#include <chrono>

namespace sdfarm::worker {
namespace {

using engine::RenderItem;
using engine::RenderRequest;
using engine::StatusCode;
using engine::StepInfo;

RenderRequest Request(std::vector<RenderItem> items, int steps = 3) {
  RenderRequest r;
  r.items = std::move(items);
  r.steps = steps;
  r.width = 64;
  r.height = 32;
  return r;
}

std::vector<uint8_t> PixelsOf(const SyntheticRenderer& r, const RenderItem& item) {
  auto out = r.Render(Request({item}), {});
  EXPECT_TRUE(out.ok()) << out.status().ToString();
  if (!out.ok()) return {};
  return out->images.at(0).pixels;
}

TEST(SyntheticRenderer, SameItemGivesSamePixels) {
  SyntheticRenderer r({});
  const RenderItem item{"a red fox", "", 42, 7.5};
  EXPECT_EQ(PixelsOf(r, item), PixelsOf(r, item));
  EXPECT_EQ(PixelsOf(r, item), SyntheticRenderer::Pattern(item, 64, 32).pixels);
}

TEST(SyntheticRenderer, SeedGuidanceAndPromptEachChangeThePixels) {
  SyntheticRenderer r({});
  const RenderItem base{"a red fox", "", 42, 7.5};
  const auto pixels = PixelsOf(r, base);
  EXPECT_NE(pixels, PixelsOf(r, {"a red fox", "", 43, 7.5}));
  EXPECT_NE(pixels, PixelsOf(r, {"a red fox", "", 42, 8.0}));
  EXPECT_NE(pixels, PixelsOf(r, {"a red cat", "", 42, 7.5}));
}

TEST(SyntheticRenderer, ImagesDoNotDependOnTheirBatch) {
  SyntheticRenderer r({});
  const RenderItem a{"a", "", 1, 7.5}, b{"b", "", 2, 3.0};
  auto both = r.Render(Request({a, b}), {});
  ASSERT_TRUE(both.ok());
  ASSERT_EQ(both->images.size(), 2u);
  EXPECT_EQ(both->images[1].pixels, PixelsOf(r, b));
}

TEST(SyntheticRenderer, RendersTheRequestedSizeAndDefaultsTo64) {
  SyntheticRenderer r({});
  RenderRequest req = Request({{"x", "", 1, 7.5}});
  req.width = 128;
  req.height = 24;
  auto out = r.Render(req, {});
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->images[0].width, 128);
  EXPECT_EQ(out->images[0].height, 24);
  EXPECT_EQ(out->images[0].channels, 3);
  EXPECT_EQ(out->images[0].pixels.size(), 128u * 24 * 3);
  req.width = req.height = 0;
  out = r.Render(req, {});
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->images[0].width, 64);
  EXPECT_EQ(out->images[0].height, 64);
}

TEST(SyntheticRenderer, CallsTheStepCallbackOncePerStepAndSleeps) {
  SyntheticRenderer r({.step_ms = 20});
  std::vector<int> steps;
  const auto start = std::chrono::steady_clock::now();
  auto out = r.Render(Request({{"x", "", 1, 7.5}}, 4), [&](const StepInfo& s) {
    steps.push_back(s.step);
    EXPECT_EQ(s.total_steps, 4);
    EXPECT_EQ(s.latents, nullptr);
    return true;
  });
  const auto elapsed = std::chrono::steady_clock::now() - start;
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(steps, (std::vector<int>{0, 1, 2, 3}));
  EXPECT_GE(elapsed, std::chrono::milliseconds(80));
}

TEST(SyntheticRenderer, StopsWhenTheCallbackSaysSo) {
  SyntheticRenderer r({});
  int calls = 0;
  auto out = r.Render(Request({{"x", "", 1, 7.5}}, 10), [&](const StepInfo& s) { return ++calls < 3; });
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), StatusCode::kCancelled);
  EXPECT_EQ(calls, 3);
}

TEST(SyntheticRenderer, ValidatesLikeTheEngine) {
  SyntheticRenderer r({});
  EXPECT_TRUE(r.Validate(Request({{"x", "", 1, 7.5}})).ok());
  EXPECT_EQ(r.Validate(Request({})).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r.Validate(Request({{"  ", "", 1, 7.5}})).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r.Validate(Request({{"x", "", 1, 101}})).code(), StatusCode::kInvalidArgument);
  RenderRequest bad_size = Request({{"x", "", 1, 7.5}});
  bad_size.width = 30;
  EXPECT_EQ(r.Validate(bad_size).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r.Validate(Request({{"x", "", 1, 7.5}}, 0)).code(), StatusCode::kInvalidArgument);
  RenderRequest bad_sampler = Request({{"x", "", 1, 7.5}});
  bad_sampler.sampler = "warp_drive";
  EXPECT_EQ(r.Validate(bad_sampler).code(), StatusCode::kInvalidArgument);
  bad_sampler.sampler = "dpmpp_2m_karras";
  EXPECT_TRUE(r.Validate(bad_sampler).ok());
  // Render refuses what Validate refuses.
  EXPECT_EQ(r.Render(bad_size, {}).status().code(), StatusCode::kInvalidArgument);
}

TEST(SyntheticRenderer, DescribesItsModel) {
  SyntheticRenderer r({.step_ms = 0, .model_name = "sd15"});
  EXPECT_EQ(r.info().name, "sd15");
  EXPECT_EQ(r.info().hash, "synthetic");
  EXPECT_EQ(SyntheticRenderer(SyntheticOptions{}).info().name, "synthetic");
}

TEST(SyntheticRenderer, PreviewsFollowTheRequestSize) {
  SyntheticRenderer r({});
  std::vector<engine::Image> previews;
  auto out = r.Render(Request({{"a", "", 1, 7.5}, {"b", "", 2, 7.5}}, 2), [&](const StepInfo& s) {
    previews = r.Previews(s);
    return true;
  });
  ASSERT_TRUE(out.ok());
  ASSERT_EQ(previews.size(), 2u);
  EXPECT_EQ(previews[0].width, 8);
  EXPECT_EQ(previews[0].height, 4);
}

TEST(ParseSyntheticEngine, AcceptsStepTimes) {
  auto o = ParseSyntheticEngine("synthetic:20");
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->step_ms, 20);
  o = ParseSyntheticEngine("synthetic");
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->step_ms, 0);
  for (const char* bad : {"synthetic:", "synthetic:x", "synthetic:-1", "synthetic:99999999", "torch", ""}) {
    EXPECT_EQ(ParseSyntheticEngine(bad).status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

}  // namespace
}  // namespace sdfarm::worker
