#include "coordinator/sweep_spec.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <set>
#include <string>

namespace sdfarm::coordinator {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Json = nlohmann::json;

const SweepLimits kLimits;

// A temp folder per test, removed afterwards.
class SweepSpecFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("sweep_spec_test_" + std::to_string(::getpid()) + "_" +
                                                     ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Write(const std::string& name, const std::string& text) {
    const auto path = dir_ / name;
    std::filesystem::create_directories(path.parent_path());
    std::ofstream(path, std::ios::binary) << text;
    return path.string();
  }
  std::filesystem::path dir_;
};

Json Minimal() { return Json{{"name", "fox"}, {"model", "sd15"}, {"prompt", "a fox"}, {"seed", 1}}; }

SweepSpec ValidSpec() {
  SweepSpec spec;
  spec.name = "fox";
  spec.model = "sd15";
  spec.prompts = {"a fox"};
  spec.seeds = {1};
  return spec;
}

// The error message of parsing `json`, which must fail with InvalidArgument.
std::string JsonError(const Json& json, const SweepLimits& limits = kLimits) {
  const auto spec = SweepSpec::FromJson(json, limits, 0);
  EXPECT_FALSE(spec.ok()) << json.dump();
  if (spec.ok()) return "";
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument) << spec.status();
  return std::string(spec.status().message());
}

std::string ValidateError(const SweepSpec& spec, const SweepLimits& limits = kLimits) {
  const absl::Status s = Validate(spec, limits);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  return std::string(s.message());
}

TEST(SweepSpecJsonTest, MinimalSpecGetsDefaults) {
  const auto spec = SweepSpec::FromJson(Minimal(), kLimits, 0);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->name, "fox");
  EXPECT_EQ(spec->model, "sd15");
  EXPECT_THAT(spec->prompts, ElementsAre("a fox"));
  EXPECT_THAT(spec->negative_prompts, ElementsAre(""));
  EXPECT_THAT(spec->seeds, ElementsAre(1u));
  EXPECT_THAT(spec->guidance_scales, ElementsAre(7.5));
  EXPECT_THAT(spec->steps, ElementsAre(30));
  EXPECT_THAT(spec->samplers, ElementsAre("euler_a"));
  EXPECT_THAT(spec->sizes, ElementsAre(Size{512, 512}));
  EXPECT_EQ(spec->images_per_combination, 1);
  EXPECT_EQ(spec->combine, SweepSpec::Combine::kProduct);
  EXPECT_EQ(spec->priority, 1);
}

TEST(SweepSpecJsonTest, EveryPluralFieldAsList) {
  const Json json = Json::parse(R"({
    "name": "study-1", "model": "sd15",
    "prompts": ["a fox", "a cat"], "negative_prompts": ["blurry", ""],
    "seeds": [3, "10-12", "0x"],
    "guidance_scales": [5, 7.5], "steps": [20, 30], "samplers": ["ddim", "dpmpp_2m"],
    "sizes": ["512x768", 640, {"width": 768, "height": 512}],
    "images_per_combination": 2, "combine": "product", "priority": 7})");
  // "0x" is not a seed: the whole spec is rejected, naming the field and value.
  EXPECT_THAT(JsonError(json), HasSubstr("seeds: bad seed \"0x\""));

  Json good = json;
  good["seeds"] = Json::array({3, "10-12", 18446744073709551614ull});
  const auto spec = SweepSpec::FromJson(good, kLimits, 0);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_THAT(spec->prompts, ElementsAre("a fox", "a cat"));
  EXPECT_THAT(spec->negative_prompts, ElementsAre("blurry", ""));
  EXPECT_THAT(spec->seeds, ElementsAre(3u, 10u, 11u, 12u, 18446744073709551614ull));
  EXPECT_THAT(spec->guidance_scales, ElementsAre(5.0, 7.5));
  EXPECT_THAT(spec->steps, ElementsAre(20, 30));
  EXPECT_THAT(spec->samplers, ElementsAre("ddim", "dpmpp_2m"));
  EXPECT_THAT(spec->sizes, ElementsAre(Size{512, 768}, Size{640, 640}, Size{768, 512}));
  EXPECT_EQ(spec->images_per_combination, 2);
  EXPECT_EQ(spec->priority, 7);
}

