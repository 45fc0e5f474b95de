// ClipTokenizer must give the ids of transformers' slow CLIPTokenizer exactly:
// every prompt of shared/golden/tokenizer_prompts.json is checked against the
// reference ids in tokenizer.safetensors, for both tokenizer flavours (SD1.x,
// pad = eos; SD2.x, pad = "!"), padded and unpadded. The focused tests below
// pin the individual normalisation rules those ids depend on.
#include "worker/engine/clip_tokenizer.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/engine/golden.h"
#include "worker/engine/unicode_data.h"

namespace sdfarm::engine {
namespace {

namespace fs = std::filesystem;
using ::sdfarm::testing::GoldenPath;
using ::sdfarm::testing::LoadGolden;
using ::sdfarm::testing::MakeTempDir;
using ::sdfarm::testing::ModelPath;
using Ids = std::vector<int64_t>;

constexpr int64_t kBos = 49406;
constexpr int64_t kEos = 49407;

std::vector<std::string> LoadPrompts() {
  std::ifstream in(GoldenPath("tokenizer_prompts.json"), std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  nlohmann::json prompts = nlohmann::json::parse(buffer.str(), nullptr, /*allow_exceptions=*/false);
  std::vector<std::string> out;
  if (prompts.is_discarded() || !prompts.is_array()) {
    ADD_FAILURE() << "tokenizer_prompts.json is not a JSON list";
    return out;
  }
  for (const auto& p : prompts) out.push_back(p.get<std::string>());
  return out;
}

Ids Row(const at::Tensor& t, int64_t row, int64_t length) {
  at::Tensor r = t[row].slice(0, 0, length).contiguous().to(at::kLong);
  return Ids(r.data_ptr<int64_t>(), r.data_ptr<int64_t>() + length);
}

std::string Printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02X", c);
      out += buf;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

// A writable copy of tiny-sd's tokenizer folder, to damage in tests.
std::string CopyTokenizerDir() {
  const std::string dir = MakeTempDir();
  for (const auto& entry : fs::directory_iterator(ModelPath("tiny-sd/tokenizer"))) {
    fs::copy_file(entry.path(), fs::path(dir) / entry.path().filename());
  }
  return dir;
}

void WriteFile(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
}

class ClipTokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto v1 = ClipTokenizer::Load(ModelPath("tiny-sd/tokenizer"));
    auto v2 = ClipTokenizer::Load(ModelPath("tiny-sd-v2/tokenizer"));
    if (v1.ok()) v1_ = new ClipTokenizer(std::move(v1).value());
    if (v2.ok()) v2_ = new ClipTokenizer(std::move(v2).value());
    v1_status_ = new Status(v1.ok() ? OkStatus() : v1.status());
    v2_status_ = new Status(v2.ok() ? OkStatus() : v2.status());
  }
  static void TearDownTestSuite() {
    delete v1_;
    delete v2_;
    delete v1_status_;
    delete v2_status_;
    v1_ = v2_ = nullptr;
  }
  void SetUp() override {
    ASSERT_OK(*v1_status_);
    ASSERT_OK(*v2_status_);
  }
  const ClipTokenizer& v1() const { return *v1_; }
  const ClipTokenizer& v2() const { return *v2_; }

