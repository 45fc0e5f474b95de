// ChunkPromptIds follows AUTOMATIC1111's tokenize_line: chunks of 75 tokens
// framed to 77, the comma backtrack, empty-chunk padding; and a prompt that
// fits one window gives exactly the ids diffusers uses.
#include "worker/engine/prompt_chunks.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "tests/engine/golden.h"

namespace sdfarm::engine {
namespace {

using ::sdfarm::testing::GoldenPath;
using ::sdfarm::testing::ModelPath;
using Ids = std::vector<int64_t>;

class PromptChunksTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto sd1 = ClipTokenizer::Load(ModelPath("tiny-sd/tokenizer"));
    auto sd2 = ClipTokenizer::Load(ModelPath("tiny-sd-v2/tokenizer"));
    ASSERT_TRUE(sd1.ok() && sd2.ok());
    sd1_ = new ClipTokenizer(std::move(sd1).value());
    sd2_ = new ClipTokenizer(std::move(sd2).value());
  }
  static void TearDownTestSuite() {
    delete sd1_;
    delete sd2_;
  }
  // The id of a word that is one token.
  static int64_t Id(const std::string& word) {
    Ids ids = sd1_->Encode(word);
    EXPECT_EQ(ids.size(), 3u) << word;
    return ids.size() == 3 ? ids[1] : -1;
  }
  static std::string Repeat(const std::string& word, int n) {
    std::string s;
    for (int i = 0; i < n; ++i) s += word + " ";
    return s;
  }
  // BOS + tokens + EOS + pad, 77 ids.
  static Ids Framed(const ClipTokenizer& t, const Ids& tokens) {
    Ids ids = {t.bos_id()};
    ids.insert(ids.end(), tokens.begin(), tokens.end());
    ids.push_back(t.eos_id());
    ids.resize(77, t.pad_id());
    return ids;
  }
  static ClipTokenizer* sd1_;
  static ClipTokenizer* sd2_;
};
ClipTokenizer* PromptChunksTest::sd1_ = nullptr;
ClipTokenizer* PromptChunksTest::sd2_ = nullptr;

TEST_F(PromptChunksTest, PromptsThatFitOneWindowGiveDiffusersIds) {
  std::ifstream in(GoldenPath("tokenizer_prompts.json"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  const auto prompts = nlohmann::json::parse(buffer.str()).get<std::vector<std::string>>();
  ASSERT_GE(prompts.size(), 30u);
  int checked = 0;
  for (const ClipTokenizer* t : {sd1_, sd2_}) {
    for (const std::string& p : prompts) {
      ClipTokenizer::Padded padded = t->EncodePadded(p);
      if (padded.dropped_tokens > 0) continue;
      const auto chunks = ChunkPromptIds(*t, p);
      ASSERT_EQ(chunks.size(), 1u) << p;
      EXPECT_EQ(chunks[0], padded.ids) << p;
      ++checked;
    }
  }
  EXPECT_GE(checked, 60);
}

TEST_F(PromptChunksTest, EmptyPromptIsOneEmptyChunk) {
  for (const ClipTokenizer* t : {sd1_, sd2_}) {
    const auto chunks = ChunkPromptIds(*t, "");
    ASSERT_EQ(chunks.size(), 1u);
    EXPECT_EQ(chunks[0], t->EncodePadded("").ids);
    EXPECT_EQ(EmptyChunk(*t), t->EncodePadded("").ids);
  }
}

TEST_F(PromptChunksTest, LongPromptsAreSplitEvery75Tokens) {
  const int64_t fox = Id("fox");
  // 75 tokens: one chunk, nothing dropped; 76: two.
  EXPECT_EQ(ChunkPromptIds(*sd1_, Repeat("fox", 75)).size(), 1u);
  const auto chunks = ChunkPromptIds(*sd1_, Repeat("fox", 100));
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[0], Framed(*sd1_, Ids(75, fox)));
  EXPECT_EQ(chunks[1], Framed(*sd1_, Ids(25, fox)));
  EXPECT_EQ(ChunkPromptIds(*sd1_, Repeat("fox", 151)).size(), 3u);
  // SD 2.x pads with its own pad id ("!" = 0) after each chunk's EOS.
  const auto sd2 = ChunkPromptIds(*sd2_, Repeat("fox", 100));
  ASSERT_EQ(sd2.size(), 2u);
  EXPECT_EQ(sd2[1], Framed(*sd2_, Ids(25, fox)));
  EXPECT_EQ(sd2[1][27], 0);
}

TEST_F(PromptChunksTest, CommaWithinTheLast20TokensMovesTheRestToTheNextChunk) {
  const int64_t fox = Id("fox"), dog = Id("dog"), owl = Id("owl"), comma = Id(",");
  // A comma at position 60 of the first 75 tokens: 75 - 60 = 15 <= 20, so when
  // the 76th token arrives the 14 tokens after the comma move on.
  const std::string prompt = Repeat("fox", 60) + ", " + Repeat("dog", 14) + Repeat("owl", 5);
  const auto chunks = ChunkPromptIds(*sd1_, prompt);
  ASSERT_EQ(chunks.size(), 2u);
  Ids first(60, fox);
  first.push_back(comma);
  EXPECT_EQ(chunks[0], Framed(*sd1_, first));
  Ids second(14, dog);
  second.insert(second.end(), 5, owl);
  EXPECT_EQ(chunks[1], Framed(*sd1_, second));
  // comma_backtrack 0 switches the rule off: a plain cut after 75 tokens.
  const auto plain = ChunkPromptIds(*sd1_, prompt, /*comma_backtrack=*/0);
  ASSERT_EQ(plain.size(), 2u);
  EXPECT_EQ(plain[1], Framed(*sd1_, Ids(5, owl)));
}

TEST_F(PromptChunksTest, CommaBacktrackLimitIsInclusive) {
  const int64_t comma = Id(",");
  // Comma at position 55: 75 - 55 = 20, moved. At 54: 21, a plain cut.
  const auto at55 = ChunkPromptIds(*sd1_, Repeat("fox", 55) + ", " + Repeat("dog", 25));
  ASSERT_EQ(at55.size(), 2u);
  EXPECT_EQ(at55[0][56], comma);             // BOS, 55 foxes, the comma
  EXPECT_EQ(at55[0][57], sd1_->eos_id());    // then the chunk ends
  const auto at54 = ChunkPromptIds(*sd1_, Repeat("fox", 54) + ", " + Repeat("dog", 25));
  ASSERT_EQ(at54.size(), 2u);
  EXPECT_EQ(at54[0][55], comma);
  EXPECT_EQ(at54[0][76], sd1_->eos_id());
  EXPECT_EQ(at54[0][75], Id("dog"));  // full: 75 tokens
}

TEST_F(PromptChunksTest, ACommaArrivingAtAFullChunkStartsTheNextOne) {
  // A1111 only backtracks for a token that is not a comma: the comma itself
  // opens chunk 2 (after a plain cut).
  const auto chunks = ChunkPromptIds(*sd1_, Repeat("fox", 70) + ", " + Repeat("dog", 4) + ", owl");
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[0][75], Id("dog"));
  EXPECT_EQ(chunks[1][1], Id(","));
  EXPECT_EQ(chunks[1][2], Id("owl"));
}

}  // namespace
}  // namespace sdfarm::engine