TEST(SweepSpecJsonTest, SingularScalarForms) {
  Json json = Minimal();
  json["negative_prompt"] = "ugly";
  json["seed"] = "5-6";
  json["guidance_scale"] = 9;
  json["steps"] = 12;
  json["sampler"] = "lms";
  json["size"] = "768X512";
  json["combine"] = "zip";
  const auto spec = SweepSpec::FromJson(json, kLimits, 0);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_THAT(spec->negative_prompts, ElementsAre("ugly"));
  EXPECT_THAT(spec->seeds, ElementsAre(5u, 6u));
  EXPECT_THAT(spec->guidance_scales, ElementsAre(9.0));
  EXPECT_THAT(spec->steps, ElementsAre(12));
  EXPECT_THAT(spec->samplers, ElementsAre("lms"));
  EXPECT_THAT(spec->sizes, ElementsAre(Size{768, 512}));
  EXPECT_EQ(spec->combine, SweepSpec::Combine::kZip);
}

TEST(SweepSpecJsonTest, WidthAndHeight) {
  Json json = Minimal();
  json["width"] = 640;
  json["height"] = 384;
  const auto spec = SweepSpec::FromJson(json, kLimits, 0);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_THAT(spec->sizes, ElementsAre(Size{640, 384}));

  Json only_width = Minimal();
  only_width["width"] = 640;
  EXPECT_THAT(JsonError(only_width), HasSubstr("height: is required when width is given"));
  json["size"] = "512x512";
  EXPECT_THAT(JsonError(json), HasSubstr("not both"));
}

TEST(SweepSpecJsonTest, FieldErrorsNameFieldAndValue) {
  struct Case {
    const char* field;
    Json value;
    const char* message;
  };
  const Case cases[] = {
      {"promts", "x", "promts: unknown field (did you mean \"prompts\"?)"},
      {"colour", "red", "colour: unknown field"},
      {"prompts", Json::array({"a", 3}), "prompts: expected a string (quote it in YAML), got 3"},
      {"prompts", Json::array(), "prompts: is an empty list"},
      {"steps", "thirty", "steps: expected an integer, got \"thirty\""},
      {"steps", 30.5, "steps: expected an integer, got 30.5"},
      {"steps", 5000000000ll, "steps: value 5000000000 is out of range"},
      {"guidance_scales", Json::array({7, "high"}), "guidance_scales: expected a number, got \"high\""},
      {"sizes", "512*512", "sizes: bad size \"512*512\" (expected WIDTHxHEIGHT"},
      {"sizes", "512x", "sizes: bad size \"512x\""},
      {"sizes", Json{{"width", 512}}, "sizes: a size object takes exactly width and height"},
      {"sizes", true, "sizes: expected a size like \"512x768\", got true"},
      {"combine", "cross", "combine: expected \"product\" or \"zip\", got \"cross\""},
      {"priority", "high", "priority: expected an integer, got \"high\""},
      {"name", 5, "name: expected a string, got 5"},
      {"prompts_file", "p.txt", "prompts_file: files are only read when parsing a spec file"},
  };
  for (const Case& c : cases) {
    Json json = Minimal();
    if (std::string(c.field) == "prompts") json.erase("prompt");
    json[c.field] = c.value;
    EXPECT_THAT(JsonError(json), HasSubstr(c.message)) << c.field;
  }
}

TEST(SweepSpecJsonTest, SingularAndPluralTogetherIsAnError) {
  Json json = Minimal();
  json["prompts"] = {"b"};
  EXPECT_THAT(JsonError(json), HasSubstr("prompts: give \"prompt\" or \"prompts\", not both"));
}

TEST(SweepSpecJsonTest, RequiredFields) {
  for (const char* field : {"name", "model", "prompt", "seed"}) {
    Json json = Minimal();
    json.erase(field);
    EXPECT_THAT(JsonError(json), HasSubstr("is required")) << field;
  }
  EXPECT_THAT(JsonError(Json::array({1})), HasSubstr("must be a mapping"));
  EXPECT_THAT(JsonError(Json(nullptr)), HasSubstr("must be a mapping"));
}

TEST(SweepSpecJsonTest, SeedFieldForms) {
  Json json = Minimal();
  json["seed"] = -1;
  EXPECT_THAT(JsonError(json), HasSubstr("seed: expected a seed (0 to 2^64-1)"));
  json["seed"] = 1.5;
  EXPECT_THAT(JsonError(json), HasSubstr("got 1.5"));
  json["seed"] = "9-3";
  EXPECT_THAT(JsonError(json), HasSubstr("seed: seed range \"9-3\" runs backwards"));
  json["seed"] = Json::array({"random:3", "random:3"});
  const auto spec = SweepSpec::FromJson(json, kLimits, 77);
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_EQ(spec->seeds.size(), 6u);
  // Two random entries draw from one generator: different seeds.
  EXPECT_NE(std::vector<uint64_t>(spec->seeds.begin(), spec->seeds.begin() + 3),
            std::vector<uint64_t>(spec->seeds.begin() + 3, spec->seeds.end()));
}

