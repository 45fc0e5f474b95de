// The size of a sweep that names none: the served model's own size, as
// diffusers' pipelines default to (UNet sample_size x the VAE's scale factor:
// 1024x1024 for SDXL base, 512x512 for SD 1.5, 768x768 for SD 2.1), which
// each worker reports when it registers (WorkerInfo.native_width/height).
//
//   if (spec.size_from_model) {
//     const std::string why = FillDefaultSize(&spec, earlier_spec_or_null, live_native_sizes);
//     // spec.sizes == {the size}; spec.size_from_model == false; `why` for the Submit reply
//   }
//
// The filled size is part of the sweep's canonical spec (Redis, sweep.json),
// so restarts and adoption see the size the sweep was rendered at. Which
// size, in this order:
//   1. the sweep of the same name (in memory or in its folder's sweep.json)
//      when its spec is this one at some size: a resubmission stays the same
//      sweep (and is adopted, or refused as a taken name, as before) even if
//      the fleet changed meanwhile;
//   2. the native size the live workers of the model report;
//   3. 512x512 (the spec's former default) when no live worker of the model
//      says (none is live: a --wait-for-workers sweep; or workers of before
//      this field).
#ifndef SDFARM_COORDINATOR_DEFAULT_SIZE_H_
#define SDFARM_COORDINATOR_DEFAULT_SIZE_H_

#include <string>
#include <vector>

#include "coordinator/sweep_spec.h"

namespace sdfarm::coordinator {

// Sets spec->sizes to the chosen size and clears size_from_model; returns
// what was chosen and why (a line for the Submit reply). A spec that names a
// size is left as it is, with "". `earlier`: the spec of the sweep with the
// same name, or nullptr. `native`: the sizes live workers of spec->model
// report (0x0 entries, from older workers, are ignored; the first other wins).
std::string FillDefaultSize(SweepSpec* spec, const SweepSpec* earlier, const std::vector<Size>& native);

}  // namespace sdfarm::coordinator

#endif  // SDFARM_COORDINATOR_DEFAULT_SIZE_H_