  static ClipTokenizer* v1_;
  static ClipTokenizer* v2_;
  static Status* v1_status_;
  static Status* v2_status_;
};
ClipTokenizer* ClipTokenizerTest::v1_ = nullptr;
ClipTokenizer* ClipTokenizerTest::v2_ = nullptr;
Status* ClipTokenizerTest::v1_status_ = nullptr;
Status* ClipTokenizerTest::v2_status_ = nullptr;

TEST_F(ClipTokenizerTest, SpecialIdsAndLengthComeFromTheConfig) {
  EXPECT_EQ(v1().bos_id(), kBos);
  EXPECT_EQ(v1().eos_id(), kEos);
  EXPECT_EQ(v1().pad_id(), kEos);  // SD1.x pads with <|endoftext|>
  EXPECT_EQ(v1().max_length(), 77);
  EXPECT_EQ(v1().vocab_size(), 49408u);
  EXPECT_EQ(v2().bos_id(), kBos);
  EXPECT_EQ(v2().eos_id(), kEos);
  EXPECT_EQ(v2().pad_id(), 0);  // SD2.x pads with "!"
  EXPECT_EQ(v2().max_length(), 77);
}

TEST_F(ClipTokenizerTest, ReadmeSpotCheck) {
  EXPECT_EQ(v1().Encode("a photograph of an astronaut riding a horse"),
            (Ids{49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407}));
}

TEST_F(ClipTokenizerTest, MatchesTransformersOnEveryGoldenPrompt) {
  const std::vector<std::string> prompts = LoadPrompts();
  auto golden = LoadGolden("tokenizer.safetensors");
  ASSERT_EQ(golden.count("input_ids_v1"), 1u);
  ASSERT_EQ(golden.count("input_ids_v2"), 1u);
  ASSERT_EQ(golden.count("untruncated_ids"), 1u);
  ASSERT_EQ(golden.count("untruncated_len"), 1u);
  const at::Tensor& ids_v1 = golden["input_ids_v1"];
  const at::Tensor& ids_v2 = golden["input_ids_v2"];
  const at::Tensor& untruncated = golden["untruncated_ids"];
  const at::Tensor& untruncated_len = golden["untruncated_len"];
  ASSERT_EQ(static_cast<int64_t>(prompts.size()), ids_v1.size(0));
  ASSERT_EQ(ids_v1.size(0), ids_v2.size(0));
  ASSERT_EQ(ids_v1.size(0), untruncated.size(0));
  ASSERT_GE(prompts.size(), 40u);

  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE("prompt " + std::to_string(i) + ": \"" + Printable(prompts[i]) + "\"");
    const int64_t length = untruncated_len[i].item<int64_t>();
    EXPECT_EQ(v1().Encode(prompts[i]), Row(untruncated, i, length));

    const ClipTokenizer::Padded p1 = v1().EncodePadded(prompts[i]);
    EXPECT_EQ(p1.ids, Row(ids_v1, i, 77));
    const ClipTokenizer::Padded p2 = v2().EncodePadded(prompts[i]);
    EXPECT_EQ(p2.ids, Row(ids_v2, i, 77));

    // Tokens beyond bos + 75 + eos are dropped, and counted.
    const int expected_dropped = static_cast<int>(std::max<int64_t>(0, length - 77));
    EXPECT_EQ(p1.dropped_tokens, expected_dropped);
    // No golden untruncated ids for SD2.x ("!" tokenizes differently there).
    EXPECT_EQ(p2.dropped_tokens, std::max<int>(0, static_cast<int>(v2().Encode(prompts[i]).size()) - 77));
  }
}

TEST_F(ClipTokenizerTest, TruncationKeepsFirstTokensAndEndsWithEos) {
  std::string prompt;
  for (int i = 0; i < 100; ++i) prompt += "a ";  // 100 tokens
  const ClipTokenizer::Padded p = v1().EncodePadded(prompt);
  ASSERT_EQ(p.ids.size(), 77u);
  EXPECT_EQ(p.ids.front(), kBos);
  EXPECT_EQ(p.ids[75], 320);
  EXPECT_EQ(p.ids.back(), kEos);
  EXPECT_EQ(p.dropped_tokens, 25);

  const ClipTokenizer::Padded exact = v1().EncodePadded(prompt.substr(0, 75 * 2));  // 75 tokens: fits
  EXPECT_EQ(exact.dropped_tokens, 0);
  EXPECT_EQ(exact.ids.back(), kEos);
  EXPECT_EQ(v1().Encode(prompt).size(), 102u);  // no truncation without padding
}

TEST_F(ClipTokenizerTest, EmptyPromptIsBosEosThenPadding) {
  EXPECT_EQ(v1().Encode(""), (Ids{kBos, kEos}));
  const ClipTokenizer::Padded p = v2().EncodePadded("   \t\n");
  EXPECT_EQ(p.ids[0], kBos);
  EXPECT_EQ(p.ids[1], kEos);
  EXPECT_EQ(p.ids[2], 0);
  EXPECT_EQ(p.dropped_tokens, 0);
}

