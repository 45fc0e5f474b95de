// EncodeText: the UNet's text context. Without chunking one 77-token row per
// prompt (truncated, as diffusers); with chunking A1111's chunks, each encoded
// on its own, concatenated, and padded per item with empty chunks.
#include "worker/engine/text_conditioning.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/engine/golden.h"
#include "worker/engine/component_loader.h"
#include "worker/engine/prompt_chunks.h"

namespace sdfarm::engine {
namespace {

using ::sdfarm::testing::MaxAbsDiff;
using ::sdfarm::testing::ModelPath;

class TextConditioningTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto tok = ClipTokenizer::Load(ModelPath("tiny-sd/tokenizer"));
    auto te = LoadTextEncoder(ModelPath("tiny-sd/text_encoder"), at::kCPU, at::kFloat);
    ASSERT_TRUE(tok.ok() && te.ok());
    tokenizer_ = new ClipTokenizer(std::move(tok).value());
    encoder_ = std::move(te).value().release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete encoder_;
  }
  // The text encoder's output for one chunk of ids alone: [77, hidden].
  static at::Tensor EncodeAlone(const std::vector<int64_t>& ids, int clip_skip = 1) {
    return encoder_->Encode(at::tensor(ids, at::kLong).unsqueeze(0), clip_skip)[0];
  }
  static std::string Foxes(int n) {
    std::string s;
    for (int i = 0; i < n; ++i) s += "fox ";
    return s;
  }
  static ClipTokenizer* tokenizer_;
  static ClipTextModel* encoder_;
};
ClipTokenizer* TextConditioningTest::tokenizer_ = nullptr;
ClipTextModel* TextConditioningTest::encoder_ = nullptr;

TEST_F(TextConditioningTest, WithoutChunkingLongPromptsAreTruncated) {
  c10::InferenceMode guard;
  RenderRequest r;
  r.items = {{Foxes(100), "", 1, 7.5}};
  TextConditioning text = EncodeText(*tokenizer_, *encoder_, r, at::kCPU);
  EXPECT_TRUE(text.cfg);
  ASSERT_EQ(text.groups.size(), 1u);
  EXPECT_EQ(text.groups[0].context.sizes(), (std::vector<int64_t>{2, 77, 32}));
  EXPECT_EQ(text.dropped_tokens, (std::vector<int>{25}));
  // (Tolerance: a batch of 2 and a batch of 1 round differently in BLAS.)
  EXPECT_LE(MaxAbsDiff(text.groups[0].context[1], EncodeAlone(tokenizer_->EncodePadded(Foxes(100)).ids)), 1e-5);
}

TEST_F(TextConditioningTest, A100TokenPromptIsTwoChunksEachEncodedAlone) {
  c10::InferenceMode guard;
  for (int clip_skip : {1, 2}) {
    RenderRequest r;
    r.items = {{Foxes(100), "", 1, 7.5}};
    r.prompt_chunking = true;
    r.clip_skip = clip_skip;
    TextConditioning text = EncodeText(*tokenizer_, *encoder_, r, at::kCPU);
    ASSERT_EQ(text.groups.size(), 1u);
    const at::Tensor& ctx = text.groups[0].context;
    ASSERT_EQ(ctx.sizes(), (std::vector<int64_t>{2, 154, 32}));  // [negative, prompt] x 2 chunks
    EXPECT_EQ(text.dropped_tokens, (std::vector<int>{0}));
    const auto chunks = ChunkPromptIds(*tokenizer_, Foxes(100));
    ASSERT_EQ(chunks.size(), 2u);
    // The prompt row: each chunk as if it were a prompt of its own (clip skip per chunk).
    EXPECT_LE(MaxAbsDiff(ctx[1].slice(0, 0, 77), EncodeAlone(chunks[0], clip_skip)), 1e-5) << clip_skip;
    EXPECT_LE(MaxAbsDiff(ctx[1].slice(0, 77, 154), EncodeAlone(chunks[1], clip_skip)), 1e-5) << clip_skip;
    // The chunks differ (another token count), so this is not the same row twice.
    EXPECT_GT(MaxAbsDiff(ctx[1].slice(0, 0, 77), ctx[1].slice(0, 77, 154)), 1e-3);
    // The empty negative prompt is padded with an empty chunk to two chunks.
    const at::Tensor empty = EncodeAlone(EmptyChunk(*tokenizer_), clip_skip);
    EXPECT_LE(MaxAbsDiff(ctx[0].slice(0, 0, 77), empty), 1e-5);
    EXPECT_LE(MaxAbsDiff(ctx[0].slice(0, 77, 154), empty), 1e-5);
  }
}

TEST_F(TextConditioningTest, ChunkingAShortPromptChangesNothing) {
  c10::InferenceMode guard;
  RenderRequest r;
  r.items = {{"a red fox in the snow", "blurry", 1, 7.5}};
  TextConditioning plain = EncodeText(*tokenizer_, *encoder_, r, at::kCPU);
  r.prompt_chunking = true;
  TextConditioning chunked = EncodeText(*tokenizer_, *encoder_, r, at::kCPU);
  ASSERT_EQ(chunked.groups.size(), 1u);
  EXPECT_TRUE(at::equal(plain.groups[0].context, chunked.groups[0].context));
}

TEST_F(TextConditioningTest, ChunkCountsArePerItemAndRowsGroupedByLength) {
  c10::InferenceMode guard;
  RenderRequest r;
  r.prompt_chunking = true;
  r.items = {{"a fox", "", 1, 7.5},              // 1 chunk
             {Foxes(100), "", 2, 7.5},           // 2 chunks, negative padded to 2
             {"a cat", Foxes(160), 3, 7.5},      // negative of 3 chunks, prompt padded to 3
             {Foxes(80), Foxes(200), 4, 1.0}};   // no guidance: its unused negative row follows the prompt (2)
  TextConditioning text = EncodeText(*tokenizer_, *encoder_, r, at::kCPU);
  EXPECT_TRUE(text.cfg);
  ASSERT_EQ(text.groups.size(), 3u);
  auto rows = [](const TextConditioning::Group& g) {
    at::Tensor t = g.rows.contiguous();
    return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
  };
  // Negative rows 0..3, prompt rows 4..7.
  EXPECT_EQ(rows(text.groups[0]), (std::vector<int64_t>{0, 4}));
  EXPECT_EQ(text.groups[0].context.size(1), 77);
  EXPECT_EQ(rows(text.groups[1]), (std::vector<int64_t>{1, 3, 5, 7}));
  EXPECT_EQ(text.groups[1].context.size(1), 154);
  EXPECT_EQ(rows(text.groups[2]), (std::vector<int64_t>{2, 6}));
  EXPECT_EQ(text.groups[2].context.size(1), 231);
  // Item 2's prompt: "a cat" then two empty chunks.
  const at::Tensor cat_row = text.groups[2].context[1];
  EXPECT_LE(MaxAbsDiff(cat_row.slice(0, 0, 77), EncodeAlone(tokenizer_->EncodePadded("a cat").ids)), 1e-5);
  EXPECT_LE(MaxAbsDiff(cat_row.slice(0, 154, 231), EncodeAlone(EmptyChunk(*tokenizer_))), 1e-5);
}

}  // namespace
}  // namespace sdfarm::engine