TEST(SweepSpecJsonTest, RoundTripsThroughToJson) {
  const Json json = Json::parse(R"({
    "name": "rt", "model": "m", "prompts": ["a \"quoted\" fox", "ünïcödé 狐"], "negative_prompt": "x",
    "seeds": "random:2", "guidance_scales": [0, 7.25], "steps": [1, 1000], "samplers": ["ddpm"],
    "sizes": ["64x2048"], "images_per_combination": 3, "combine": "zip", "priority": 100})");
  const auto spec = SweepSpec::FromJson(json, kLimits, 5);
  ASSERT_TRUE(spec.ok()) << spec.status();
  const Json wire = spec->ToJson();
  EXPECT_EQ(wire["sizes"], Json::array({"64x2048"}));
  EXPECT_EQ(wire["combine"], "zip");
  // Through text too, as it travels; a different random_seed must not matter
  // because the seeds are concrete now.
  const auto back = SweepSpec::FromJson(Json::parse(wire.dump()), kLimits, 999);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, *spec);
}

TEST(SweepSpecSeedsTest, ListsAndRanges) {
  auto seeds = ParseSeeds("0-3, 42 ,7 - 8", 0, 100);
  ASSERT_TRUE(seeds.ok()) << seeds.status();
  EXPECT_THAT(*seeds, ElementsAre(0u, 1u, 2u, 3u, 42u, 7u, 8u));
  seeds = ParseSeeds("18446744073709551615", 0, 100);
  ASSERT_TRUE(seeds.ok());
  EXPECT_THAT(*seeds, ElementsAre(std::numeric_limits<uint64_t>::max()));
  seeds = ParseSeeds("18446744073709551614-18446744073709551615", 0, 100);
  ASSERT_TRUE(seeds.ok()) << seeds.status();
  EXPECT_EQ(seeds->size(), 2u);
  seeds = ParseSeeds("0-999", 0, 1000);
  ASSERT_TRUE(seeds.ok());
  EXPECT_EQ(seeds->size(), 1000u);
  EXPECT_EQ(seeds->back(), 999u);
}

TEST(SweepSpecSeedsTest, RandomIsReproducibleDistinctAndBelow2To32) {
  const auto a = ParseSeeds("random:1000", 1234, 100000);
  const auto b = ParseSeeds("random:1000", 1234, 100000);
  const auto c = ParseSeeds("random:1000", 1235, 100000);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_NE(*a, *c);
  ASSERT_EQ(a->size(), 1000u);
  EXPECT_EQ(std::set<uint64_t>(a->begin(), a->end()).size(), 1000u);
  for (uint64_t s : *a) EXPECT_LT(s, uint64_t{1} << 32);
  const auto mixed = ParseSeeds("5,random:2", 1, 10);
  ASSERT_TRUE(mixed.ok());
  ASSERT_EQ(mixed->size(), 3u);
  EXPECT_EQ((*mixed)[0], 5u);
}

TEST(SweepSpecSeedsTest, BadSyntaxIsRejectedWithTheEntry) {
  struct Case {
    const char* text;
    const char* message;
  };
  const Case cases[] = {
      {"", "empty seed list"},
      {"1,,2", "empty entry in seed list \"1,,2\""},
      {"abc", "bad seed \"abc\""},
      {"-5", "bad seed \"-5\""},
      {"1.5", "bad seed \"1.5\""},
      {"18446744073709551616", "bad seed \"18446744073709551616\""},
      {"3-1", "seed range \"3-1\" runs backwards"},
      {"1-", "bad seed range \"1-\""},
      {"a-b", "bad seed range \"a-b\""},
      {"1-2-3", "bad seed range \"1-2-3\""},
      {"random:0", "bad seed entry \"random:0\""},
      {"random:x", "bad seed entry \"random:x\""},
      {"random:", "bad seed entry \"random:\""},
      {"0-1000", "has more than 1000 seeds"},
      {"0-18446744073709551615", "has more than 1000 seeds"},
      {"random:1001", "has more than 1000 seeds"},
      {"0-999,5", "has more than 1000 seeds"},
  };
  for (const Case& c : cases) {
    const auto seeds = ParseSeeds(c.text, 0, 1000);
    ASSERT_FALSE(seeds.ok()) << c.text;
    EXPECT_EQ(seeds.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(seeds.status().message()), HasSubstr(c.message)) << c.text;
  }
}

