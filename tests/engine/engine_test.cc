// The engine's contract beyond pixel parity: requests are validated before
// any compute, an image never depends on its batch, the step callback sees
// every step and can cancel, and previews are cheap and sane.
#include "worker/engine/engine.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "tests/engine/golden.h"

namespace sdfarm::engine {
namespace {

using ::sdfarm::testing::MaxAbsDiff;
using ::sdfarm::testing::ModelPath;

class EngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto e = Engine::Load(ModelPath("tiny-sd"));
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    engine_ = std::move(e).value().release();
  }
  static void TearDownTestSuite() {
    delete engine_;
    engine_ = nullptr;
  }
  static RenderRequest Basic() {
    RenderRequest r;
    r.items = {{"a red fox in the snow", "", 1, 7.5}};
    r.width = r.height = 64;
    r.steps = 4;
    r.sampler = "euler_a";
    r.keep_latents = true;
    return r;
  }
  static at::Tensor Latents(const RenderResult& r, int64_t i) {
    return at::from_blob(const_cast<float*>(r.latents.data()), r.latents_shape, at::kFloat)[i].clone();
  }
  static Engine* engine_;
};
Engine* EngineTest::engine_ = nullptr;

TEST_F(EngineTest, InfoDescribesTheModel) {
  const ModelInfo& info = engine_->info();
  EXPECT_EQ(info.name, "tiny-sd");
  EXPECT_EQ(info.default_width, 64);
  EXPECT_EQ(info.unet_in_channels, 4);
  EXPECT_EQ(info.default_sampler, "pndm");
  EXPECT_EQ(info.prediction_type, "epsilon");
  EXPECT_EQ(info.device, "cpu");
  EXPECT_EQ(info.dtype, "fp32");
  EXPECT_EQ(info.hash.size(), 10u);
}

TEST_F(EngineTest, BadRequestsAreRejectedBeforeAnyCompute) {
  struct Case {
    std::function<void(RenderRequest&)> edit;
    std::string message;
  };
  Image rgb{64, 64, 3, std::vector<uint8_t>(64 * 64 * 3, 128)};
  Image small{32, 32, 3, std::vector<uint8_t>(32 * 32 * 3, 128)};
  const std::vector<Case> cases = {
      {[](RenderRequest& r) { r.items.clear(); }, "no prompt"},
      {[](RenderRequest& r) { r.items[0].prompt.assign(2, ' '); }, "prompt is empty"},
      {[](RenderRequest& r) { r.width = 100; }, "multiples of 8"},
      {[](RenderRequest& r) { r.height = 0 - 8; }, "multiples of 8"},
      {[](RenderRequest& r) { r.steps = 0; }, "steps"},
      {[](RenderRequest& r) { r.steps = 1001; }, "steps"},
      {[](RenderRequest& r) { r.sampler = "heun"; }, "heun"},
      {[&](RenderRequest& r) { r.init_image = rgb; r.strength = 0; }, "strength"},
      {[&](RenderRequest& r) { r.init_image = rgb; r.strength = 1.5; }, "strength"},
      {[&](RenderRequest& r) { r.init_image = small; }, "32x32"},
      {[&](RenderRequest& r) { r.mask = Image{64, 64, 1, std::vector<uint8_t>(64 * 64, 255)}; }, "init image"},
      {[&](RenderRequest& r) {
         r.init_image = rgb;
         r.mask = Image{64, 64, 1, std::vector<uint8_t>(64 * 64, 255)};
       }, "inpainting model"},
      {[](RenderRequest& r) { r.clip_skip = 0; }, "clip skip"},
      {[](RenderRequest& r) { r.clip_skip = 3; }, "clip skip"},
      {[](RenderRequest& r) { r.items[0].guidance_scale = std::nan(""); }, "guidance"},
  };
  for (const auto& c : cases) {
    RenderRequest r = Basic();
    c.edit(r);
    bool called = false;
    auto result = engine_->Render(r, [&](const StepInfo&) { return called = true; });
    ASSERT_FALSE(result.ok()) << c.message;
    EXPECT_EQ(result.status().code(), StatusCode::kInvalidArgument) << result.status().ToString();
    EXPECT_NE(result.status().message().find(c.message), std::string::npos) << result.status().ToString();
    EXPECT_FALSE(called) << "computed before rejecting: " << c.message;
  }
}