TEST_F(ClipTokenizerTest, LiteralSpecialTokensAreKeptWhole) {
  // Written in the prompt, they are split out before normalisation.
  EXPECT_EQ(v1().Encode("a<|endoftext|>b"), v1().Encode("a <|endoftext|> b"));
  EXPECT_EQ(v1().Encode("<|startoftext|><|endoftext|>"), (Ids{kBos, kBos, kEos, kEos}));
  // In another case the split misses them, but lower-casing turns them into
  // the pattern's special-token words, which have the same ids.
  EXPECT_EQ(v1().Encode("<|ENDOFTEXT|>"), (Ids{kBos, kEos, kEos}));
  // SD2.x's pad token "!" is a special token too: "!" becomes id 0 there
  // (a plain "!</w>" = 256 with SD1.x), even inside "!!!".
  EXPECT_EQ(v1().Encode("hi!"), (Ids{kBos, 1883, 256, kEos}));
  EXPECT_EQ(v2().Encode("hi!"), (Ids{kBos, 1883, 0, kEos}));
  EXPECT_EQ(v2().Encode("!!"), (Ids{kBos, 0, 0, kEos}));
}

TEST_F(ClipTokenizerTest, CaseAndUnicodeFormsDoNotMatter) {
  EXPECT_EQ(v1().Encode("A HORSE"), v1().Encode("a horse"));
  // NFC: a decomposed é is the precomposed one.
  EXPECT_EQ(v1().Encode("caf\u00e9"), v1().Encode("cafe\u0301"));
  // Full lower-casing: 'İ' lowers to "i" + U+0307, not to "i".
  EXPECT_EQ(v1().Encode("\u0130"), v1().Encode("i\u0307"));
  EXPECT_NE(v1().Encode("\u0130"), v1().Encode("i"));
}

TEST_F(ClipTokenizerTest, WhitespaceAndControlCharactersAreCleaned) {
  const Ids expected = v1().Encode("a red car");
  EXPECT_EQ(v1().Encode("  a\tred\r\n\ncar  "), expected);
  EXPECT_EQ(v1().Encode("a\u00a0red\u3000car"), expected);    // Zs -> space
  EXPECT_EQ(v1().Encode("a r\u200bed car"), expected);         // Cf dropped, not a space
  EXPECT_EQ(v1().Encode(std::string("a r\x07" "e\0d car", 11)), expected);  // Cc and NUL dropped
  EXPECT_EQ(v1().Encode("a r\ufffded car"), expected);         // U+FFFD dropped
  // Spaces are put around CJK ideographs (not kana).
  EXPECT_EQ(v1().Encode("a\u732bb"), v1().Encode("a \u732b b"));
}

TEST_F(ClipTokenizerTest, HtmlEntitiesAreNotUnescaped) {
  EXPECT_NE(v1().Encode("&amp;"), v1().Encode("&"));
}

TEST_F(ClipTokenizerTest, InvalidUtf8IsDroppedWithoutCrashing) {
  const Ids expected = v1().Encode("a red car");
  EXPECT_EQ(v1().Encode("a r\xff" "ed car"), expected);
  EXPECT_EQ(v1().Encode("a red\xe2\x82 car"), expected);          // truncated sequence
  EXPECT_EQ(v1().Encode("a red\xed\xa0\x80 car"), expected);      // encoded surrogate
  EXPECT_EQ(v1().Encode("a red\xc0\xaf car"), expected);          // overlong
  EXPECT_EQ(v1().Encode("\xe2\x82" "a red car"), expected);       // a truncated sequence does not eat 'a'
  // Arbitrary bytes never crash and always give bos ... eos.
  uint32_t state = 12345;
  for (int n = 0; n < 300; ++n) {
    std::string bytes;
    for (int k = 0; k < n % 40; ++k) {
      state = state * 1664525u + 1013904223u;
      bytes.push_back(static_cast<char>(state >> 24));
    }
    const Ids ids = v1().Encode(bytes);
    ASSERT_GE(ids.size(), 2u);
    EXPECT_EQ(ids.front(), kBos);
    EXPECT_EQ(ids.back(), kEos);
    EXPECT_EQ(v1().EncodePadded(bytes).ids.size(), 77u);
  }
}

TEST_F(ClipTokenizerTest, ConcurrentEncodesAgree) {
  const std::vector<std::string> prompts = {"a photograph of an astronaut riding a horse",
                                            "supercalifragilisticexpialidocious", "日本語のテキスト",
                                            "photo of a cat, 8k, uhd, dslr"};
  std::vector<Ids> expected;
  for (const auto& p : prompts) expected.push_back(v2().Encode(p));
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int k = 0; k < 200; ++k) {
        const size_t i = (k + t) % prompts.size();
        if (v2().Encode(prompts[i]) != expected[i]) ++mismatches[t];
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int m : mismatches) EXPECT_EQ(m, 0);
}