TEST(SweepSpecValidateTest, AcceptsAValidSpec) { EXPECT_TRUE(Validate(ValidSpec(), kLimits).ok()); }

TEST(SweepSpecValidateTest, NamesCannotLeaveTheOutputFolder) {
  struct Case {
    std::string name;
    const char* message;
  };
  const Case cases[] = {
      {"../x", "name: \"../x\" must be a plain name, without '/' or '\\'"},
      {"/abs", "name: \"/abs\" must be a plain name"},
      {"a/b", "name: \"a/b\" must be a plain name"},
      {"a\\b", "name: \"a\\\\b\" must be a plain name"},
      {std::string("x\0y", 3), "name: \"x\\x00y\" contains a NUL byte"},
      {"..", "name: \"..\" is not allowed (the name must stay inside the output folder)"},
      {".", "name: \".\" is not allowed"},
      {".hidden", "name: \".hidden\" must not start with '.'"},
      {"", "name: is empty"},
      {std::string(101, 'a'), "is longer than 100 characters"},
      {"a b", "name: \"a b\" may only hold letters, digits, '.', '_' and '-'"},
      {"C:x", "may only hold letters"},
  };
  for (const Case& c : cases) {
    SweepSpec spec = ValidSpec();
    spec.name = c.name;
    EXPECT_THAT(ValidateError(spec), HasSubstr(c.message)) << c.name;
  }
  SweepSpec spec = ValidSpec();
  spec.name = std::string(100, 'a');
  EXPECT_TRUE(Validate(spec, kLimits).ok());
  spec.name = "Fox_study-2.v1";
  EXPECT_TRUE(Validate(spec, kLimits).ok());
  spec.model = "../../etc";
  EXPECT_THAT(ValidateError(spec), HasSubstr("model: \"../../etc\" must be a plain name"));
}

TEST(SweepSpecValidateTest, RangeErrorsNameFieldAndValue) {
  struct Case {
    std::function<void(SweepSpec&)> edit;
    const char* message;
  };
  const Case cases[] = {
      {[](SweepSpec& s) {
         s.prompts = {"ok", "  "};
       },
       "prompts[1]: prompt \"  \" is empty"},
      {[](SweepSpec& s) { s.prompts = {}; }, "prompts: needs at least one entry"},
      {[](SweepSpec& s) { s.prompts = {std::string(4001, 'a')}; }, "prompts[0]: \"aaaa"},
      {[](SweepSpec& s) { s.prompts = {std::string(4001, 'a')}; }, "has 4001 characters (limit 4000)"},
      {[](SweepSpec& s) { s.prompts = {"bad \xff utf8"}; }, "prompts[0]: \"bad \\xff utf8\" is not valid UTF-8"},
      {[](SweepSpec& s) { s.negative_prompts = {std::string("a\0b", 3)}; },
       "negative_prompts[0]: \"a\\x00\\x62\" contains a NUL"},
      {[](SweepSpec& s) { s.seeds = {}; }, "seeds: needs at least one entry"},
      {[](SweepSpec& s) {
         s.guidance_scales = {7, -1};
       },
       "guidance_scales[1]: -1 is out of range [0, 100]"},
      {[](SweepSpec& s) { s.guidance_scales = {100.5}; }, "guidance_scales[0]: 100.5 is out of range"},
      {[](SweepSpec& s) { s.guidance_scales = {std::nan("")}; }, "guidance_scales[0]: nan is out of range"},
      {[](SweepSpec& s) { s.steps = {0}; }, "steps[0]: 0 is out of range [1, 1000]"},
      {[](SweepSpec& s) {
         s.steps = {30, 1001};
       },
       "steps[1]: 1001 is out of range [1, 1000]"},
      {[](SweepSpec& s) {
         s.samplers = {"euler", "k_euler"};
       },
       "samplers[1]: unknown sampler \"k_euler\" (valid: pndm"},
      {[](SweepSpec& s) {
         s.sizes = {{512, 500}};
       },
       "sizes[0]: 512x500 is not allowed: each side must be a multiple of 8 in [64, 2048]"},
      {[](SweepSpec& s) {
         s.sizes = {{512, 512}, {56, 512}};
       },
       "sizes[1]: 56x512 is not allowed"},
      {[](SweepSpec& s) {
         s.sizes = {{2056, 512}};
       },
       "sizes[0]: 2056x512 is not allowed"},
      {[](SweepSpec& s) { s.priority = 0; }, "priority: 0 is out of range [1, 100]"},
      {[](SweepSpec& s) { s.priority = 101; }, "priority: 101 is out of range [1, 100]"},
      {[](SweepSpec& s) { s.images_per_combination = 0; }, "images_per_combination: 0 is out of range"},
      {[](SweepSpec& s) {
         s.seeds = {std::numeric_limits<uint64_t>::max()};
         s.images_per_combination = 2;
       },
       "seeds: seed 18446744073709551615 + images_per_combination 2 runs past 2^64-1"},
      {[](SweepSpec& s) {
         s.combine = SweepSpec::Combine::kZip;
         s.prompts = {"a", "b", "c"};
         s.seeds = {1, 2};
       },
       "seeds: combine: zip needs lists of equal length (or 1), but seeds has 2 entries and prompts has 3"},
  };
  for (const Case& c : cases) {
    SweepSpec spec = ValidSpec();
    c.edit(spec);
    EXPECT_THAT(ValidateError(spec), HasSubstr(c.message)) << c.message;
  }
}

