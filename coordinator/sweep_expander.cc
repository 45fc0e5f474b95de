#include "coordinator/sweep_expander.h"

#include <algorithm>
#include <charconv>
#include <cinttypes>
#include <cstdio>
#include <numeric>
#include <tuple>

namespace sdfarm::coordinator {
namespace {

int DecimalDigits(int64_t v) {
  int digits = 1;
  while (v >= 10) v /= 10, ++digits;
  return digits;
}

// Shortest text that reads back as the same double: "7.5", not "7.500000".
std::string FormatGuidance(double v) {
  char buf[64];
  const auto [ptr, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  return ec == std::errc() ? std::string(buf, ptr) : "nan";
}

// Entry i of a zip list; length-1 lists broadcast (and the modulo keeps an
// unvalidated spec in bounds).
size_t ZipEntry(size_t i, size_t length) { return length <= 1 ? 0 : i % length; }

}  // namespace

SweepExpander::SweepExpander(const SweepSpec& spec, int batch_size)
    : spec_(spec), batch_size_(std::max(batch_size, 1)) {
  const int64_t per = std::max(spec_.images_per_combination, 0);
  num_items_ = CountImages(spec_);
  index_width_ = DecimalDigits(std::max<int64_t>(num_items_ - 1, 0));
  if (num_items_ == 0) return;

  if (spec_.combine == SweepSpec::Combine::kProduct) {
    const int64_t groups = static_cast<int64_t>(spec_.sizes.size() * spec_.steps.size() * spec_.samplers.size() *
                                                spec_.loras.size());
    items_per_group_ = num_items_ / groups;
    jobs_per_group_ = (items_per_group_ + batch_size_ - 1) / batch_size_;
    num_jobs_ = groups * jobs_per_group_;
    return;
  }

  // Zip: sort combinations so each group is one run and, inside it, equal
  // prompts are adjacent; stable, so the file's order decides ties.
  const int64_t combinations = num_items_ / per;
  zip_order_.resize(combinations);
  std::iota(zip_order_.begin(), zip_order_.end(), 0);
  auto key = [this](int32_t i) {
    const size_t ui = static_cast<size_t>(i);
    const Size& size = spec_.sizes[ZipEntry(ui, spec_.sizes.size())];
    return std::make_tuple(size.width, size.height, spec_.steps[ZipEntry(ui, spec_.steps.size())],
                           std::cref(spec_.samplers[ZipEntry(ui, spec_.samplers.size())]),
                           ZipEntry(ui, spec_.loras.size()),
                           std::cref(spec_.prompts[ZipEntry(ui, spec_.prompts.size())]),
                           std::cref(spec_.negative_prompts[ZipEntry(ui, spec_.negative_prompts.size())]));
  };
  std::stable_sort(zip_order_.begin(), zip_order_.end(), [&](int32_t a, int32_t b) { return key(a) < key(b); });
  auto group_key = [&](int32_t i) {
    const auto k = key(i);
    return std::make_tuple(std::get<0>(k), std::get<1>(k), std::get<2>(k), std::get<3>(k), std::get<4>(k));
  };
  for (int64_t c = 0; c < combinations; ++c) {
    if (c == 0 || group_key(zip_order_[c]) != group_key(zip_order_[c - 1])) {
      group_first_item_.push_back(c * per);
    }
  }
  group_first_item_.push_back(num_items_);
  group_first_job_.push_back(0);
  for (size_t g = 0; g + 1 < group_first_item_.size(); ++g) {
    const int64_t items = group_first_item_[g + 1] - group_first_item_[g];
    group_first_job_.push_back(group_first_job_.back() + (items + batch_size_ - 1) / batch_size_);
  }
  num_jobs_ = group_first_job_.back();
}

SweepExpander::Combo SweepExpander::ComboAt(int64_t combination) const {
  if (spec_.combine == SweepSpec::Combine::kZip) {
    const size_t i = static_cast<size_t>(zip_order_[combination]);
    return Combo{ZipEntry(i, spec_.sizes.size()),
                 ZipEntry(i, spec_.steps.size()),
                 ZipEntry(i, spec_.samplers.size()),
                 ZipEntry(i, spec_.loras.size()),
                 ZipEntry(i, spec_.prompts.size()),
                 ZipEntry(i, spec_.negative_prompts.size()),
                 ZipEntry(i, spec_.guidance_scales.size()),
                 ZipEntry(i, spec_.seeds.size()),
                 ZipEntry(i, spec_.prompts_2.size()),
                 ZipEntry(i, spec_.negative_prompts_2.size()),
                 ZipEntry(i, spec_.original_sizes.size()),
                 ZipEntry(i, spec_.crops_top_left.size()),
                 ZipEntry(i, spec_.target_sizes.size()),
                 ZipEntry(i, spec_.guidance_rescales.size())};
  }
  // Mixed radix, innermost digit first.
  uint64_t rest = static_cast<uint64_t>(combination);
  auto digit = [&rest](size_t radix) {
    const size_t d = rest % radix;
    rest /= radix;
    return d;
  };
  Combo c{};
  c.seed = digit(spec_.seeds.size());
  c.guidance = digit(spec_.guidance_scales.size());
  c.rescale = digit(spec_.guidance_rescales.size());
  c.target = digit(spec_.target_sizes.size());
  c.crop = digit(spec_.crops_top_left.size());
  c.original = digit(spec_.original_sizes.size());
  c.negative_2 = digit(spec_.negative_prompts_2.size());
  c.prompt_2 = digit(spec_.prompts_2.size());
  c.negative = digit(spec_.negative_prompts.size());
  c.prompt = digit(spec_.prompts.size());
  c.lora = digit(spec_.loras.size());
  c.sampler = digit(spec_.samplers.size());
  c.steps = digit(spec_.steps.size());
  c.size = digit(spec_.sizes.size());
  return c;
}

Item SweepExpander::ItemAt(int64_t index) const {
  const int64_t per = spec_.images_per_combination;
  const Combo c = ComboAt(index / per);
  Item item;
  item.index = index;
  item.prompt = spec_.prompts[c.prompt];
  item.negative_prompt = spec_.negative_prompts[c.negative];
  item.seed = spec_.seeds[c.seed] + static_cast<uint64_t>(index % per);
  item.guidance_scale = spec_.guidance_scales[c.guidance];
  item.steps = spec_.steps[c.steps];
  item.sampler = spec_.samplers[c.sampler];
  item.width = spec_.sizes[c.size].width;
  item.height = spec_.sizes[c.size].height;
  item.loras = spec_.loras[c.lora];
  item.prompt_2 = spec_.prompts_2[c.prompt_2];
  item.negative_prompt_2 = spec_.negative_prompts_2[c.negative_2];
  item.original_size = spec_.original_sizes[c.original];
  item.crop_top_left = spec_.crops_top_left[c.crop];
  item.target_size = spec_.target_sizes[c.target];
  item.negative_original_size = spec_.negative_original_size;
  item.negative_target_size = spec_.negative_target_size;
  item.negative_crop_top_left = spec_.negative_crop_top_left;
  item.guidance_rescale = spec_.guidance_rescales[c.rescale];
  return item;
}

JobItem ToJobItem(const Item& item, std::string file_name) {
  JobItem j;
  j.index = item.index;
  j.file_name = std::move(file_name);
  j.prompt = item.prompt;
  j.negative_prompt = item.negative_prompt;
  j.seed = item.seed;
  j.guidance_scale = item.guidance_scale;
  j.prompt_2 = item.prompt_2;
  j.negative_prompt_2 = item.negative_prompt_2;
  j.original_width = item.original_size.width;
  j.original_height = item.original_size.height;
  j.crop_top = item.crop_top_left.top;
  j.crop_left = item.crop_top_left.left;
  j.target_width = item.target_size.width;
  j.target_height = item.target_size.height;
  j.negative_original_width = item.negative_original_size.width;
  j.negative_original_height = item.negative_original_size.height;
  j.negative_crop_top = item.negative_crop_top_left.top;
  j.negative_crop_left = item.negative_crop_top_left.left;
  j.negative_target_width = item.negative_target_size.width;
  j.negative_target_height = item.negative_target_size.height;
  j.guidance_rescale = item.guidance_rescale;
  return j;
}

JobSlice SweepExpander::JobAt(int64_t job) const {
  int64_t group_first = 0, group_end = 0, job_in_group = 0;
  if (spec_.combine == SweepSpec::Combine::kProduct) {
    const int64_t group = job / jobs_per_group_;
    job_in_group = job % jobs_per_group_;
    group_first = group * items_per_group_;
    group_end = group_first + items_per_group_;
  } else {
    // The last group whose first job is <= job.
    const size_t g =
        std::upper_bound(group_first_job_.begin(), group_first_job_.end(), job) - group_first_job_.begin() - 1;
    job_in_group = job - group_first_job_[g];
    group_first = group_first_item_[g];
    group_end = group_first_item_[g + 1];
  }
  const int64_t first = group_first + job_in_group * batch_size_;
  return JobSlice{job, first, static_cast<int>(std::min<int64_t>(batch_size_, group_end - first))};
}

std::string SweepExpander::FileName(const Item& item) const {
  char buf[128];
  std::snprintf(buf, sizeof(buf), "%0*" PRId64 "-seed%" PRIu64 "-cfg%s.png", index_width_, item.index, item.seed,
                FormatGuidance(item.guidance_scale).c_str());
  return buf;
}

}  // namespace sdfarm::coordinator
