// Fuzzes the sweep spec parser (coordinator/sweep_spec.h): ParseSweepText on
// YAML (first input byte odd, e.g. 'y') or JSON (even, e.g. 'j'), the rest of the input being the
// text. Accepted specs must pass Validate, survive the documented
// ToJson -> FromJson round trip unchanged, and expand.
//
// prompts_file / negative_prompts_file make ParseSweepText read files (it is
// the client side's parser). Inputs naming a path with a '/' in one are
// skipped, so the fuzzer cannot wander into /dev/stdin or /dev/zero; plain
// names are read from the current directory (scripts/fuzz runs the targets
// in a scratch folder holding a prompts.txt).
//
// Smaller SweepLimits than the defaults keep each run fast; the limit checks
// are the same code whatever the numbers.
#include <yaml-cpp/yaml.h>

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "coordinator/sweep_expander.h"
#include "coordinator/sweep_spec.h"
#include "fuzz_check.h"
#include "sweep_checks.h"

namespace {

using sdfarm::coordinator::ParseSweepText;
using sdfarm::coordinator::SweepLimits;
using sdfarm::coordinator::SweepSpec;

bool SafeFileValue(const std::string& key, const std::string& value) {
  return !key.ends_with("_file") || value.find('/') == std::string::npos;
}

// True when the spec names no file outside the current directory.
bool FilesAreLocal(std::string_view text, bool yaml) {
  // Only a key spelled with "_file", or with an escape, can be one.
  if (text.find("_file") == std::string_view::npos && text.find('\\') == std::string_view::npos) return true;
  if (yaml) {
    try {
      const YAML::Node root = YAML::Load(std::string(text));
      if (!root.IsMap()) return true;
      for (const auto& kv : root) {
        if (!kv.first.IsScalar() || !kv.second.IsScalar()) continue;
        if (!SafeFileValue(kv.first.Scalar(), kv.second.Scalar())) return false;
      }
    } catch (...) {
      return true;  // ParseSweepText fails the same way, before reading files
    }
    return true;
  }
  const nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!json.is_object()) return true;
  for (auto it = json.begin(); it != json.end(); ++it) {
    if (it.value().is_string() && !SafeFileValue(it.key(), it.value().get<std::string>())) return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool yaml = (data[0] & 1) != 0;
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  if (!FilesAreLocal(text, yaml)) return -1;  // -1: keep it out of the corpus

  SweepLimits limits;
  limits.max_images = 100'000;
  limits.max_list = 1000;
  limits.max_prompt_chars = 1000;
  auto spec = ParseSweepText(text, yaml, limits, /*random_seed=*/size);
  if (!spec.ok()) {
    FUZZ_CHECK(spec.status().code() == absl::StatusCode::kInvalidArgument);
    return 0;
  }
  FUZZ_CHECK(sdfarm::coordinator::Validate(*spec, limits).ok());

  // The canonical form reads back as the same spec, as JSON value and as text.
  const nlohmann::json canonical = spec->ToJson();
  auto again = SweepSpec::FromJson(canonical, limits, /*random_seed=*/size + 1);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(*again == *spec);
  auto reparsed = ParseSweepText(canonical.dump(), /*yaml=*/false, limits, size + 2);
  FUZZ_CHECK(reparsed.ok());
  FUZZ_CHECK(*reparsed == *spec);

  sdfarm::coordinator::fuzz::CheckExpansion(*spec, limits, 8);
  return 0;
}
