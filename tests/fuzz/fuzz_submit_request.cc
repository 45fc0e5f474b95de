// Fuzzes the coordinator's request validation: what Coordinator::Impl::Submit
// (coordinator/coordinator_service.cc) does with a client's spec_json before
// anything is stored: nlohmann parse, SweepSpec::FromJson under the
// coordinator's default SweepLimits, then SweepExpander for the image and job
// counts. Accepted specs are expanded and sampled (ItemAt / JobAt / FileName),
// as the scheduler does later.
//
// The input is the spec_json bytes, so corpus files are plain JSON.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string_view>

#include "coordinator/sweep_expander.h"
#include "coordinator/sweep_spec.h"
#include "fuzz_check.h"
#include "sweep_checks.h"

using sdfarm::coordinator::SweepLimits;
using sdfarm::coordinator::SweepSpec;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view spec_json(reinterpret_cast<const char*>(data), size);
  // As Submit: a parse error or a non-object is refused before FromJson.
  nlohmann::json json = nlohmann::json::parse(spec_json, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) return 0;
  const SweepLimits limits;  // CoordinatorOptions::limits' default
  auto spec = SweepSpec::FromJson(json, limits, /*random_seed=*/size);
  if (!spec.ok()) {
    FUZZ_CHECK(spec.status().code() == absl::StatusCode::kInvalidArgument);
    return 0;
  }
  FUZZ_CHECK(sdfarm::coordinator::Validate(*spec, limits).ok());
  // CoordinatorOptions::job_size's default, and one of the rest of --job-size's 1..256.
  sdfarm::coordinator::fuzz::CheckExpansion(*spec, limits, 4);
  sdfarm::coordinator::fuzz::CheckExpansion(*spec, limits, 1 + static_cast<int>(size % 256));
  // What Submit stores in Redis, and LoadSweep reads back after a restart.
  const nlohmann::json canonical = spec->ToJson();
  SweepLimits reload = limits;
  reload.max_images = INT64_MAX;
  auto again = SweepSpec::FromJson(nlohmann::json::parse(canonical.dump()), reload, 0);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(*again == *spec);
  return 0;
}