TEST_F(EngineTest, AnImageDoesNotDependOnItsBatch) {
  // Items with different prompts, seeds and guidance (one without CFG) in one
  // batch give the same latents as each rendered alone.
  RenderRequest batch = Basic();
  batch.items = {{"a red fox in the snow", "", 100, 7.5},
                 {"a lighthouse", "fog", 7, 3.0},
                 {"a red fox in the snow", "", 101, 1.0}};
  ASSERT_OK_AND_ASSIGN(RenderResult together, engine_->Render(batch));
  ASSERT_EQ(together.images.size(), 3u);
  for (int64_t i = 0; i < 3; ++i) {
    RenderRequest one = Basic();
    one.items = {batch.items[i]};
    ASSERT_OK_AND_ASSIGN(RenderResult alone, engine_->Render(one));
    // Not bit-exact: BLAS blocks a GEMM differently for other row counts, so
    // float sums round differently (1.6e-4 seen with OpenBLAS on an AVX-512
    // CPU); the tolerance of the diffusers parity tests. Another seed,
    // prompt or guidance would differ by O(1).
    EXPECT_LE(MaxAbsDiff(Latents(together, i), Latents(alone, 0)), 1e-3) << "item " << i;
  }
}

TEST_F(EngineTest, SharedGeneratorModeDiffersFromPerImageSeeds) {
  RenderRequest a = Basic();
  a.items = {{"a red fox", "", 5, 7.5}, {"a red fox", "", 6, 7.5}};
  RenderRequest b = a;
  b.seed_mode = SeedMode::kShared;
  b.shared_seed = 5;
  ASSERT_OK_AND_ASSIGN(RenderResult ra, engine_->Render(a));
  ASSERT_OK_AND_ASSIGN(RenderResult rb, engine_->Render(b));
  // Image 0 starts from the same first draw; image 1 continues seed 5's stream in shared mode.
  EXPECT_GT(MaxAbsDiff(Latents(ra, 1), Latents(rb, 1)), 1e-2);
}

TEST_F(EngineTest, CallbackSeesEveryStepAndCanCancel) {
  RenderRequest r = Basic();
  r.steps = 6;
  std::vector<int> seen;
  double last_elapsed = -1;
  ASSERT_OK_AND_ASSIGN(RenderResult out, engine_->Render(r, [&](const StepInfo& s) {
    seen.push_back(s.step);
    EXPECT_EQ(s.total_steps, 6);
    EXPECT_GE(s.elapsed_seconds, last_elapsed);
    last_elapsed = s.elapsed_seconds;
    EXPECT_NE(s.latents, nullptr);
    EXPECT_EQ(s.latents->sizes(), (std::vector<int64_t>{1, 4, 8, 8}));
    return true;
  }));
  EXPECT_EQ(seen, (std::vector<int>{0, 1, 2, 3, 4, 5}));

  int calls = 0;
  auto cancelled = engine_->Render(r, [&](const StepInfo& s) { return ++calls < 2; });
  ASSERT_FALSE(cancelled.ok());
  EXPECT_EQ(cancelled.status().code(), StatusCode::kCancelled);
  EXPECT_EQ(calls, 2);
}

TEST_F(EngineTest, PreviewIsLatentSizedRgb) {
  RenderRequest r = Basic();
  std::vector<Image> previews;
  ASSERT_OK(engine_->Render(r, [&](const StepInfo& s) {
    previews = PreviewImages(*s.latents);
    return true;
  }));
  ASSERT_EQ(previews.size(), 1u);
  EXPECT_EQ(previews[0].width, 8);
  EXPECT_EQ(previews[0].height, 8);
  EXPECT_EQ(previews[0].channels, 3);
  EXPECT_EQ(previews[0].pixels.size(), 8u * 8u * 3u);
}

TEST_F(EngineTest, ClipSkipChangesTheImage) {
  RenderRequest a = Basic();
  RenderRequest b = Basic();
  b.clip_skip = 2;
  ASSERT_OK_AND_ASSIGN(RenderResult ra, engine_->Render(a));
  ASSERT_OK_AND_ASSIGN(RenderResult rb, engine_->Render(b));
  EXPECT_GT(MaxAbsDiff(Latents(ra, 0), Latents(rb, 0)), 1e-3);
}

TEST_F(EngineTest, LongPromptsAreTruncatedAndReported) {
  RenderRequest r = Basic();
  std::string long_prompt;
  for (int i = 0; i < 100; ++i) long_prompt += "fox ";
  r.items = {{long_prompt, "", 1, 7.5}, {"fox", "", 1, 7.5}};
  ASSERT_OK_AND_ASSIGN(RenderResult out, engine_->Render(r));
  EXPECT_EQ(out.dropped_tokens, (std::vector<int>{100 - 75, 0}));
}

