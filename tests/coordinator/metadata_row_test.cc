// metadata.jsonl rows (coordinator/metadata_row.h): an SD 1.x row has exactly
// the keys it always had; an SDXL row records prompt_2, the micro-conditioning
// and guidance_rescale as the engine uses them (diffusers' defaults filled in),
// and the negative micro-conditioning only when it applies.
#include "coordinator/metadata_row.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "coordinator/sweep_expander.h"
#include "coordinator/sweep_spec.h"
#include "worker/engine/a1111_parameters.h"

namespace sdfarm::coordinator {
namespace {

using Json = nlohmann::json;

const std::set<std::string> kSd1Keys = {
    "prompt",   "negative_prompt", "seed",  "guidance_scale", "steps",    "sampler",      "width",
    "height",   "model",           "model_hash", "vae",       "vae_hash", "loras",        "sweep_id",
    "sweep",    "item_index",      "job_index",  "worker",    "render_seconds", "prompt_tokens_dropped",
    "parameters"};

std::set<std::string> Keys(const Json& row) {
  std::set<std::string> keys;
  for (const auto& [k, v] : row.items()) keys.insert(k);
  return keys;
}

Item FoxItem() {
  Item item;
  item.index = 3;
  item.prompt = "a fox";
  item.negative_prompt = "blurry";
  item.seed = 7;
  item.guidance_scale = 5;
  item.steps = 20;
  item.sampler = "euler";
  item.width = 1024;
  item.height = 768;
  return item;
}

RowContext Context(bool sdxl) {
  return RowContext{.sweep_id = "s1",
                    .sweep_name = "fox",
                    .model = "m",
                    .job_index = 1,
                    .worker = "w-1",
                    .sdxl = sdxl,
                    .render_seconds = 1.5,
                    .prompt_tokens_dropped = 0,
                    .parameters = "a fox\nSteps: 20"};
}

TEST(MetadataRowTest, Sd1RowHasExactlyItsFormerKeys) {
  engine::GenerationParameters params;
  params.model_hash = "1a2b3c4d5e";
  const Json row = MetadataRow(SweepSpec{}, FoxItem(), params, Context(/*sdxl=*/false));
  EXPECT_EQ(Keys(row), kSd1Keys);
  EXPECT_EQ(row["prompt"], "a fox");
  EXPECT_EQ(row["seed"], 7);
  EXPECT_EQ(row["width"], 1024);
  EXPECT_EQ(row["model_hash"], "1a2b3c4d5e");
  EXPECT_EQ(row["loras"], Json::array());
  EXPECT_EQ(row["worker"], "w-1");
}

TEST(MetadataRowTest, Sd1RowOfARescalingSweepRecordsTheRescale) {
  SweepSpec spec;
  spec.guidance_rescales = {0, 0.7};
  Item item = FoxItem();
  item.guidance_rescale = 0.7;
  const Json row = MetadataRow(spec, item, {}, Context(/*sdxl=*/false));
  std::set<std::string> expected = kSd1Keys;
  expected.insert("guidance_rescale");
  EXPECT_EQ(Keys(row), expected);
  EXPECT_EQ(row["guidance_rescale"], 0.7);
}

TEST(MetadataRowTest, SdxlRowFillsDiffusersDefaults) {
  const Json row = MetadataRow(SweepSpec{}, FoxItem(), {}, Context(/*sdxl=*/true));
  std::set<std::string> expected = kSd1Keys;
  for (const char* k : {"prompt_2", "negative_prompt_2", "original_size", "crop_top_left", "target_size",
                        "guidance_rescale"}) {
    expected.insert(k);
  }
  EXPECT_EQ(Keys(row), expected);
  EXPECT_EQ(row["prompt_2"], "a fox");            // prompt_2 = prompt
  EXPECT_EQ(row["negative_prompt_2"], "blurry");  // negative_prompt_2 = negative_prompt
  EXPECT_EQ(row["original_size"], "1024x768");    // the image size
  EXPECT_EQ(row["target_size"], "1024x768");
  EXPECT_EQ(row["crop_top_left"], "0,0");
  EXPECT_EQ(row["guidance_rescale"], 0);
}

TEST(MetadataRowTest, SdxlRowRecordsGivenValuesAndNegativeMicroConditioningOnlyWhenItApplies) {
  Item item = FoxItem();
  item.prompt_2 = "oil painting";
  item.negative_prompt_2 = "cartoon";
  item.original_size = {2048, 1536};
  item.crop_top_left = {64, 32};
  item.target_size = {0, 0};  // the image size
  item.guidance_rescale = 0.7;
  const Json row = MetadataRow(SweepSpec{}, item, {}, Context(/*sdxl=*/true));
  EXPECT_EQ(row["prompt_2"], "oil painting");
  EXPECT_EQ(row["negative_prompt_2"], "cartoon");
  EXPECT_EQ(row["original_size"], "2048x1536");
  EXPECT_EQ(row["crop_top_left"], "64,32");
  EXPECT_EQ(row["target_size"], "1024x768");
  EXPECT_EQ(row["guidance_rescale"], 0.7);
  EXPECT_FALSE(row.contains("negative_original_size"));

  // One negative size alone does not apply (diffusers needs both).
  item.negative_original_size = {512, 512};
  EXPECT_FALSE(MetadataRow(SweepSpec{}, item, {}, Context(true)).contains("negative_original_size"));

  item.negative_target_size = {640, 640};
  item.negative_crop_top_left = {8, 0};
  const Json neg = MetadataRow(SweepSpec{}, item, {}, Context(true));
  EXPECT_EQ(neg["negative_original_size"], "512x512");
  EXPECT_EQ(neg["negative_target_size"], "640x640");
  EXPECT_EQ(neg["negative_crop_top_left"], "8,0");
}

TEST(MetadataRowTest, LorasCarryTheHashesOfTheParameters) {
  Item item = FoxItem();
  item.loras = {{"style", 0.5}, {"detail", 1}};
  engine::GenerationParameters params;
  params.extra = {{"Lora hashes", "style: 20a3e83bed69, detail: 0123456789ab"}};
  const Json row = MetadataRow(SweepSpec{}, item, params, Context(false));
  EXPECT_EQ(row["loras"], Json::parse(R"([{"name": "style", "scale": 0.5, "hash": "20a3e83bed69"},
                                          {"name": "detail", "scale": 1.0, "hash": "0123456789ab"}])"));
}

TEST(MetadataRowTest, HugeSeedsAreStringsWhenTheSweepSaysSo) {
  Item item = FoxItem();
  item.seed = 18446744073709551615ull;
  RowContext ctx = Context(false);
  ctx.seeds_as_strings = true;
  EXPECT_EQ(MetadataRow(SweepSpec{}, item, {}, ctx)["seed"], "18446744073709551615");
}

}  // namespace
}  // namespace sdfarm::coordinator