TEST(ClipTokenizerLoadTest, MissingFolderIsNotFound) {
  auto tok = ClipTokenizer::Load("/nonexistent/tokenizer");
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), StatusCode::kNotFound);
  EXPECT_NE(tok.status().message().find("vocab.json"), std::string::npos) << tok.status().ToString();
}

TEST(ClipTokenizerLoadTest, MissingMergesIsNotFound) {
  const std::string dir = CopyTokenizerDir();
  fs::remove(fs::path(dir) / "merges.txt");
  auto tok = ClipTokenizer::Load(dir);
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), StatusCode::kNotFound);
  EXPECT_NE(tok.status().message().find("merges.txt"), std::string::npos) << tok.status().ToString();
}

TEST(ClipTokenizerLoadTest, CorruptVocabIsDataLoss) {
  const std::string dir = CopyTokenizerDir();
  const std::string vocab = (fs::path(dir) / "vocab.json").string();
  for (const std::string& content : {std::string("{\"a\": 1, \"b\": "), std::string("[1, 2]"),
                                     std::string("{\"a\": \"x\"}"), std::string("{\"a\": 1}")}) {
    SCOPED_TRACE(content);
    WriteFile(vocab, content);
    auto tok = ClipTokenizer::Load(dir);
    ASSERT_FALSE(tok.ok());
    EXPECT_EQ(tok.status().code(), StatusCode::kDataLoss);
    EXPECT_NE(tok.status().message().find("vocab.json"), std::string::npos) << tok.status().ToString();
  }
}

TEST(ClipTokenizerLoadTest, CorruptMergesOrConfigIsDataLoss) {
  const std::string dir = CopyTokenizerDir();
  WriteFile((fs::path(dir) / "merges.txt").string(), "#version: 0.2\ni n\nnot_a_symbol zzz\n");
  auto tok = ClipTokenizer::Load(dir);
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(tok.status().message().find("merges.txt"), std::string::npos) << tok.status().ToString();

  const std::string good = CopyTokenizerDir();
  WriteFile((fs::path(good) / "tokenizer_config.json").string(), "{\"model_max_length\": \"77\"}");
  tok = ClipTokenizer::Load(good);
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(tok.status().message().find("tokenizer_config.json"), std::string::npos) << tok.status().ToString();
}

// The Unicode building blocks, against values Python 3.11 gives.
TEST(ClipTokenizerUnicodeTest, LowerCaseIsPythonStrLower) {
  using unicode::ToLowerFull;
  EXPECT_EQ(ToLowerFull(U"ABC xyz \u00C9\u00DF"), U"abc xyz \u00E9\u00DF");
  EXPECT_EQ(ToLowerFull(U"\u0130"), U"i\u0307");                 // 'İ'.lower() == 'i̇'
  EXPECT_EQ(ToLowerFull(U"\u041C\u041E\u0421\u041A\u0412\u0410"), U"\u043C\u043E\u0441\u043A\u0432\u0430");
  EXPECT_EQ(ToLowerFull(U"\u1E9E"), U"\u00DF");                  // capital sharp s
  EXPECT_EQ(ToLowerFull(U"\u212A"), U"k");                       // Kelvin sign
  EXPECT_EQ(ToLowerFull(U"\u2160"), U"\u2170");                  // Roman numeral one
  EXPECT_EQ(ToLowerFull(U"\U00010400"), U"\U00010428");          // Deseret
  // Final sigma: 'ΟΔΟΣ'.lower() == 'οδος', 'Σ'.lower() == 'σ', 'ΣΑ' -> 'σα'.
  EXPECT_EQ(ToLowerFull(U"\u039F\u0394\u039F\u03A3"), U"\u03BF\u03B4\u03BF\u03C2");
  EXPECT_EQ(ToLowerFull(U"\u03A3"), U"\u03C3");
  EXPECT_EQ(ToLowerFull(U"\u03A3\u0391"), U"\u03C3\u03B1");
  EXPECT_EQ(ToLowerFull(U"\u0391\u03A3'"), U"\u03B1\u03C2'");    // ' is case-ignorable
  EXPECT_EQ(ToLowerFull(U"\u0391\u03A3'\u0391"), U"\u03B1\u03C3'\u03B1");
}