TEST_F(EngineTest, PromptChunkingLeavesPromptsThatFitUnchanged) {
  // Up to 75 tokens, chunking is one chunk of exactly the ids diffusers uses:
  // the same latents and pixels, bit for bit.
  RenderRequest a = Basic();
  a.items = {{"a red fox in the snow", "blurry", 1, 7.5}, {"a lighthouse", "", 2, 1.0}};
  RenderRequest b = a;
  b.prompt_chunking = true;
  ASSERT_OK_AND_ASSIGN(RenderResult ra, engine_->Render(a));
  ASSERT_OK_AND_ASSIGN(RenderResult rb, engine_->Render(b));
  EXPECT_EQ(ra.latents, rb.latents);
  ASSERT_EQ(ra.images.size(), 2u);
  EXPECT_EQ(ra.images[0].pixels, rb.images[0].pixels);
  EXPECT_EQ(ra.images[1].pixels, rb.images[1].pixels);
}

TEST_F(EngineTest, PromptChunkingKeepsTheTokensPast77) {
  std::string long_prompt;
  for (int i = 0; i < 50; ++i) long_prompt += "fox ";
  for (int i = 0; i < 50; ++i) long_prompt += "castle ";
  RenderRequest cut = Basic();
  cut.items = {{long_prompt, "", 1, 7.5}};
  RenderRequest chunked = cut;
  chunked.prompt_chunking = true;
  ASSERT_OK_AND_ASSIGN(RenderResult rc, engine_->Render(cut));
  ASSERT_OK_AND_ASSIGN(RenderResult rk, engine_->Render(chunked));
  EXPECT_EQ(rc.dropped_tokens, (std::vector<int>{25}));
  EXPECT_EQ(rk.dropped_tokens, (std::vector<int>{0}));
  ASSERT_EQ(rk.images.size(), 1u);
  EXPECT_EQ(rk.images[0].width, 64);
  // The second chunk (25 more "castle"s) conditions the image too.
  EXPECT_GT(MaxAbsDiff(Latents(rc, 0), Latents(rk, 0)), 1e-3);
}

TEST_F(EngineTest, ChunkedPromptsOfDifferentLengthsDoNotDependOnTheirBatch) {
  // One, two and three chunks in one batch (the UNet runs once per length).
  std::string two, three;
  for (int i = 0; i < 100; ++i) two += "fox ";
  for (int i = 0; i < 160; ++i) three += "owl ";
  RenderRequest batch = Basic();
  batch.prompt_chunking = true;
  batch.items = {{"a red fox", "", 3, 7.5}, {two, "", 4, 7.5}, {"a cat", three, 5, 5.0}};
  ASSERT_OK_AND_ASSIGN(RenderResult together, engine_->Render(batch));
  for (int64_t i = 0; i < 3; ++i) {
    RenderRequest one = batch;
    one.items = {batch.items[i]};
    ASSERT_OK_AND_ASSIGN(RenderResult alone, engine_->Render(one));
    EXPECT_LE(MaxAbsDiff(Latents(together, i), Latents(alone, 0)), 1e-3) << "item " << i;
  }
}

TEST(EngineLoad, ClearErrorsForBadOptions) {
  EXPECT_EQ(Engine::Load(ModelPath("tiny-sd"), {.device = "tpu"}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Engine::Load(ModelPath("tiny-sd"), {.device = "cpu", .dtype = "fp16"}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(Engine::Load(ModelPath("tiny-sd"), {.device = "cpu", .dtype = "int8"}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(Engine::Load("/nonexistent/model").status().code(), StatusCode::kNotFound);
}

TEST(EngineLoad, Bf16OnCpuRendersCloseToFp32) {
  ASSERT_OK_AND_ASSIGN(auto fp32, Engine::Load(ModelPath("tiny-sd")));
  ASSERT_OK_AND_ASSIGN(auto bf16, Engine::Load(ModelPath("tiny-sd"), {.device = "cpu", .dtype = "bf16"}));
  EXPECT_EQ(bf16->info().dtype, "bf16");
  RenderRequest r;
  r.items = {{"a red fox", "", 3, 7.5}};
  r.steps = 4;
  r.sampler = "ddim";
  ASSERT_OK_AND_ASSIGN(RenderResult a, fp32->Render(r));
  ASSERT_OK_AND_ASSIGN(RenderResult b, bf16->Render(r));
  at::Tensor pa = at::from_blob(a.images[0].pixels.data(), {64, 64, 3}, at::kByte).to(at::kFloat);
  at::Tensor pb = at::from_blob(b.images[0].pixels.data(), {64, 64, 3}, at::kByte).to(at::kFloat);
  EXPECT_LT((pa - pb).abs().mean().item<double>(), 8.0);  // bf16 has 8 bits of mantissa
}

}  // namespace
}  // namespace sdfarm::engine
