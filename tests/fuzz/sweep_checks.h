// Checks shared by fuzz_sweep_spec and fuzz_submit_request: what every
// validated SweepSpec must satisfy, and what SweepExpander promises about the
// items and jobs it computes from one.
#ifndef SDFARM_TESTS_FUZZ_SWEEP_CHECKS_H_
#define SDFARM_TESTS_FUZZ_SWEEP_CHECKS_H_

#include <algorithm>
#include <cstdint>
#include <string>

#include "coordinator/sweep_expander.h"
#include "coordinator/sweep_spec.h"
#include "fuzz_check.h"

namespace sdfarm::coordinator::fuzz {

template <typename T>
bool Contains(const std::vector<T>& list, const T& value) {
  return std::find(list.begin(), list.end(), value) != list.end();
}

inline void CheckItem(const SweepSpec& spec, const SweepExpander& expander, int64_t index) {
  const Item item = expander.ItemAt(index);
  FUZZ_CHECK(item.index == index);
  FUZZ_CHECK(Contains(spec.prompts, item.prompt));
  FUZZ_CHECK(Contains(spec.negative_prompts, item.negative_prompt));
  FUZZ_CHECK(Contains(spec.guidance_scales, item.guidance_scale));
  FUZZ_CHECK(Contains(spec.steps, item.steps));
  FUZZ_CHECK(Contains(spec.samplers, item.sampler));
  FUZZ_CHECK(Contains(spec.sizes, Size{item.width, item.height}));
  bool seed_ok = false;  // one of the spec's seeds plus k < images_per_combination
  for (uint64_t s : spec.seeds) {
    if (item.seed >= s && item.seed - s < static_cast<uint64_t>(spec.images_per_combination)) seed_ok = true;
  }
  FUZZ_CHECK(seed_ok);
  const std::string name = expander.FileName(item);
  // "<index zero-padded to the width of num_items-1>-seed<seed>-cfg<g>.png"
  const std::string last = std::to_string(expander.num_items() - 1);
  const std::string idx = std::to_string(index);
  FUZZ_CHECK(name.size() > last.size() && name[last.size()] == '-');
  FUZZ_CHECK(name.compare(0, last.size(), std::string(last.size() - idx.size(), '0') + idx) == 0);
  FUZZ_CHECK(name.find("-seed" + std::to_string(item.seed) + "-cfg") == last.size());
  FUZZ_CHECK(name.ends_with(".png"));
}

inline void CheckJob(const SweepSpec& spec, const SweepExpander& expander, int batch_size, int64_t job) {
  const JobSlice slice = expander.JobAt(job);
  FUZZ_CHECK(slice.job_index == job);
  FUZZ_CHECK(slice.count >= 1 && slice.count <= std::max(batch_size, 1));
  FUZZ_CHECK(slice.first_item >= 0 && slice.first_item + slice.count <= expander.num_items());
  if (job == 0) FUZZ_CHECK(slice.first_item == 0);
  if (job == expander.num_jobs() - 1) FUZZ_CHECK(slice.first_item + slice.count == expander.num_items());
  if (job + 1 < expander.num_jobs()) {
    FUZZ_CHECK(expander.JobAt(job + 1).first_item == slice.first_item + slice.count);
  }
  // A job never mixes what one worker batch must share.
  const Item first = expander.ItemAt(slice.first_item);
  const Item last = expander.ItemAt(slice.first_item + slice.count - 1);
  FUZZ_CHECK(first.width == last.width && first.height == last.height);
  FUZZ_CHECK(first.steps == last.steps && first.sampler == last.sampler);
  CheckItem(spec, expander, slice.first_item);
  CheckItem(spec, expander, slice.first_item + slice.count - 1);
}

// `spec` was accepted; `limits` are the ones it was accepted under.
inline void CheckExpansion(const SweepSpec& spec, const SweepLimits& limits, int batch_size) {
  const SweepExpander expander(spec, batch_size);
  FUZZ_CHECK(expander.num_items() == CountImages(spec));
  FUZZ_CHECK(expander.num_items() >= 1 && expander.num_items() <= limits.max_images);
  FUZZ_CHECK(expander.num_jobs() >= 1 && expander.num_jobs() <= expander.num_items());
  const int64_t jobs = expander.num_jobs();
  for (int64_t job : {int64_t{0}, int64_t{1}, jobs / 2, jobs - 2, jobs - 1}) {
    if (job >= 0 && job < jobs) CheckJob(spec, expander, batch_size, job);
  }
}

}  // namespace sdfarm::coordinator::fuzz

#endif  // SDFARM_TESTS_FUZZ_SWEEP_CHECKS_H_
