// The A1111 "parameters" text: exact output for typical images (as A1111's
// create_infotext writes it), A1111's quoting, parsing of real A1111 output,
// and Format -> Parse round trips.
#include "worker/engine/a1111_parameters.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "tests/engine/golden.h"

namespace sdfarm::engine {
namespace {

GenerationParameters Typical() {
  GenerationParameters p;
  p.prompt = "a photo of a cat";
  p.negative_prompt = "blurry";
  p.steps = 30;
  p.sampler = "Euler a";
  p.schedule_type = "Automatic";
  p.cfg_scale = 7.5;
  p.seed = 42;
  p.width = 512;
  p.height = 512;
  p.model_hash = "1a2b3c4d5e";
  p.model = "sd15";
  p.denoising_strength = 0.6;
  p.clip_skip = 2;
  p.extra = {{"Version", "sdfarm 0.1.0"}};
  return p;
}

TEST(A1111Format, TypicalImage) {
  EXPECT_EQ(FormatA1111Parameters(Typical()),
            "a photo of a cat\n"
            "Negative prompt: blurry\n"
            "Steps: 30, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, Seed: 42, Size: 512x512, "
            "Model hash: 1a2b3c4d5e, Model: sd15, Denoising strength: 0.6, Clip skip: 2, Version: sdfarm 0.1.0");
}

// A1111 v1.9+ writes the schedule apart from the sampler, right after it
// (processing.create_infotext: "Sampler": p.sampler_name, "Schedule type":
// p.scheduler, "CFG scale": ...).
TEST(A1111Format, ScheduleTypeFollowsTheSampler) {
  GenerationParameters p;
  p.prompt = "a castle";
  p.steps = 20;
  p.sampler = "DPM++ 2M";
  p.schedule_type = "Karras";
  p.cfg_scale = 7;
  p.seed = 1;
  p.width = 512;
  p.height = 512;
  EXPECT_EQ(FormatA1111Parameters(p),
            "a castle\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512");
}

TEST(A1111Format, OptionalPartsAreOmitted) {
  GenerationParameters p;
  p.prompt = "a castle";
  p.steps = 20;
  p.sampler = "DPM++ 2M Karras";
  p.cfg_scale = 7;
  p.seed = 965400086;
  p.width = 768;
  p.height = 512;
  // No negative prompt line, no schedule type, no model, no denoising
  // strength, no clip skip;
  // a whole CFG scale prints like A1111's UI does ("7", not "7.0").
  EXPECT_EQ(FormatA1111Parameters(p),
            "a castle\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 965400086, Size: 768x512");
}

TEST(A1111Format, EmptyPromptIsStrippedAwayLikeA1111) {
  GenerationParameters p = Typical();
  p.prompt = "";
  p.negative_prompt = "";
  p.extra.clear();
  EXPECT_EQ(FormatA1111Parameters(p),
            "Steps: 30, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, Seed: 42, Size: 512x512, "
            "Model hash: 1a2b3c4d5e, Model: sd15, Denoising strength: 0.6, Clip skip: 2");
}

TEST(A1111Format, QuotesValuesLikeInfotextUtilsQuote) {
  GenerationParameters p = Typical();
  p.prompt = "x";
  p.negative_prompt = "";
  p.model = "models/sd:v1";
  p.denoising_strength.reset();
  p.clip_skip.reset();
  p.extra = {
      {"Lora hashes", "add_detail: 7c6bad76eb54, film: 1d2e"},
      {"Note", "say \"hi\", then\nleave \\ now\t\x01"},
      {"Tags", "\xe7\x8c\xab, \xe7\x8a\xac"},  // ensure_ascii=False: stays UTF-8
      {"Plain", "no special \"chars\" here"},
  };
  EXPECT_EQ(FormatA1111Parameters(p),
            "x\nSteps: 30, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, Seed: 42, Size: 512x512, "
            "Model hash: 1a2b3c4d5e, Model: \"models/sd:v1\", "
            "Lora hashes: \"add_detail: 7c6bad76eb54, film: 1d2e\", "
            "Note: \"say \\\"hi\\\", then\\nleave \\\\ now\\t\\u0001\", "
            "Tags: \"\xe7\x8c\xab, \xe7\x8a\xac\", "
            "Plain: no special \"chars\" here");
}

TEST(A1111Format, NumbersPrintLikeA1111) {
  EXPECT_EQ(FormatNumber(7.0), "7");
  EXPECT_EQ(FormatNumber(7.5), "7.5");
  EXPECT_EQ(FormatNumber(0.6), "0.6");
  EXPECT_EQ(FormatNumber(0.75), "0.75");
  EXPECT_EQ(FormatNumber(1.0), "1");
  EXPECT_EQ(FormatNumber(0.0), "0");
  EXPECT_EQ(FormatNumber(-0.0), "0");
  EXPECT_EQ(FormatNumber(-2.5), "-2.5");
  EXPECT_EQ(FormatNumber(30.0), "30");
  // Python repr() for the rest (values checked with CPython 3.11).
  EXPECT_EQ(FormatNumber(1.0 / 3), "0.3333333333333333");
  EXPECT_EQ(FormatNumber(2.0 / 3), "0.6666666666666666");
  EXPECT_EQ(FormatNumber(0.1 + 0.2), "0.30000000000000004");
  EXPECT_EQ(FormatNumber(123.456), "123.456");
  EXPECT_EQ(FormatNumber(0.0001), "0.0001");
  EXPECT_EQ(FormatNumber(1e-05), "1e-05");
  EXPECT_EQ(FormatNumber(1.5e-07), "1.5e-07");
  EXPECT_EQ(FormatNumber(1e16), "1e+16");
  EXPECT_EQ(FormatNumber(1.5e16), "1.5e+16");
  EXPECT_EQ(FormatNumber(1e22), "1e+22");
  EXPECT_EQ(FormatNumber(5e-324), "5e-324");
  EXPECT_EQ(FormatNumber(1.7976931348623157e308), "1.7976931348623157e+308");
  EXPECT_EQ(FormatNumber(std::numeric_limits<double>::infinity()), "inf");
  EXPECT_EQ(FormatNumber(-std::numeric_limits<double>::infinity()), "-inf");
  EXPECT_EQ(FormatNumber(std::nan("")), "nan");
}

TEST(A1111Parse, ReadsRealA1111Output) {
  // The example in A1111's parse_generation_parameters docstring.
  ASSERT_OK_AND_ASSIGN(
      GenerationParameters p,
      ParseA1111Parameters(
          "girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, heavy makeup, by "
          "Alphonse Mucha and Charlie Bowater, ((eyeshadow)), (coquettish), detailed, intricate\n"
          "Negative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy, disfigured, poorly "
          "drawn face, mutation, mutated, (extra_limb), (ugly), (poorly drawn hands), messy drawing\n"
          "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b\n"));
  EXPECT_EQ(p.prompt.substr(0, 30), "girl with an artist's beret, d");
  EXPECT_EQ(p.negative_prompt.substr(0, 10), "ugly, fat,");
  EXPECT_EQ(p.steps, 20);
  EXPECT_EQ(p.sampler, "Euler a");
  EXPECT_EQ(p.cfg_scale, 7.0);
  EXPECT_EQ(p.seed, 965400086u);
  EXPECT_EQ(p.width, 512);
  EXPECT_EQ(p.height, 512);
  EXPECT_EQ(p.model_hash, "45dee52b");
  EXPECT_EQ(p.model, "");
  EXPECT_FALSE(p.denoising_strength.has_value());
  EXPECT_FALSE(p.clip_skip.has_value());
  EXPECT_TRUE(p.extra.empty());
}

TEST(A1111Parse, ReadsA1111V18OutputWithExtrasAndCrlf) {
  ASSERT_OK_AND_ASSIGN(
      GenerationParameters p,
      ParseA1111Parameters(
          "1girl, smile,  \r\nneck ribbon, <lora:add_detail:0.5>\r\n"
          "Negative prompt: EasyNegative,\r\n"
          "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.0, Seed: 4265333208, Size: 1024x768, "
          "Model hash: 39d6af08b2, Model: qteamixQ_omegaFp16, Denoising strength: 0.45, Clip skip: 2, ENSD: 31337, "
          "Lora hashes: \"add_detail: 7c6bad76eb54\", Hires upscale: 2, Version: v1.8.0"));
  EXPECT_EQ(p.prompt, "1girl, smile,\nneck ribbon, <lora:add_detail:0.5>");
  EXPECT_EQ(p.negative_prompt, "EasyNegative,");
  EXPECT_EQ(p.sampler, "DPM++ 2M Karras");
  EXPECT_EQ(p.cfg_scale, 7.0);
  EXPECT_EQ(p.seed, 4265333208u);
  EXPECT_EQ(p.width, 1024);
  EXPECT_EQ(p.height, 768);
  EXPECT_EQ(p.model, "qteamixQ_omegaFp16");
  EXPECT_EQ(p.denoising_strength, 0.45);
  EXPECT_EQ(p.clip_skip, 2);
  const std::vector<std::pair<std::string, std::string>> extra = {
      {"ENSD", "31337"}, {"Lora hashes", "add_detail: 7c6bad76eb54"}, {"Hires upscale", "2"}, {"Version", "v1.8.0"}};
  EXPECT_EQ(p.extra, extra);
  EXPECT_EQ(p.schedule_type, "");  // v1.8 wrote none; A1111 reads that as "Automatic"
}

TEST(A1111Parse, ReadsA1111V19OutputWithScheduleType) {
  ASSERT_OK_AND_ASSIGN(
      GenerationParameters p,
      ParseA1111Parameters("a lighthouse\nNegative prompt: blurry\n"
                           "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 12, "
                           "Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1"));
  EXPECT_EQ(p.sampler, "DPM++ 2M");
  EXPECT_EQ(p.schedule_type, "Karras");
  EXPECT_EQ(p.cfg_scale, 6.5);
  const std::vector<std::pair<std::string, std::string>> extra = {{"Version", "v1.10.1"}};
  EXPECT_EQ(p.extra, extra);
}

TEST(A1111Parse, FollowsTheA1111RegexOnOddValues) {
  ASSERT_OK_AND_ASSIGN(
      GenerationParameters p,
      ParseA1111Parameters("p\nSteps: 5, Sampler: x, CFG scale: 3, Size: 8x16, "
                           "Tpl: \"x\" y, A: one-letter keys do not match, Empty: \"\", Bad json: \"\\q\", Esc: \"\\u00e9\\ud83d\\ude00\\/\", "
                           "Seed: 7, junk without colon, Last:"));
  EXPECT_EQ(p.seed, 7u);
  EXPECT_EQ(p.width, 8);
  EXPECT_EQ(p.height, 16);
  // `"x" y` is not a quoted value (the quote does not end it), a one-letter
  // key is no key for A1111's regex (\w[\w \-/]+ needs two), `""` is the
  // unquoted alternative but still JSON-decodes, a bad escape keeps the raw
  // text, and "Last:" at the end is an empty value.
  const std::vector<std::pair<std::string, std::string>> extra = {
      {"Tpl", "\"x\" y"}, {"Empty", ""}, {"Bad json", "\"\\q\""}, {"Esc", "\xc3\xa9\xf0\x9f\x98\x80/"}, {"Last", ""}};
  EXPECT_EQ(p.extra, extra);
}

TEST(A1111Parse, Errors) {
  for (std::string_view text :
       {std::string_view(""), std::string_view("just a prompt"), std::string_view("a\nSteps: 20, Sampler: x"),
        std::string_view("Steps: 20, Sampler: x\nprompt after the parameters")}) {
    EXPECT_EQ(ParseA1111Parameters(text).status().code(), StatusCode::kInvalidArgument) << text;
  }
  for (std::string_view text : {std::string_view("Steps: abc, Sampler: x, CFG scale: 7"),
                                std::string_view("Steps: 1, Sampler: x, CFG scale: seven"),
                                std::string_view("Steps: 1, Sampler: x, Seed: -1"),
                                std::string_view("Steps: 1, Sampler: x, Size: 512"),
                                std::string_view("Steps: 1, Sampler: x, Size: 512xabc"),
                                std::string_view("Steps: 1, Sampler: x, Denoising strength: high"),
                                std::string_view("Steps: 1, Sampler: x, Clip skip: 2.5")}) {
    auto p = ParseA1111Parameters(text);
    EXPECT_EQ(p.status().code(), StatusCode::kInvalidArgument) << text;
    EXPECT_NE(p.status().message().find("is not"), std::string::npos) << p.status().ToString();
  }
}

void ExpectRoundTrip(const GenerationParameters& p) {
  const std::string text = FormatA1111Parameters(p);
  ASSERT_OK_AND_ASSIGN(GenerationParameters back, ParseA1111Parameters(text));
  EXPECT_EQ(back.prompt, p.prompt) << text;
  EXPECT_EQ(back.negative_prompt, p.negative_prompt) << text;
  EXPECT_EQ(back.extra, p.extra) << text;
  EXPECT_TRUE(back == p) << text;
}

TEST(A1111RoundTrip, Typical) { ExpectRoundTrip(Typical()); }

TEST(A1111RoundTrip, MultiLinePromptsAndUnicode) {
  GenerationParameters p = Typical();
  p.prompt = "first line, (masterpiece:1.2)\nsecond line: with a colon\n\nafter a blank line \xe7\x8c\xab\n";
  p.negative_prompt = "bad hands\nblurry, lowres\n\xf0\x9f\x98\x80";
  ExpectRoundTrip(p);
}

TEST(A1111RoundTrip, AwkwardValues) {
  GenerationParameters p = Typical();
  p.sampler = "DPM++ 2M SDE Karras";
  p.schedule_type = " Align: Your, Steps ";
  p.model = "folder/model: v2, final";
  p.model_hash = "\"quoted\"";
  p.cfg_scale = 7;
  p.seed = std::numeric_limits<uint64_t>::max();
  p.width = 1;
  p.height = 16384;
  p.denoising_strength = 1.0;
  p.clip_skip = 1;
  p.extra = {{"Lora hashes", "a: 1, b: 2"},
             {"Multi line", "one\ntwo\r\nthree"},
             {"Backslash", "C:\\models\\x \"y\""},
             {"Spaces", "  padded  "},
             {"Empty", ""},
             {"Lone quote", "\""},
             {"Control", std::string("\x01\x1f\x7f", 3)},
             {"Unicode", "\xc3\xa9t\xc3\xa9, \xe2\x9c\x93"},
             {"Hires upscaler", "4x-UltraSharp"},
             {"Version", "sdfarm 0.1.0"}};
  ExpectRoundTrip(p);
}

TEST(A1111RoundTrip, MinimalAndUnusualNumbers) {
  GenerationParameters p;
  ExpectRoundTrip(p);  // empty everything: still at least 5 pairs
  p.cfg_scale = 1.0 / 3;
  p.denoising_strength = 1e-05;
  p.steps = 1000;
  ExpectRoundTrip(p);
}

TEST(A1111RoundTrip, NegativeOnly) {
  GenerationParameters p = Typical();
  p.prompt = "";
  p.negative_prompt = "only a negative";
  ExpectRoundTrip(p);
}

}  // namespace
}  // namespace sdfarm::engine