TEST(SweepSpecValidateTest, ImageCountLimitAndZipVsProductCounts) {
  SweepSpec spec = ValidSpec();
  spec.prompts = {"a", "b", "c"};
  spec.seeds = {1, 2, 3};
  spec.guidance_scales = {5, 7, 9};
  spec.images_per_combination = 2;
  EXPECT_EQ(CountImages(spec), 3 * 3 * 3 * 2);
  spec.combine = SweepSpec::Combine::kZip;
  EXPECT_TRUE(Validate(spec, kLimits).ok());  // steps, sizes ... have length 1: broadcast
  EXPECT_EQ(CountImages(spec), 3 * 2);

  spec.combine = SweepSpec::Combine::kProduct;
  SweepLimits limits;
  limits.max_images = 53;
  EXPECT_THAT(ValidateError(spec, limits), HasSubstr("sweep: 54 images is over the limit of 53"));
  limits.max_images = 54;
  EXPECT_TRUE(Validate(spec, limits).ok());

  // Products far beyond int64 saturate instead of wrapping around to a small number.
  SweepSpec huge = ValidSpec();
  huge.seeds.assign(100000, 1);
  huge.guidance_scales.assign(100000, 7);
  huge.prompts.assign(100000, "p");
  huge.negative_prompts.assign(100000, "");
  EXPECT_EQ(CountImages(huge), std::numeric_limits<int64_t>::max());
  EXPECT_THAT(ValidateError(huge), HasSubstr("more than 2^63 images is over the limit"));
  huge.steps.assign(100001, 30);
  EXPECT_THAT(ValidateError(huge), HasSubstr("steps: has 100001 entries (limit 100000)"));
}

TEST_F(SweepSpecFileTest, YamlWithEveryFieldForm) {
  Write("prompts/more.txt", "a wolf\r\n\n   \n  a bear in the woods  \n");
  const std::string path = Write("specs/fox.yaml", R"(# a sweep
name: fox-study
model: sd15
prompts:
  - a red fox in the snow
  - "1984"
prompts_file: ../prompts/more.txt
negative_prompt: blurry
seeds: ["0-2", 42, "random:2"]
guidance_scales: [5, 7.5]
steps: 25
samplers: [euler_a, dpmpp_2m_karras]
sizes: [512x768, 640, {width: 768, height: 512}]
images_per_combination: 2
combine: product
priority: 3
)");
  const auto spec = ParseSweepFile(path, kLimits, 9);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_THAT(spec->prompts, ElementsAre("a red fox in the snow", "1984", "a wolf", "a bear in the woods"));
  EXPECT_THAT(spec->negative_prompts, ElementsAre("blurry"));
  ASSERT_EQ(spec->seeds.size(), 6u);
  EXPECT_THAT(std::vector<uint64_t>(spec->seeds.begin(), spec->seeds.begin() + 4), ElementsAre(0u, 1u, 2u, 42u));
  EXPECT_THAT(spec->guidance_scales, ElementsAre(5.0, 7.5));
  EXPECT_THAT(spec->steps, ElementsAre(25));
  EXPECT_THAT(spec->samplers, ElementsAre("euler_a", "dpmpp_2m_karras"));
  EXPECT_THAT(spec->sizes, ElementsAre(Size{512, 768}, Size{640, 640}, Size{768, 512}));
  EXPECT_EQ(spec->images_per_combination, 2);
  EXPECT_EQ(spec->priority, 3);

  // The same text through JSON, with the same random_seed, gives the same seeds.
  const auto again = ParseSweepFile(path, kLimits, 9);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->seeds, spec->seeds);
}

