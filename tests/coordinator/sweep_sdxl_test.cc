// The SDXL fields of a sweep (prompts_2, micro-conditioning, guidance
// rescale): parsing and canonical JSON, validation messages, the expander's
// numbering (SDXL axes of length 1 change nothing) and the job payload's
// items they become.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "common/job_payload.h"
#include "coordinator/sweep_expander.h"
#include "coordinator/sweep_spec.h"

namespace sdfarm::coordinator {
namespace {

using Json = nlohmann::json;
const SweepLimits kLimits;

Json Base() {
  return Json{{"name", "xl"}, {"model", "sdxl"}, {"prompt", "a fox"}, {"seeds", "0-1"}, {"size", "64x64"}};
}

TEST(SweepSdxlTest, FieldsParseRoundTripAndAreAbsentWhenUnset) {
  auto plain = SweepSpec::FromJson(Base(), kLimits, 0);
  ASSERT_TRUE(plain.ok()) << plain.status();
  const Json plain_json = plain->ToJson();
  for (const char* f : {"prompts_2", "negative_prompts_2", "original_sizes", "target_sizes", "crops_top_left",
                        "negative_original_size", "negative_target_size", "negative_crop_top_left",
                        "guidance_rescales"}) {
    EXPECT_FALSE(plain_json.contains(f)) << f;
  }
  Json j = Base();
  j["prompt_2"] = "oil painting";
  j["negative_prompts_2"] = {"cartoon", ""};
  j["original_sizes"] = {"1024x768", 2048};
  j["target_size"] = "1024x1024";
  j["crops_top_left"] = {"0,0", "64, 32"};
  j["negative_original_size"] = "512x512";
  j["negative_target_size"] = "512x512";
  j["negative_crop_top_left"] = "8,8";
  j["guidance_rescales"] = {0, 0.7};
  auto spec = SweepSpec::FromJson(j, kLimits, 0);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->prompts_2, std::vector<std::string>{"oil painting"});
  EXPECT_EQ(spec->original_sizes, (std::vector<Size>{{1024, 768}, {2048, 2048}}));
  EXPECT_EQ(spec->crops_top_left, (std::vector<Crop>{{0, 0}, {64, 32}}));
  EXPECT_EQ(spec->negative_crop_top_left, (Crop{8, 8}));
  EXPECT_EQ(CountImages(*spec), 2 * 2 * 2 * 2 * 2);  // seeds x negatives_2 x originals x crops x rescales
  auto back = SweepSpec::FromJson(spec->ToJson(), kLimits, 0);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, *spec);
}

TEST(SweepSdxlTest, BadValuesAreNamed) {
  struct Case {
    Json patch;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{{"original_size", "0x512"}}, "original_sizes[0]"},
      {{{"target_sizes", {"100000x8"}}}, "target_sizes[0]"},
      {{{"crop_top_left", "1"}}, "crop_top_left"},
      {{{"crop_top_left", 5}}, "crop_top_left"},
      {{{"negative_original_size", "512x512"}}, "negative_target_size"},
      {{{"negative_crop_top_left", "8,8"}}, "go together"},
      {{{"negative_target_size", {"64x64", "32x32"}}}, "one size"},
      {{{"guidance_rescale", 1.5}}, "guidance_rescales[0]"},
      {{{"prompts_2", Json::array()}}, "prompts_2"},
  };
  for (const Case& c : cases) {
    Json j = Base();
    j.update(c.patch);
    auto spec = SweepSpec::FromJson(j, kLimits, 0);
    ASSERT_FALSE(spec.ok()) << c.patch.dump();
    EXPECT_NE(std::string(spec.status().message()).find(c.message), std::string::npos)
        << c.patch.dump() << ": " << spec.status();
  }
}

TEST(SweepSdxlTest, ExpanderNumbersAsBeforeAndCarriesTheFieldsIntoJobItems) {
  Json j = Base();
  j["guidance_scales"] = {5, 7};
  auto plain = SweepSpec::FromJson(j, kLimits, 0);
  ASSERT_TRUE(plain.ok());
  j["original_sizes"] = {"96x128", "32x32"};
  j["prompt_2"] = "oil painting";
  j["guidance_rescale"] = 0.5;
  auto xl = SweepSpec::FromJson(j, kLimits, 0);
  ASSERT_TRUE(xl.ok()) << xl.status();
  SweepExpander a(*plain, 4), b(*xl, 4);
  ASSERT_EQ(a.num_items(), 4);
  ASSERT_EQ(b.num_items(), 8);
  // The new axis sits outside guidance and seed: items 0..3 are original size 96x128, in the plain order.
  std::set<std::pair<int, int>> originals;
  for (int64_t i = 0; i < b.num_items(); ++i) {
    const Item item = b.ItemAt(i);
    if (i < 4) {
      const Item p = a.ItemAt(i);
      EXPECT_EQ(item.seed, p.seed);
      EXPECT_EQ(item.guidance_scale, p.guidance_scale);
    }
    originals.insert({item.original_size.width, item.original_size.height});
    const JobItem ji = ToJobItem(item, b.FileName(item));
    EXPECT_EQ(ji.prompt_2, "oil painting");
    EXPECT_EQ(ji.original_width, item.original_size.width);
    EXPECT_EQ(ji.original_height, item.original_size.height);
    EXPECT_EQ(ji.guidance_rescale, 0.5);
  }
  EXPECT_EQ(originals, (std::set<std::pair<int, int>>{{96, 128}, {32, 32}}));
  // Payload JSON round trip, and absent fields for an SD 1.x item.
  JobPayload p;
  p.sweep_id = "s";
  p.model = "sdxl";
  p.sampler = "euler";
  p.items = {ToJobItem(b.ItemAt(0), "a.png"), ToJobItem(a.ItemAt(0), "b.png")};
  p.items[0].negative_original_width = p.items[0].negative_original_height = 512;
  p.items[0].negative_crop_top = 8;
  auto back = JobPayload::FromJson(p.ToJson());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, p);
  const Json wire = Json::parse(p.ToJson());
  EXPECT_EQ(wire["items"][0]["original_size"], Json({96, 128}));
  EXPECT_FALSE(wire["items"][1].contains("original_size"));
  EXPECT_FALSE(wire["items"][1].contains("prompt_2"));
  EXPECT_FALSE(wire["items"][1].contains("guidance_rescale"));
}

}  // namespace
}  // namespace sdfarm::coordinator

namespace sdfarm::coordinator {
namespace {

TEST(SweepSdxlTest, AOneImageSweepIsAOneItemPayload) {
  Json j = {{"name", "not-xl"}, {"model", "tiny-sd"}, {"prompt", "a fox"}, {"seeds", "0"},
            {"steps", 2},       {"size", "64x64"},    {"original_size", "1024x1024"}};
  auto spec = SweepSpec::FromJson(j, kLimits, 0);
  ASSERT_TRUE(spec.ok()) << spec.status();
  SweepExpander e(*spec, 4);
  ASSERT_EQ(e.num_items(), 1);
  JobPayload p;
  p.sweep_id = "s";
  p.model = "tiny-sd";
  p.sampler = "euler_a";
  const JobSlice slice = e.JobAt(0);
  ASSERT_EQ(slice.count, 1);
  p.items.push_back(ToJobItem(e.ItemAt(0), e.FileName(e.ItemAt(0))));
  const std::string wire = p.ToJson();
  auto back = JobPayload::FromJson(wire);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->items.size(), 1u) << wire;
  EXPECT_EQ(back->items[0].original_width, 1024) << wire;
}

}  // namespace
}  // namespace sdfarm::coordinator
