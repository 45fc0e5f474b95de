// Rebuilding a sweep's Redis state from its folder (see sweep_adopt.h).
#include "coordinator/sweep_adopt.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace sdfarm::coordinator {
namespace {

namespace fs = std::filesystem;

bool IsPlainDir(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool IsPlainFile(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace

absl::StatusOr<SweepFolder> ReadSweepFolder(const std::string& root, const std::string& name, SweepLimits limits) {
  if (!IsSafeFileName(name)) return absl::InvalidArgumentError("'" + name + "' is not a valid sweep name");
  const std::string dir = root + "/" + name;
  if (!IsPlainDir(dir)) return absl::NotFoundError("there is no sweep folder " + dir);
  const std::string spec_path = dir + "/sweep.json";
  if (!IsPlainFile(spec_path)) {
    return absl::NotFoundError(spec_path + " is missing: the folder does not say what the sweep was");
  }
  std::ifstream in(spec_path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  SweepFolder out;
  out.spec_json = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (out.spec_json.is_discarded() || !out.spec_json.is_object()) {
    return absl::InvalidArgumentError(spec_path + " is not a JSON object");
  }
  limits.max_images = INT64_MAX;  // accepted once; a later, smaller limit must not strand it
  auto spec = SweepSpec::FromJson(out.spec_json, limits, 0);
  if (!spec.ok()) return absl::InvalidArgumentError(absl::StrCat(spec_path, ": ", spec.status().message()));
  out.spec = std::move(*spec);
  if (out.spec.name != name) {
    return absl::InvalidArgumentError(absl::StrCat(spec_path, " names the sweep '", out.spec.name, "', not '", name, "'"));
  }
  std::ifstream manifest(dir + "/metadata.jsonl");
  std::string line;
  if (std::getline(manifest, line)) {
    nlohmann::json row = nlohmann::json::parse(line, nullptr, false);
    if (row.is_object() && row.contains("sweep_id") && row["sweep_id"].is_string()) {
      const std::string id = row["sweep_id"].get<std::string>();
      const bool hex = !id.empty() && id.size() <= 64 &&
                       std::all_of(id.begin(), id.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
      if (hex) out.sweep_id = id;
    }
  }
  return out;
}

std::vector<std::string> SweepFoldersUnder(const std::string& root) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    const std::string dir = root + "/" + name;
    if (!IsSafeFileName(name) || !IsPlainDir(dir)) continue;
    if (!IsPlainFile(dir + "/sweep.json") || fs::exists(dir + "/" + kRemovedMarker, ec)) continue;
    out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

int64_t ItemIndexOfFileName(const std::string& file_name) {
  int64_t v = 0;
  size_t i = 0;
  for (; i < file_name.size() && file_name[i] >= '0' && file_name[i] <= '9' && i < 18; ++i) {
    v = v * 10 + (file_name[i] - '0');
  }
  return i > 0 && i < file_name.size() && file_name[i] == '-' ? v : -1;
}

int64_t LastRecordedItem(const SweepOutput& output) {
  int64_t last = -1;
  for (const std::string& f : output.recorded_files()) last = std::max(last, ItemIndexOfFileName(f));
  return last;
}

int64_t RecordedJobRun(const SweepExpander& expander, const SweepOutput& output, int64_t from, int64_t limit) {
  int64_t n = 0;
  for (int64_t j = from; j < expander.num_jobs() && n < limit; ++j, ++n) {
    const JobSlice job = expander.JobAt(j);
    for (int64_t i = job.first_item; i < job.first_item + job.count; ++i) {
      if (!output.IsRecorded(expander.FileName(expander.ItemAt(i)))) return n;
    }
  }
  return n;
}

}  // namespace sdfarm::coordinator