// The example documented in sweep_spec.h, verbatim.
TEST_F(SweepSpecFileTest, HeaderExampleParses) {
  Write("more.txt", "a fox cub\n");
  const std::string path = Write("example.yaml", R"(
name: fox-study                # required; output folder: [A-Za-z0-9._-], 1..100 chars, no leading '.'
model: sd15                    # required; model name as workers register it (same charset)
prompts:                       # required (prompt / prompts / prompts_file)
  - a red fox in the snow
  - an oil painting of a fox
prompts_file: more.txt         # one prompt per line, blank lines skipped; path relative to the spec
                               # file's folder; appended after `prompts`. File only, see below.
negative_prompt: blurry        # default ""; negative_prompts_file works like prompts_file
seeds: "0-99,1000"             # required; int, "a-b" ranges, "random:N", or a list of those
guidance_scales: [5, 7.5]      # default 7.5; each in [0, 100]
steps: 30                      # default 30; each in [1, max_steps]
samplers: [euler_a, dpmpp_2m]  # default euler_a; pndm ddim euler euler_a lms dpmpp_2m dpmpp_2m_karras ddpm
sizes: [512x512, 768x512]      # default 512x512; "WxH", or N for NxN, or {width: W, height: H};
                               # `width: W` + `height: H` is a single size. Sides: multiples of 8 in [64, max_side]
images_per_combination: 2      # default 1: seed s renders seeds s, s+1, ..., s+N-1
combine: product               # product (default) or zip: lists advance together, length-1 lists broadcast
priority: 1                    # 1..100, weight for the fair share between sweeps
)");
  const auto spec = ParseSweepFile(path, kLimits, 0);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_THAT(spec->prompts, ElementsAre("a red fox in the snow", "an oil painting of a fox", "a fox cub"));
  EXPECT_EQ(spec->seeds.size(), 101u);
  EXPECT_EQ(CountImages(*spec), 3 * 101 * 2 * 2 * 2 * 2);
}

TEST_F(SweepSpecFileTest, YmlAndJsonFilesAndScalars) {
  const std::string yml =
      Write("a.yml", "name: a\nmodel: m\nprompt: a fox\nseed: 7\nsize: 512x512\nguidance_scale: 3\n");
  const auto y = ParseSweepFile(yml, kLimits, 0);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_THAT(y->seeds, ElementsAre(7u));
  EXPECT_THAT(y->guidance_scales, ElementsAre(3.0));
  Write("p.txt", "one\ntwo\n");
  const std::string json =
      Write("b.json", R"({"name": "b", "model": "m", "prompts_file": "p.txt", "seeds": "1-2", "combine": "zip"})");
  const auto j = ParseSweepFile(json, kLimits, 0);
  ASSERT_TRUE(j.ok()) << j.status();
  EXPECT_THAT(j->prompts, ElementsAre("one", "two"));
  EXPECT_EQ(j->combine, SweepSpec::Combine::kZip);
}

TEST_F(SweepSpecFileTest, FileErrors) {
  EXPECT_EQ(ParseSweepFile((dir_ / "missing.yaml").string(), kLimits, 0).status().code(), absl::StatusCode::kNotFound);
  const auto txt = ParseSweepFile(Write("spec.txt", "name: a"), kLimits, 0);
  EXPECT_THAT(std::string(txt.status().message()), HasSubstr("must end in .json, .yaml or .yml"));
  const auto no_prompts =
      ParseSweepFile(Write("c.yaml", "name: a\nmodel: m\nprompts_file: nope.txt\nseed: 1\n"), kLimits, 0);
  EXPECT_THAT(std::string(no_prompts.status().message()), HasSubstr("prompts_file: cannot open"));
  EXPECT_THAT(std::string(no_prompts.status().message()), HasSubstr("nope.txt"));
  EXPECT_THAT(std::string(no_prompts.status().message()), HasSubstr("(line 3)"));
  Write("blank.txt", "\n  \n");
  const auto blank =
      ParseSweepFile(Write("d.yaml", "name: a\nmodel: m\nprompts_file: blank.txt\nseed: 1\n"), kLimits, 0);
  EXPECT_THAT(std::string(blank.status().message()), HasSubstr("holds no prompts"));
}

