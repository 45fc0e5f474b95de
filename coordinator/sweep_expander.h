// SweepExpander: turns a validated SweepSpec into numbered items (one image
// each) and jobs (what one worker renders in one batch), computed by index so
// that a sweep of millions of images never exists in memory as a list.
//
// Usage:
//   SweepExpander expander(spec, /*batch_size=*/8);
//   for (int64_t j = 0; j < expander.num_jobs(); ++j) {
//     JobSlice job = expander.JobAt(j);
//     for (int64_t i = job.first_item; i < job.first_item + job.count; ++i) {
//       Item item = expander.ItemAt(i);   // ... render, save as expander.FileName(item)
//     }
//   }
//
// Item order. Items are numbered so that the axes a job cannot mix (size,
// steps, sampler, LoRA set: what a worker batch must share, with the model)
// are outermost, then prompt, negative prompt, guidance scale, seed, and the
// images_per_combination copies (seed+k) innermost:
//   product: index = mixed-radix number over
//            [size, steps, sampler, loras, prompt, negative, prompt_2, negative_2,
//             original_size, crop_top_left, target_size, guidance_rescale, guidance, seed, k]
//            (the SDXL axes have length 1 unless a spec sets them, so other
//            sweeps number their items as before they existed)
//   zip:     combination i takes entry i of every list (entry 0 of a length-1
//            list); combinations are stably sorted by (size, steps, sampler,
//            LoRA set, prompt text, negative text), then each yields its k
//            copies. The sort is O(L log L) at construction, L = the longest list.
// A "group" is a maximal run of items sharing size, steps, sampler and LoRA set.
// (A sweep without LoRAs has one set, so its numbering is what it was before
// LoRA sets existed.)
//
// Jobs cut each group into consecutive runs of batch_size items (the last
// run of a group may be shorter) and never cross a group boundary. Cutting
// runs rather than one job per prompt keeps batches full: a prompt with K
// items per group (guidance x seeds x images_per_combination) is contiguous,
// so a job holds at most ceil((batch_size-1)/K)+1 prompts, and exactly one
// whenever K is a multiple of batch_size. Encoding a second prompt costs far
// less than half-empty batches would.
//
// Costs: ItemAt and num_* are O(1); JobAt is O(1) for product sweeps and
// O(log #groups) for zip sweeps. Memory is O(1) for product sweeps and O(L)
// for zip sweeps (L <= SweepLimits::max_list).
#ifndef SDFARM_COORDINATOR_SWEEP_EXPANDER_H_
#define SDFARM_COORDINATOR_SWEEP_EXPANDER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "coordinator/sweep_spec.h"

namespace sdfarm::coordinator {

struct Item {
  int64_t index = 0;
  std::string prompt, negative_prompt;
  uint64_t seed = 0;
  double guidance_scale = 0;
  int steps = 0;
  std::string sampler;
  int width = 0, height = 0;
  std::vector<LoraUse> loras;
  // SDXL (sweep_spec.h): "" / Size{0, 0} / 0 are the defaults.
  std::string prompt_2, negative_prompt_2;
  Size original_size{0, 0}, target_size{0, 0};
  Crop crop_top_left;
  Size negative_original_size{0, 0}, negative_target_size{0, 0};
  Crop negative_crop_top_left;
  double guidance_rescale = 0;
};

// The job payload's item for `item`, stored as `file_name`.
JobItem ToJobItem(const Item& item, std::string file_name);

// Items [first_item, first_item + count) of one group; 1 <= count <= batch_size.
struct JobSlice {
  int64_t job_index = 0;
  int64_t first_item = 0;
  int count = 0;
};

class SweepExpander {
 public:
  // `spec` must pass Validate() (an invalid one gives no crash, only
  // meaningless items); it is copied. A batch_size below 1 is taken as 1.
  SweepExpander(const SweepSpec& spec, int batch_size);

  int64_t num_items() const { return num_items_; }
  // 0 <= index < num_items().
  Item ItemAt(int64_t index) const;

  int64_t num_jobs() const { return num_jobs_; }
  // 0 <= job < num_jobs().
  JobSlice JobAt(int64_t job) const;

  // "<index>-seed<seed>-cfg<guidance>.png" with the index zero-padded to the
  // width of num_items()-1 (so names sort in item order), e.g.
  // "000042-seed7-cfg7.5.png"; guidance in its shortest exact form ("7", "7.5").
  // Unique within the sweep because the index is.
  std::string FileName(const Item& item) const;

 private:
  // A combination before its images_per_combination copies: indices into the spec's lists.
  struct Combo {
    size_t size, steps, sampler, lora, prompt, negative, guidance, seed;
    size_t prompt_2, negative_2, original, crop, target, rescale;
  };
  Combo ComboAt(int64_t combination) const;

  SweepSpec spec_;
  int batch_size_;
  int64_t num_items_ = 0;
  int64_t num_jobs_ = 0;
  int index_width_ = 1;

  // Product sweeps: every group has the same number of items.
  int64_t items_per_group_ = 0;
  int64_t jobs_per_group_ = 0;

  // Zip sweeps: combination order, and per group its first item and first job
  // (each with a final sentinel entry).
  std::vector<int32_t> zip_order_;
  std::vector<int64_t> group_first_item_;
  std::vector<int64_t> group_first_job_;
};

}  // namespace sdfarm::coordinator

#endif  // SDFARM_COORDINATOR_SWEEP_EXPANDER_H_
