// The size of a sweep that names none (coordinator/default_size.h): the
// model's own size as live workers report it, the size of the same sweep
// submitted before, else 512x512; and how "no size" travels in the spec.
#include "coordinator/default_size.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "coordinator/sweep_spec.h"

namespace sdfarm::coordinator {
namespace {

using Json = nlohmann::json;
const SweepLimits kLimits;

SweepSpec Parse(const Json& j) {
  auto spec = SweepSpec::FromJson(j, kLimits, 0);
  EXPECT_TRUE(spec.ok()) << spec.status();
  return spec.ok() ? *spec : SweepSpec{};
}

Json NoSize() { return Json{{"name", "xl"}, {"model", "sdxl"}, {"prompt", "a fox"}, {"seeds", "0-1"}}; }

TEST(DefaultSizeTest, NoSizeTravelsAsNoSizeAndSizesStayExplicit) {
  const SweepSpec none = Parse(NoSize());
  EXPECT_TRUE(none.size_from_model);
  EXPECT_FALSE(none.ToJson().contains("sizes"));
  EXPECT_EQ(Parse(none.ToJson()), none);

  Json sized = NoSize();
  sized["size"] = "512x512";
  const SweepSpec explicit_512 = Parse(sized);
  EXPECT_FALSE(explicit_512.size_from_model);
  EXPECT_EQ(explicit_512.ToJson()["sizes"], Json::array({"512x512"}));
  EXPECT_NE(explicit_512, none);
  Json wh = NoSize();
  wh["width"] = 640;
  wh["height"] = 512;
  EXPECT_FALSE(Parse(wh).size_from_model);
}

TEST(DefaultSizeTest, TakesTheSizeLiveWorkersReport) {
  SweepSpec spec = Parse(NoSize());
  const std::string why = FillDefaultSize(&spec, nullptr, {{0, 0}, {1024, 1024}});
  EXPECT_EQ(spec.sizes, (std::vector<Size>{Size{1024, 1024}}));
  EXPECT_FALSE(spec.size_from_model);
  EXPECT_EQ(spec.ToJson()["sizes"], Json::array({"1024x1024"}));
  EXPECT_NE(why.find("1024x1024"), std::string::npos) << why;
  EXPECT_NE(why.find("live workers"), std::string::npos) << why;
}

TEST(DefaultSizeTest, FallsBackTo512AndSaysWhy) {
  SweepSpec spec = Parse(NoSize());
  const std::string why = FillDefaultSize(&spec, nullptr, {{0, 0}});  // a worker of before: no size
  EXPECT_EQ(spec.sizes, (std::vector<Size>{Size{512, 512}}));
  EXPECT_FALSE(spec.size_from_model);
  EXPECT_NE(why.find("no live worker of model sdxl"), std::string::npos) << why;
}

TEST(DefaultSizeTest, AResubmissionKeepsTheSizeOfItsSweep) {
  SweepSpec first = Parse(NoSize());
  FillDefaultSize(&first, nullptr, {{1024, 1024}});
  // Submitted again with the same flags after the fleet went away.
  SweepSpec again = Parse(NoSize());
  const std::string why = FillDefaultSize(&again, &first, {});
  EXPECT_EQ(again, first);
  EXPECT_EQ(again.ToJson(), first.ToJson());
  EXPECT_NE(why.find("the size sweep xl was submitted with"), std::string::npos) << why;

  // Another spec under that name is not that sweep: it gets the fleet's size.
  Json other_json = NoSize();
  other_json["seeds"] = "5";
  SweepSpec other = Parse(other_json);
  FillDefaultSize(&other, &first, {{768, 768}});
  EXPECT_EQ(other.sizes, (std::vector<Size>{Size{768, 768}}));
}

TEST(DefaultSizeTest, ASpecThatNamesASizeIsLeftAsItIs) {
  Json sized = NoSize();
  sized["sizes"] = {"640x512", "512x640"};
  SweepSpec spec = Parse(sized);
  const SweepSpec before = spec;
  EXPECT_EQ(FillDefaultSize(&spec, nullptr, {{1024, 1024}}), "");
  EXPECT_EQ(spec, before);
}

}  // namespace
}  // namespace sdfarm::coordinator