TEST(SweepSpecTextTest, YamlSyntaxAndTypeErrorsCarryLines) {
  auto spec = ParseSweepText("name: a\nmodel: m\nprompts: [a, b\nseed: 1\n", true, kLimits, 0);
  ASSERT_FALSE(spec.ok());
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr("YAML syntax error at line"));

  spec = ParseSweepText("name: a\nmodel: m\nprompt: x\nseed: 1\nsteps: lots\n", true, kLimits, 0);
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr("steps: expected an integer, got \"lots\" (line 5)"));

  spec = ParseSweepText("name: a\nmodel: m\nprompt: x\nseed: 1\nsampler: heun\n", true, kLimits, 0);
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr("samplers[0]: unknown sampler \"heun\""));
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr("(line 5)"));

  spec = ParseSweepText("name: a\nmodel: m\nprompt: x\nseed: 1\nseed: 2\n", true, kLimits, 0);
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr("duplicate field \"seed\""));

  spec = ParseSweepText("name: a\nmodel: m\nprompt: x\nseed: 1\nstep: 3\n", true, kLimits, 0);
  EXPECT_THAT(std::string(spec.status().message()),
              HasSubstr("step: unknown field (did you mean \"steps\"?) (line 5)"));

  spec = ParseSweepText("- just\n- a list\n", true, kLimits, 0);
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr("must be a mapping"));
  spec = ParseSweepText("", true, kLimits, 0);
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr("must be a mapping"));

  // Quoted YAML scalars stay text; plain ones are typed.
  spec = ParseSweepText("name: \"123\"\nmodel: m\nprompt: '42'\nseed: '5'\nsteps: 8\n", true, kLimits, 0);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->name, "123");
  EXPECT_THAT(spec->prompts, ElementsAre("42"));
  EXPECT_THAT(spec->seeds, ElementsAre(5u));
  spec = ParseSweepText("name: a\nmodel: m\nprompt: 42\nseed: 1\n", true, kLimits, 0);
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr("prompt: expected a string (quote it in YAML), got 42"));
}

TEST(SweepSpecTextTest, JsonSyntaxErrorsAndDuplicates) {
  auto spec = ParseSweepText(R"({"name": "a", "model": })", false, kLimits, 0);
  ASSERT_FALSE(spec.ok());
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr("JSON syntax error"));
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr("line 1"));
  spec = ParseSweepText(R"({"name": "a", "model": "m", "prompt": "x", "seed": 1, "seed": 2})", false, kLimits, 0);
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr("duplicate field \"seed\""));
  spec =
      ParseSweepText(R"({"name": "a", "model": "m", "prompt": "x", "seed": 1, "sizes": [{"width": 64, "height": 64}]})",
                     false, kLimits, 0);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_THAT(spec->sizes, ElementsAre(Size{64, 64}));
}

// Found with the fuzz targets (input: tests/fuzz/regressions/fuzz_sweep_spec/
// yaml-self-alias): an alias inside its own anchor makes a cyclic YAML node,
// which recursed until the stack overflowed.
TEST(SweepSpecTextTest, RecursiveYamlAliasIsAnErrorNotAStackOverflow) {
  for (const char* yaml : {"name: &a [*a]\nmodel: m\nprompt: x\nseed: 1\n", "&a {name: *a}\n",
                           "name: a\nmodel: m\nprompt: x\nseeds: &s [1, *s]\n"}) {
    const auto spec = ParseSweepText(yaml, true, kLimits, 0);
    ASSERT_FALSE(spec.ok()) << yaml;
    EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(spec.status().message()), HasSubstr("levels deep")) << yaml;
  }
  // Ordinary nesting well past what a spec uses still parses (and fails on types).
  std::string nested = "name: a\nmodel: m\nprompt: x\nseed: 1\nsteps: " + std::string(40, '[') + std::string(40, ']');
  EXPECT_THAT(std::string(ParseSweepText(nested, true, kLimits, 0).status().message()),
              HasSubstr("expected an integer"));
}

// Found with the fuzz targets (input: tests/fuzz/regressions/fuzz_submit_request/
// deep-nesting): the error message for a wrongly typed field dumped the value,
// recursively, so a spec_json nested ~100000 levels deep crashed the coordinator.
TEST(SweepSpecJsonTest, DeeplyNestedValueIsAnErrorNotAStackOverflow) {
  constexpr int kDepth = 500000;
  const std::string deep = std::string(kDepth, '[') + std::string(kDepth, ']');
  for (const std::string& text : {R"({"name": )" + deep + R"(, "model": "m", "prompt": "x", "seed": 1})",
                                  R"({"name": "a", "model": "m", "prompt": "x", "seed": 1, "sizes": [)" + deep + "]}",
                                  R"({"name": "a", "model": "m", "prompt": "x", "seed": 1, "combine": )" + deep + "}"}) {
    const Json json = Json::parse(text);  // nlohmann parses any depth without recursion
    const auto spec = SweepSpec::FromJson(json, kLimits, 0);
    ASSERT_FALSE(spec.ok());
    EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(spec.status().message()), HasSubstr("got [...]"));
    // The text parser takes the same path.
    EXPECT_THAT(std::string(ParseSweepText(text, false, kLimits, 0).status().message()), HasSubstr("got [...]"));
  }
  // Shallow values are still shown.
  const auto spec = SweepSpec::FromJson(Json::parse(R"({"name": [[1]], "model": "m", "prompt": "x", "seed": 1})"),
                                        kLimits, 0);
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr("got [[1]]"));
}

