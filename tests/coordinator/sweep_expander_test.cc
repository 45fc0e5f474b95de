#include "coordinator/sweep_expander.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

namespace sdfarm::coordinator {
namespace {

using ::testing::ElementsAre;

const SweepLimits kLimits;

std::vector<std::string> Prompts(int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) out.push_back("prompt " + std::to_string(i));
  return out;
}

std::vector<uint64_t> Seeds(int n, uint64_t first = 0) {
  std::vector<uint64_t> out;
  for (int i = 0; i < n; ++i) out.push_back(first + i);
  return out;
}

SweepSpec Spec(int prompts, int seeds) {
  SweepSpec spec;
  spec.name = "s";
  spec.model = "m";
  spec.prompts = Prompts(prompts);
  spec.seeds = Seeds(seeds);
  return spec;
}

// A spec with every axis longer than one, for the ordering and grouping checks.
SweepSpec Rich() {
  SweepSpec spec = Spec(3, 2);
  spec.negative_prompts = {"", "blurry"};
  spec.guidance_scales = {5, 7.5};
  spec.steps = {10, 20};
  spec.samplers = {"ddim", "euler_a", "lms"};
  spec.sizes = {{512, 512}, {768, 512}};
  spec.images_per_combination = 2;
  return spec;
}

auto Tuple(const Item& i) {
  return std::make_tuple(i.prompt, i.negative_prompt, i.seed, i.guidance_scale, i.steps, i.sampler, i.width, i.height);
}
auto GroupOf(const Item& i) { return std::make_tuple(i.width, i.height, i.steps, i.sampler); }

// Checks the job invariants exhaustively: jobs tile [0, num_items) in order,
// each within batch_size and within one size/steps/sampler group, and every
// group boundary is a job boundary.
void CheckJobs(const SweepExpander& e, int batch) {
  int64_t next = 0;
  std::vector<int> covered(e.num_items(), 0);
  for (int64_t j = 0; j < e.num_jobs(); ++j) {
    const JobSlice job = e.JobAt(j);
    ASSERT_EQ(job.job_index, j);
    ASSERT_EQ(job.first_item, next) << "job " << j;
    ASSERT_GE(job.count, 1);
    ASSERT_LE(job.count, batch);
    const auto group = GroupOf(e.ItemAt(job.first_item));
    for (int64_t i = job.first_item; i < job.first_item + job.count; ++i) {
      ASSERT_EQ(GroupOf(e.ItemAt(i)), group) << "job " << j << " mixes groups at item " << i;
      ++covered[i];
    }
    next = job.first_item + job.count;
    // A short job is only allowed at the end of a group.
    if (job.count < batch && next < e.num_items()) {
      ASSERT_NE(GroupOf(e.ItemAt(next)), group) << "job " << j << " is short inside a group";
    }
  }
  ASSERT_EQ(next, e.num_items());
  for (int64_t i = 0; i < e.num_items(); ++i) ASSERT_EQ(covered[i], 1) << "item " << i;
}

TEST(SweepExpanderTest, ProductOrderMatchesNestedLoops) {
  const SweepSpec spec = Rich();
  ASSERT_TRUE(Validate(spec, kLimits).ok());
  const SweepExpander e(spec, 4);
  std::vector<Item> expected;
  for (const Size& size : spec.sizes)
    for (int steps : spec.steps)
      for (const std::string& sampler : spec.samplers)
        for (const std::string& prompt : spec.prompts)
          for (const std::string& negative : spec.negative_prompts)
            for (double guidance : spec.guidance_scales)
              for (uint64_t seed : spec.seeds)
                for (int k = 0; k < spec.images_per_combination; ++k) {
                  expected.push_back(Item{static_cast<int64_t>(expected.size()), prompt, negative, seed + k, guidance,
                                          steps, sampler, size.width, size.height});
                }
  ASSERT_EQ(e.num_items(), static_cast<int64_t>(expected.size()));
  ASSERT_EQ(e.num_items(), 2 * 2 * 3 * 3 * 2 * 2 * 2 * 2);
  for (int64_t i = 0; i < e.num_items(); ++i) {
    const Item item = e.ItemAt(i);
    EXPECT_EQ(item.index, i);
    EXPECT_EQ(Tuple(item), Tuple(expected[i])) << "item " << i;
  }
}

TEST(SweepExpanderTest, ImagesPerCombinationUseConsecutiveSeeds) {
  SweepSpec spec = Spec(1, 2);
  spec.seeds = {100, 200};
  spec.images_per_combination = 3;
  const SweepExpander e(spec, 8);
  std::vector<uint64_t> seeds;
  for (int64_t i = 0; i < e.num_items(); ++i) seeds.push_back(e.ItemAt(i).seed);
  EXPECT_THAT(seeds, ElementsAre(100u, 101u, 102u, 200u, 201u, 202u));
}

TEST(SweepExpanderTest, JobsTileItemsForAwkwardBatchSizes) {
  for (const SweepSpec& base : {Rich(), Spec(5, 7), Spec(1, 1), Spec(7, 3)}) {
    for (SweepSpec::Combine combine : {SweepSpec::Combine::kProduct, SweepSpec::Combine::kZip}) {
      SweepSpec spec = base;
      spec.combine = combine;
      if (combine == SweepSpec::Combine::kZip) {
        // Make the lists zip-compatible: everything of length 1 or N.
        const size_t n = spec.prompts.size();
        spec.seeds = Seeds(static_cast<int>(n), 10);
        if (spec.negative_prompts.size() > 1) spec.negative_prompts = {spec.negative_prompts.front()};
        if (spec.guidance_scales.size() > 1) spec.guidance_scales = {spec.guidance_scales.front()};
        if (spec.samplers.size() > 1) spec.samplers = {"ddim", "euler", "ddim"};
        if (spec.steps.size() > 1) spec.steps = {10, 20, 10};
        if (spec.sizes.size() > 1) spec.sizes = {spec.sizes.front()};
      }
      ASSERT_TRUE(Validate(spec, kLimits).ok()) << Validate(spec, kLimits);
      for (int batch : {1, 2, 3, 4, 5, 7, 8, 13, 64, 1000}) {
        SCOPED_TRACE(testing::Message() << "prompts " << spec.prompts.size() << " zip "
                                        << (combine == SweepSpec::Combine::kZip) << " batch " << batch);
        const SweepExpander e(spec, batch);
        CheckJobs(e, batch);
      }
    }
  }
}

TEST(SweepExpanderTest, ProductJobCountIsPerGroup) {
  // 2 sizes x 3 samplers = 6 groups of 5 prompts x 7 seeds = 35 items; batch 8 -> 5 jobs each.
  SweepSpec spec = Spec(5, 7);
  spec.sizes = {{512, 512}, {512, 768}};
  spec.samplers = {"ddim", "lms", "pndm"};
  const SweepExpander e(spec, 8);
  EXPECT_EQ(e.num_items(), 210);
  EXPECT_EQ(e.num_jobs(), 30);
  EXPECT_EQ(e.JobAt(4).first_item, 32);
  EXPECT_EQ(e.JobAt(4).count, 3);
  EXPECT_EQ(e.JobAt(5).first_item, 35);
  EXPECT_EQ(e.JobAt(5).count, 8);
  EXPECT_EQ(SweepExpander(spec, 0).num_jobs(), 210);  // batch size below 1 is taken as 1
}

TEST(SweepExpanderTest, JobOfBatchBHoldsOnePromptWhenSeedsFillIt) {
  // 3 prompts x 8 seeds, batch 4: each job is 4 seeds of one prompt.
  {
    const SweepExpander e(Spec(3, 8), 4);
    ASSERT_EQ(e.num_jobs(), 6);
    for (int64_t j = 0; j < e.num_jobs(); ++j) {
      const JobSlice job = e.JobAt(j);
      ASSERT_EQ(job.count, 4);
      std::set<std::string> prompts;
      for (int64_t i = job.first_item; i < job.first_item + job.count; ++i) prompts.insert(e.ItemAt(i).prompt);
      EXPECT_EQ(prompts.size(), 1u) << "job " << j;
      EXPECT_EQ(*prompts.begin(), "prompt " + std::to_string(j / 2));
    }
  }
  // 5 prompts x 3 seeds, batch 4: batches stay full, so a job spans at most
  // ceil(3/3)+1 = 2 prompts, and each prompt's items are contiguous.
  {
    const SweepExpander e(Spec(5, 3), 4);
    ASSERT_EQ(e.num_jobs(), 4);
    for (int64_t j = 0; j < e.num_jobs(); ++j) {
      const JobSlice job = e.JobAt(j);
      std::vector<std::string> runs;
      for (int64_t i = job.first_item; i < job.first_item + job.count; ++i) {
        const std::string p = e.ItemAt(i).prompt;
        if (runs.empty() || runs.back() != p) runs.push_back(p);
      }
      EXPECT_LE(runs.size(), 2u) << "job " << j;
      EXPECT_EQ(std::set<std::string>(runs.begin(), runs.end()).size(), runs.size()) << "prompt split in job " << j;
    }
  }
}

TEST(SweepExpanderTest, ZipAdvancesListsTogetherAndBroadcasts) {
  SweepSpec spec = Spec(3, 3);
  spec.combine = SweepSpec::Combine::kZip;
  spec.prompts = {"a fox", "a cat", "a owl"};
  spec.seeds = {7, 8, 9};
  spec.guidance_scales = {4, 5, 6};
  spec.negative_prompts = {"blurry"};  // broadcasts
  ASSERT_TRUE(Validate(spec, kLimits).ok());
  const SweepExpander e(spec, 2);
  ASSERT_EQ(e.num_items(), 3);
  std::set<std::tuple<std::string, uint64_t, double>> got;
  for (int64_t i = 0; i < e.num_items(); ++i) {
    const Item item = e.ItemAt(i);
    EXPECT_EQ(item.negative_prompt, "blurry");
    EXPECT_EQ(item.steps, 30);
    got.emplace(item.prompt, item.seed, item.guidance_scale);
  }
  EXPECT_EQ(got,
            (std::set<std::tuple<std::string, uint64_t, double>>{{"a fox", 7, 4}, {"a cat", 8, 5}, {"a owl", 9, 6}}));
}

TEST(SweepExpanderTest, ZipGroupsBySizeStepsSamplerThenPrompt) {
  SweepSpec spec = Spec(6, 6);
  spec.combine = SweepSpec::Combine::kZip;
  spec.prompts = {"b", "a", "b", "a", "b", "a"};
  spec.samplers = {"lms", "ddim", "ddim", "lms", "ddim", "lms"};
  spec.seeds = {0, 1, 2, 3, 4, 5};
  spec.images_per_combination = 2;
  ASSERT_TRUE(Validate(spec, kLimits).ok());
  const SweepExpander e(spec, 3);
  ASSERT_EQ(e.num_items(), 12);
  std::vector<std::string> order;
  for (int64_t i = 0; i < e.num_items(); i += 2) {
    const Item item = e.ItemAt(i);
    order.push_back(item.sampler + "/" + item.prompt + "/" + std::to_string(item.seed));
    EXPECT_EQ(e.ItemAt(i + 1).seed, item.seed + 1);
  }
  // Stable: within equal (sampler, prompt) the file's order is kept.
  EXPECT_THAT(order, ElementsAre("ddim/a/1", "ddim/b/2", "ddim/b/4", "lms/a/3", "lms/a/5", "lms/b/0"));
  // Groups of 6 items, batch 3: 2 jobs each, never mixing samplers.
  EXPECT_EQ(e.num_jobs(), 4);
  CheckJobs(e, 3);
}

TEST(SweepExpanderTest, MillionImageSweepIsComputedByIndex) {
  SweepSpec spec = Spec(1000, 1);
  spec.seeds = Seeds(1000, 5000);
  ASSERT_TRUE(Validate(spec, kLimits).ok());
  const auto start = std::chrono::steady_clock::now();
  const SweepExpander e(spec, 8);
  ASSERT_EQ(e.num_items(), 1'000'000);
  EXPECT_EQ(e.num_jobs(), 125'000);
  const Item last = e.ItemAt(999'999);
  EXPECT_EQ(last.prompt, "prompt 999");
  EXPECT_EQ(last.seed, 5999u);
  EXPECT_EQ(e.FileName(last), "999999-seed5999-cfg7.5.png");
  const Item mid = e.ItemAt(123'456);
  EXPECT_EQ(mid.prompt, "prompt 123");
  EXPECT_EQ(mid.seed, 5456u);
  const JobSlice job = e.JobAt(124'999);
  EXPECT_EQ(job.first_item, 999'992);
  EXPECT_EQ(job.count, 8);
  // By index: constructing and querying touches nothing per item.
  for (int64_t i = 0; i < 1'000'000; i += 997) ASSERT_EQ(e.ItemAt(i).index, i);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));

  // The same at the 10,000,000 limit, spread over every axis.
  SweepSpec big = Spec(100, 100);
  big.guidance_scales = {5, 6, 7, 8, 9};
  big.steps = {20, 30};
  big.samplers = {"ddim", "euler", "lms", "pndm", "ddpm"};
  big.sizes = {{512, 512}, {768, 512}};
  big.images_per_combination = 10;
  ASSERT_TRUE(Validate(big, kLimits).ok());
  const SweepExpander b(big, 7);
  ASSERT_EQ(b.num_items(), 10'000'000);
  const Item tail = b.ItemAt(9'999'999);
  EXPECT_EQ(tail.width, 768);
  EXPECT_EQ(tail.steps, 30);
  EXPECT_EQ(tail.sampler, "ddpm");
  EXPECT_EQ(tail.prompt, "prompt 99");
  EXPECT_EQ(tail.guidance_scale, 9);
  EXPECT_EQ(tail.seed, 99u + 9u);
  // 20 groups of 500,000 items; batch 7 -> 71,429 jobs per group.
  EXPECT_EQ(b.num_jobs(), 20 * 71'429);
  const JobSlice end = b.JobAt(b.num_jobs() - 1);
  EXPECT_EQ(end.first_item + end.count, 10'000'000);
  EXPECT_EQ(end.count, 500'000 - 71'428 * 7);
}

TEST(SweepExpanderTest, FileNamesAreUniqueAndShowSeedAndGuidance) {
  SweepSpec spec = Rich();
  spec.seeds = {1, 3};  // with images_per_combination 2: seeds 1, 2, 3, 4
  const SweepExpander e(spec, 4);
  std::set<std::string> names;
  for (int64_t i = 0; i < e.num_items(); ++i) names.insert(e.FileName(e.ItemAt(i)));
  EXPECT_EQ(static_cast<int64_t>(names.size()), e.num_items());
  // 576 items: indices 0..575, three digits.
  ASSERT_EQ(e.num_items(), 576);
  EXPECT_EQ(e.FileName(e.ItemAt(0)), "000-seed1-cfg5.png");
  EXPECT_EQ(e.FileName(e.ItemAt(5)), "005-seed2-cfg7.5.png");

  // Same seeds in different combinations still get different names.
  SweepSpec dup = Spec(2, 1);
  dup.seeds = {42};
  const SweepExpander d(dup, 1);
  EXPECT_EQ(d.FileName(d.ItemAt(0)), "0-seed42-cfg7.5.png");
  EXPECT_EQ(d.FileName(d.ItemAt(1)), "1-seed42-cfg7.5.png");

  Item odd;
  odd.index = 42;
  odd.seed = 7;
  odd.guidance_scale = 0.1;
  EXPECT_EQ(SweepExpander(Spec(1000, 1000), 1).FileName(odd), "000042-seed7-cfg0.1.png");
}

TEST(SweepExpanderTest, LoraSetsAreGroupsThatJobsNeverMix) {
  SweepSpec spec = Spec(2, 3);
  spec.loras = {{}, {{"style", 0.5}}, {{"style", 1.0}, {"detail", 0.3}}};
  SweepExpander e(spec, 4);
  ASSERT_EQ(e.num_items(), 18);
  // Per set: 2 prompts x 3 seeds = 6 items = 2 jobs of 4 and 2.
  ASSERT_EQ(e.num_jobs(), 6);
  std::map<size_t, int> items_per_set;
  for (int64_t j = 0; j < e.num_jobs(); ++j) {
    const JobSlice job = e.JobAt(j);
    const std::vector<LoraUse> first = e.ItemAt(job.first_item).loras;
    for (int64_t i = job.first_item; i < job.first_item + job.count; ++i) {
      EXPECT_EQ(e.ItemAt(i).loras, first) << "job " << j << " mixes LoRA sets";
    }
    for (size_t s = 0; s < spec.loras.size(); ++s) {
      if (spec.loras[s] == first) items_per_set[s] += job.count;
    }
  }
  EXPECT_EQ(items_per_set, (std::map<size_t, int>{{0, 6}, {1, 6}, {2, 6}}));
  // Without LoRA sets the numbering is what it always was.
  SweepExpander plain(Spec(2, 3), 4);
  SweepExpander one_set(spec, 4);
  EXPECT_EQ(plain.ItemAt(5).prompt, one_set.ItemAt(5).prompt);
  EXPECT_EQ(plain.ItemAt(5).seed, one_set.ItemAt(5).seed);
}

TEST(SweepExpanderTest, ZipKeepsEachCombinationsLoraSet) {
  SweepSpec spec = Spec(2, 2);
  spec.combine = SweepSpec::Combine::kZip;
  spec.loras = {{{"a", 1.0}}, {{"b", 0.5}}};
  SweepExpander e(spec, 8);
  ASSERT_EQ(e.num_items(), 2);
  ASSERT_EQ(e.num_jobs(), 2);  // two sets: two groups
  std::set<std::string> seen;
  for (int64_t i = 0; i < 2; ++i) {
    const Item item = e.ItemAt(i);
    ASSERT_EQ(item.loras.size(), 1u);
    // Combination k pairs prompt k with set k.
    EXPECT_EQ(item.prompt, item.loras[0].name == "a" ? "prompt 0" : "prompt 1");
    seen.insert(item.loras[0].name);
  }
  EXPECT_EQ(seen, (std::set<std::string>{"a", "b"}));
}

}  // namespace
}  // namespace sdfarm::coordinator
