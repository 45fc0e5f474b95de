#include "tests/farm/sweep_check.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "absl/strings/str_cat.h"
#include "worker/engine/a1111_parameters.h"
#include "worker/engine/png_io.h"

namespace sdfarm::testing {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr size_t kMaxProblems = 20;

void Problem(SweepFolderCheck& c, const std::string& text) {
  if (c.problems.size() < kMaxProblems) c.problems.push_back(text);
}

template <typename T>
bool RowHas(const json& row, const char* key, const T& want) {
  if (!row.contains(key)) return false;
  try {
    return row[key].get<T>() == want;
  } catch (const json::exception&) {
    return false;
  }
}

}  // namespace

std::string SweepFolderCheck::Summary() const {
  std::string out = absl::StrCat("expected ", expected, ", found ", images_found, ", rows ", manifest_rows,
                                 ", duplicate rows ", duplicate_rows, ", unreadable rows ", unreadable_rows,
                                 ", missing ", missing, ", unexpected ", unexpected, ", invalid PNGs ",
                                 invalid_pngs, ", parameter mismatches ", parameter_mismatches,
                                 ", leftover files ", leftover_files, sweep_json ? "" : ", no sweep.json");
  for (const std::string& p : problems) absl::StrAppend(&out, "\n  ", p);
  return out;
}

SweepFolderCheck CheckSweepFolder(const std::string& dir, const coordinator::SweepExpander& expander,
                                  const std::string& model) {
  SweepFolderCheck c;
  c.expected = expander.num_items();
  std::map<std::string, int64_t> expected;  // file name -> item index
  for (int64_t i = 0; i < expander.num_items(); ++i) expected[expander.FileName(expander.ItemAt(i))] = i;

  // The folder: PNGs, metadata.jsonl, sweep.json, and nothing else.
  std::set<std::string> pngs;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name == "metadata.jsonl") continue;
    if (name == "sweep.json") {
      c.sweep_json = true;
      continue;
    }
    if (e.is_regular_file() && name[0] != '.' && e.path().extension() == ".png") {
      pngs.insert(name);
      if (!expected.count(name)) {
        ++c.unexpected;
        Problem(c, "unexpected image " + name);
      }
      continue;
    }
    ++c.leftover_files;
    Problem(c, "leftover file " + name);
  }
  if (ec) Problem(c, "cannot list " + dir + ": " + ec.message());
  for (const auto& [name, index] : expected) {
    if (pngs.count(name)) {
      ++c.images_found;
    } else {
      ++c.missing;
      Problem(c, "missing image " + name);
    }
  }

  // The manifest: one row per expected image.
  std::set<std::string> rows;
  std::ifstream in(dir + "/metadata.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    ++c.manifest_rows;
    json row = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (row.is_discarded() || !row.is_object() || !row.contains("file_name") || !row["file_name"].is_string()) {
      ++c.unreadable_rows;
      Problem(c, "unreadable manifest row: " + line.substr(0, 200));
      continue;
    }
    const std::string name = row["file_name"];
    if (!rows.insert(name).second) {
      ++c.duplicate_rows;
      Problem(c, "duplicate manifest row for " + name);
      continue;
    }
    auto it = expected.find(name);
    if (it == expected.end()) {
      ++c.unexpected;
      Problem(c, "manifest row for an image the sweep does not have: " + name);
      continue;
    }
    const coordinator::Item item = expander.ItemAt(it->second);
    const std::string path = dir + "/" + name;
    if (!pngs.count(name)) continue;  // counted as missing
    auto image = engine::ReadPng(path, 3);
    auto text = engine::ReadPngText(path);
    std::string embedded;
    bool has_parameters = false;
    if (text.ok()) {
      for (const auto& [k, v] : *text) {
        if (k == "parameters") {
          embedded = v;
          has_parameters = true;
        }
      }
    }
    if (!image.ok() || !has_parameters || image->width != item.width || image->height != item.height) {
      ++c.invalid_pngs;
      Problem(c, absl::StrCat(name, ": not a valid ", item.width, "x", item.height, " PNG with parameters",
                              image.ok() ? "" : absl::StrCat(" (", image.status().message(), ")")));
      continue;
    }
    auto p = engine::ParseA1111Parameters(embedded);
    std::string why;
    if (!p.ok()) {
      why = "its parameters do not parse";
    } else if (!RowHas<std::string>(row, "parameters", embedded)) {
      why = "the row's parameters differ from the PNG's";
    } else if (p->prompt != item.prompt || p->seed != item.seed || p->cfg_scale != item.guidance_scale ||
               p->steps != item.steps || p->width != item.width || p->height != item.height) {
      why = absl::StrCat("the PNG carries the parameters of another image (seed ", p->seed, ", cfg ", p->cfg_scale,
                         ")");
    } else if (!RowHas<std::string>(row, "prompt", item.prompt) || !RowHas<uint64_t>(row, "seed", item.seed) ||
               !RowHas<double>(row, "guidance_scale", item.guidance_scale) ||
               !RowHas<int>(row, "steps", item.steps) || !RowHas<int>(row, "width", item.width) ||
               !RowHas<int>(row, "height", item.height) || !RowHas<int64_t>(row, "item_index", item.index) ||
               !RowHas<std::string>(row, "sampler", item.sampler) || !RowHas<std::string>(row, "model", model)) {
      why = "the row's fields differ from the item";
    }
    if (!why.empty()) {
      ++c.parameter_mismatches;
      Problem(c, name + ": " + why);
    }
  }
  for (const auto& [name, index] : expected) {
    if (pngs.count(name) && !rows.count(name)) {
      ++c.missing;
      Problem(c, "image without a manifest row: " + name);
    }
  }
  return c;
}

}  // namespace sdfarm::testing