TEST(SweepSpecLoras, SetsAreAnAxisAndALoraIsNameColonScale) {
  Json j = Minimal();
  j["loras"] = Json::parse(R"([[], "style:0.5", ["style", {"name": "detail", "scale": -0.25}]])");
  auto spec = SweepSpec::FromJson(j, kLimits, 0);
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_EQ(spec->loras.size(), 3u);
  EXPECT_TRUE(spec->loras[0].empty());
  EXPECT_EQ(spec->loras[1], (std::vector<LoraUse>{{"style", 0.5}}));
  EXPECT_EQ(spec->loras[2], (std::vector<LoraUse>{{"style", 1.0}, {"detail", -0.25}}));
  EXPECT_EQ(CountImages(*spec), 3);
  // Canonical form: every LoRA as name:scale; reads back equal.
  const Json wire = spec->ToJson();
  EXPECT_EQ(wire["loras"], Json::parse(R"([[], ["style:0.5"], ["style:1", "detail:-0.25"]])"));
  auto again = SweepSpec::FromJson(wire, kLimits, 0);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, *spec);
}

TEST(SweepSpecLoras, SingularLoraIsOneSetAndVaeIsAName) {
  Json j = Minimal();
  j["lora"] = Json::array({"style:0.8", "detail"});
  j["vae"] = "vae-ft-mse";
  auto spec = SweepSpec::FromJson(j, kLimits, 0);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->loras, (std::vector<std::vector<LoraUse>>{{{"style", 0.8}, {"detail", 1.0}}}));
  EXPECT_EQ(spec->vae, "vae-ft-mse");
  EXPECT_EQ(spec->ToJson()["vae"], "vae-ft-mse");
}

TEST(SweepSpecLoras, ASpecWithoutThemReadsAsBefore) {
  const auto spec = SweepSpec::FromJson(Minimal(), kLimits, 0);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->loras, (std::vector<std::vector<LoraUse>>{{}}));
  EXPECT_TRUE(spec->vae.empty());
  // Unchanged canonical JSON keeps spec hashes (and local mode's sweep names) stable.
  EXPECT_FALSE(spec->ToJson().contains("loras"));
  EXPECT_FALSE(spec->ToJson().contains("vae"));
}

TEST(SweepSpecLoras, BadLorasAreRefusedWithTheirField) {
  auto with = [](const char* loras) {
    Json j = Minimal();
    j["loras"] = Json::parse(loras);
    return j;
  };
  EXPECT_THAT(JsonError(with(R"(["../escape:1"])")), HasSubstr("loras[0]"));
  EXPECT_THAT(JsonError(with(R"(["style:abc"])")), HasSubstr("name:scale"));
  EXPECT_THAT(JsonError(with(R"(["style:11"])")), HasSubstr("out of range [-10, 10]"));
  EXPECT_THAT(JsonError(with(R"([["style", "style:0.5"]])")), HasSubstr("twice"));
  EXPECT_THAT(JsonError(with(R"([])")), HasSubstr("empty list"));
  EXPECT_THAT(JsonError(with(R"([{"name": "style", "weight": 1}])")), HasSubstr("not \"weight\""));
  EXPECT_THAT(JsonError(with(R"([[1]])")), HasSubstr("expected a LoRA"));
  Json vae = Minimal();
  vae["vae"] = "/etc/vae";
  EXPECT_THAT(JsonError(vae), HasSubstr("vae"));
}

TEST(SweepSpecLoras, YamlAxisOfScales) {
  auto spec = ParseSweepText(R"(
name: fox
model: sd15
prompt: a fox
seeds: 0-1
loras: [[], [style:0.5], [style:1.0]]
)",
                             /*yaml=*/true, kLimits, 0);
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_EQ(spec->loras.size(), 3u);
  EXPECT_EQ(spec->loras[2], (std::vector<LoraUse>{{"style", 1.0}}));
  EXPECT_EQ(CountImages(*spec), 6);
}

}  // namespace
}  // namespace sdfarm::coordinator