TEST(ClipTokenizerUnicodeTest, NfcComposesAndReorders) {
  using unicode::NormalizeNfc;
  EXPECT_EQ(NormalizeNfc(U"e\u0301"), U"\u00E9");
  EXPECT_EQ(NormalizeNfc(U"\u00E9"), U"\u00E9");
  // Canonical ordering: dot below (220) before dot above (230), then compose.
  EXPECT_EQ(NormalizeNfc(U"s\u0307\u0323"), U"\u1E69");
  EXPECT_EQ(NormalizeNfc(U"q\u0307\u0323"), U"q\u0323\u0307");
  // Hangul jamo compose to syllables: U+1100 U+1161 U+11A8 -> U+AC01.
  EXPECT_EQ(NormalizeNfc(U"\u1100\u1161\u11A8"), U"\uAC01");
  // Singletons and composition exclusions: U+212B ANGSTROM -> U+00C5,
  // U+0958 stays decomposed.
  EXPECT_EQ(NormalizeNfc(U"\u212B"), U"\u00C5");
  EXPECT_EQ(NormalizeNfc(U"\u0958"), U"\u0915\u093C");
  // Compatibility characters are left alone (NFC, not NFKC).
  EXPECT_EQ(NormalizeNfc(U"\uFB01\uFF46"), U"\uFB01\uFF46");
  // A mark of the same class in between blocks composition; a lower one
  // does not (and is reordered after the composite).
  EXPECT_EQ(NormalizeNfc(U"a\u0305\u0301"), U"a\u0305\u0301");
  EXPECT_EQ(NormalizeNfc(U"a\u0301\u0316"), U"\u00E1\u0316");
  EXPECT_EQ(NormalizeNfc(U"a\u030A\u0301"), U"\u01FB");  // chained: å, then ǻ
}

TEST(ClipTokenizerUnicodeTest, CategoriesAndSpaces) {
  EXPECT_TRUE(unicode::IsLetter(U'a'));
  EXPECT_TRUE(unicode::IsLetter(U'\u65E5'));
  EXPECT_FALSE(unicode::IsLetter(U'1'));
  EXPECT_TRUE(unicode::IsNumber(U'\u00BD'));
  EXPECT_TRUE(unicode::IsOther(U'\u200D'));      // ZWJ is Cf
  EXPECT_TRUE(unicode::IsOther(U'\U000E0001'));  // language tag, Cf
  EXPECT_TRUE(unicode::IsOther(U'\U0003FFFD'));  // unassigned
  EXPECT_TRUE(unicode::IsOther(0x110000));
  EXPECT_TRUE(unicode::IsSpaceSeparator(U'\u3000'));
  EXPECT_TRUE(unicode::IsPunctuation(U'\u2014'));
  EXPECT_TRUE(unicode::IsPythonSpace(U'\u2028'));
  EXPECT_TRUE(unicode::IsPythonSpace(U'\x1c'));
  EXPECT_FALSE(unicode::IsPythonSpace(U'\u200B'));
  EXPECT_FALSE(unicode::IsWhiteSpace(U'\x1c'));
  EXPECT_EQ(unicode::CombiningClass(U'\u0301'), 230);
  EXPECT_EQ(unicode::CombiningClass(U'a'), 0);
}

TEST(ClipTokenizerUnicodeTest, Utf8DecodeIsPythonReplace) {
  using unicode::DecodeUtf8;
  EXPECT_EQ(DecodeUtf8("a\xc3\xa9\xe6\x97\xa5\xf0\x9f\x98\x80"), U"a\u00E9\u65E5\U0001F600");
  // b"\xe2\x82A".decode("utf-8", "replace") == "\ufffdA": the truncated
  // sequence is one error and 'A' survives.
  EXPECT_EQ(DecodeUtf8("\xe2\x82" "A"), U"\uFFFDA");
  EXPECT_EQ(DecodeUtf8("\xed\xa0\x80"), U"\uFFFD\uFFFD\uFFFD");   // surrogate
  EXPECT_EQ(DecodeUtf8("\xc0\xaf"), U"\uFFFD\uFFFD");             // overlong
  EXPECT_EQ(DecodeUtf8("\xf4\x90\x80\x80"), U"\uFFFD\uFFFD\uFFFD\uFFFD");  // > U+10FFFF
  EXPECT_EQ(DecodeUtf8("\xf0\x9f\x98"), U"\uFFFD");
  EXPECT_EQ(DecodeUtf8("\x80\xff"), U"\uFFFD\uFFFD");
  EXPECT_EQ(unicode::EncodeUtf8(U"a\u00E9\U0001F600"), "a\xc3\xa9\xf0\x9f\x98\x80");
}

}  // namespace
}  // namespace sdfarm::engine
