// The engine-backed Renderer: the worker's view of the real engine.
#include "worker/farm/renderer.h"

#include <gtest/gtest.h>

#include <filesystem>

namespace sdfarm::worker {
namespace {

const std::string kTinySd = std::string(SDFARM_SHARED_DIR) + "/models/tiny-sd";

TEST(ModelNameFromDir, IsTheFoldersName) {
  EXPECT_EQ(ModelNameFromDir("models/sd15"), "sd15");
  EXPECT_EQ(ModelNameFromDir("models/sd15/"), "sd15");
  EXPECT_EQ(ModelNameFromDir("/data/models/sd21//"), "sd21");
  EXPECT_EQ(ModelNameFromDir("."), std::filesystem::current_path().filename().string());
}

TEST(EngineRenderer, ServesTheModelUnderTheGivenName) {
  engine::EngineOptions eo;
  eo.threads = 1;
  auto plain = LoadEngineRenderer(kTinySd, eo, "");
  ASSERT_TRUE(plain.ok()) << plain.status().ToString();
  EXPECT_EQ((*plain)->info().name, "tiny-sd");
  auto named = LoadEngineRenderer(kTinySd, eo, "sd15");
  ASSERT_TRUE(named.ok()) << named.status().ToString();
  EXPECT_EQ((*named)->info().name, "sd15");
  EXPECT_EQ((*named)->info().hash, (*plain)->info().hash);
  EXPECT_FALSE((*named)->info().hash.empty());
}

TEST(EngineRenderer, RendersWithPreviewsAndCancels) {
  engine::EngineOptions eo;
  eo.threads = 1;
  auto r = LoadEngineRenderer(kTinySd, eo, "");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  engine::RenderRequest req;
  req.items = {{"a red fox", "", 1, 7.5}};
  req.steps = 3;
  EXPECT_TRUE((*r)->Validate(req).ok());
  std::vector<engine::Image> previews;
  auto out = (*r)->Render(req, [&](const engine::StepInfo& s) {
    previews = (*r)->Previews(s);
    return true;
  });
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  ASSERT_EQ(out->images.size(), 1u);
  EXPECT_EQ(out->images[0].width, 64);
  ASSERT_EQ(previews.size(), 1u);
  EXPECT_EQ(previews[0].width, 8);  // latent resolution
  int steps = 0;
  auto cancelled = (*r)->Render(req, [&](const engine::StepInfo&) { return ++steps < 2; });
  EXPECT_EQ(cancelled.status().code(), engine::StatusCode::kCancelled);
  req.width = 30;
  EXPECT_EQ((*r)->Validate(req).code(), engine::StatusCode::kInvalidArgument);
}

TEST(EngineRenderer, MissingModelIsAClearError) {
  auto r = LoadEngineRenderer("/nonexistent/model", {}, "");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("/nonexistent/model"), std::string::npos) << r.status().ToString();
}

}  // namespace
}  // namespace sdfarm::worker
