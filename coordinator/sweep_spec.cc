#include "coordinator/sweep_spec.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <tuple>
#include <sstream>
#include <unordered_set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace sdfarm::coordinator {
namespace {

using Json = nlohmann::json;

// Debian's Abseil has its own string_view type, so its string helpers do not
// take std::string_view; these few are local.
std::string_view Trim(std::string_view s) {
  const size_t first = s.find_first_not_of(" \t\r\n\f\v");
  if (first == std::string_view::npos) return {};
  return s.substr(first, s.find_last_not_of(" \t\r\n\f\v") - first + 1);
}

std::vector<std::string_view> SplitCommas(std::string_view s) {
  std::vector<std::string_view> parts;
  for (size_t start = 0;;) {
    const size_t comma = s.find(',', start);
    parts.push_back(s.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start));
    if (comma == std::string_view::npos) return parts;
    start = comma + 1;
  }
}

// Shows a user value in an error message: escaped (a NUL or a newline must be
// visible) and shortened, since a prompt can be thousands of characters.
std::string Quote(std::string_view value) {
  constexpr size_t kMaxShown = 60;
  std::string shown = absl::CHexEscape(std::string(value.substr(0, kMaxShown)));
  if (value.size() > kMaxShown) shown += "...";
  return "\"" + shown + "\"";
}

// True when `value` nests more than `limit` arrays/objects deep; recurses at
// most `limit` levels itself.
bool NestsDeeperThan(const Json& value, int limit) {
  if (!value.is_structured()) return false;
  if (limit == 0) return true;
  for (const Json& v : value) {
    if (NestsDeeperThan(v, limit - 1)) return true;
  }
  return false;
}

std::string QuoteJson(const Json& value) {
  if (value.is_string()) return Quote(value.get_ref<const std::string&>());
  // Found with the fuzz targets (tests/fuzz): dump() recurses once per nesting
  // level and nlohmann parses any depth, so a spec_json like {"name": [[[...]]]}
  // about 100000 levels deep (200 KB) overflowed the coordinator's stack while
  // building this error message. Such values are not shown.
  if (NestsDeeperThan(value, 32)) return value.is_array() ? "[...]" : "{...}";
  std::string dumped;
  try {
    dumped = value.dump();
  } catch (const std::exception&) {
    dumped = "<unprintable>";
  }
  if (dumped.size() > 60) dumped = dumped.substr(0, 60) + "...";
  return dumped;
}

// Where the spec came from, for the parts of parsing that depend on it.
struct ParseContext {
  bool allow_files = false;          // *_file fields are read (client side only)
  std::filesystem::path base_dir;    // *_file paths are relative to this
  std::map<std::string, int> lines;  // top-level YAML field -> 1-based line, for messages
};

absl::Status FieldError(const ParseContext& ctx, const std::string& field, const std::string& message) {
  std::string text = field + ": " + message;
  if (auto it = ctx.lines.find(field); it != ctx.lines.end()) absl::StrAppend(&text, " (line ", it->second, ")");
  return absl::InvalidArgumentError(text);
}

bool ParseUint64(std::string_view text, uint64_t* out) {
  if (text.empty()) return false;
  const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), *out);
  return ec == std::errc() && ptr == text.data() + text.size();
}

// Levenshtein distance, for "did you mean" on unknown fields.
int EditDistance(std::string_view a, std::string_view b) {
  std::vector<int> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = static_cast<int>(j);
  for (size_t i = 1; i <= a.size(); ++i) {
    int diag = row[0];
    row[0] = static_cast<int>(i);
    for (size_t j = 1; j <= b.size(); ++j) {
      const int up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// Appends the seeds of one ParseSeeds entry list, drawing random:N from `rng`
// so that several random entries in one spec give different seeds.
absl::Status AppendSeeds(std::string_view text, std::mt19937_64& rng, int64_t max_count, std::vector<uint64_t>* seeds) {
  if (Trim(text).empty()) return absl::InvalidArgumentError("empty seed list");
  for (std::string_view raw : SplitCommas(text)) {
    const std::string_view part = Trim(raw);
    if (part.empty()) return absl::InvalidArgumentError("empty entry in seed list " + Quote(text));
    const int64_t room = max_count - static_cast<int64_t>(seeds->size());
    if (part.starts_with("random:")) {
      uint64_t n = 0;
      if (!ParseUint64(Trim(part.substr(7)), &n) || n == 0) {
        return absl::InvalidArgumentError("bad seed entry " + Quote(part) + " (expected random:N with N >= 1)");
      }
      if (n > static_cast<uint64_t>(std::max<int64_t>(room, 0))) {
        return absl::InvalidArgumentError("seed list " + Quote(text) + " has more than " + std::to_string(max_count) +
                                          " seeds");
      }
      // Distinct, so that random:N really gives N different images.
      std::unordered_set<uint64_t> drawn;
      drawn.reserve(n);
      while (drawn.size() < n) {
        const uint64_t s = rng() >> 32;  // [0, 2^32): every engine and tool accepts these
        if (drawn.insert(s).second) seeds->push_back(s);
      }
      continue;
    }
    uint64_t lo = 0, hi = 0;
    // A dash after the first character is a range; a leading one is a negative number.
    const size_t dash = part.find('-', 1);
    if (dash == std::string_view::npos) {
      if (!ParseUint64(part, &lo)) {
        return absl::InvalidArgumentError("bad seed " + Quote(part) +
                                          " (seeds are integers 0 to 2^64-1, ranges like 0-99, or random:N)");
      }
      hi = lo;
    } else if (!ParseUint64(Trim(part.substr(0, dash)), &lo) || !ParseUint64(Trim(part.substr(dash + 1)), &hi)) {
      return absl::InvalidArgumentError("bad seed range " + Quote(part) + " (expected like 0-99)");
    }
    if (hi < lo) return absl::InvalidArgumentError("seed range " + Quote(part) + " runs backwards");
    if (room <= 0 || hi - lo >= static_cast<uint64_t>(room)) {
      return absl::InvalidArgumentError("seed list " + Quote(text) + " has more than " + std::to_string(max_count) +
                                        " seeds");
    }
    for (uint64_t s = lo;; ++s) {
      seeds->push_back(s);
      if (s == hi) break;
    }
  }
  return absl::OkStatus();
}

// ---- Typed readers over JSON values. Every error names the field. ----

// A field that takes one value or a list of them.
std::vector<const Json*> Elements(const Json& value) {
  std::vector<const Json*> out;
  if (value.is_array()) {
    for (const Json& v : value) out.push_back(&v);
  } else {
    out.push_back(&value);
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> ReadStrings(const ParseContext& ctx, const std::string& field,
                                                     const Json& value, const SweepLimits& limits) {
  std::vector<std::string> out;
  if (value.is_array() && value.empty()) return FieldError(ctx, field, "is an empty list");
  if (value.is_array() && value.size() > static_cast<size_t>(limits.max_list)) {
    return FieldError(ctx, field, absl::StrCat("has ", value.size(), " entries (limit ", limits.max_list, ")"));
  }
  for (const Json* v : Elements(value)) {
    if (!v->is_string()) {
      return FieldError(ctx, field, "expected a string (quote it in YAML), got " + QuoteJson(*v));
    }
    out.push_back(v->get<std::string>());
  }
  return out;
}

// One LoRA: "name", "name:scale" (the last ':' when a number follows it) or {name: N, scale: S}.
absl::StatusOr<LoraUse> ReadLora(const ParseContext& ctx, const std::string& field, const Json& v) {
  LoraUse lora;
  if (v.is_string()) {
    lora.name = v.get<std::string>();
    const size_t colon = lora.name.rfind(':');
    if (colon != std::string::npos) {
      const std::string number = lora.name.substr(colon + 1);
      double scale = 0;
      const auto [ptr, ec] = std::from_chars(number.data(), number.data() + number.size(), scale);
      if (number.empty() || ec != std::errc() || ptr != number.data() + number.size()) {
        return FieldError(ctx, field, "bad LoRA " + QuoteJson(v) + ": want name or name:scale (e.g. style:0.8)");
      }
      lora.scale = scale;
      lora.name.resize(colon);
    }
    return lora;
  }
  if (v.is_object()) {
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (it.key() != "name" && it.key() != "scale") {
        return FieldError(ctx, field, "a LoRA has the fields name and scale, not \"" + it.key() + "\"");
      }
    }
    if (!v.contains("name") || !v.at("name").is_string()) {
      return FieldError(ctx, field, "a LoRA needs a name, got " + QuoteJson(v));
    }
    lora.name = v.at("name").get<std::string>();
    if (v.contains("scale")) {
      if (!v.at("scale").is_number()) return FieldError(ctx, field, "LoRA scale must be a number, got " + QuoteJson(v));
      lora.scale = v.at("scale").get<double>();
    }
    return lora;
  }
  return FieldError(ctx, field, "expected a LoRA (\"name:scale\" or {name, scale}), got " + QuoteJson(v));
}

// The loras axis: a list of sets; an entry that is not a list is a set of one.
absl::StatusOr<std::vector<std::vector<LoraUse>>> ReadLoraSets(const ParseContext& ctx, const std::string& field,
                                                              const Json& value, const SweepLimits& limits) {
  std::vector<std::vector<LoraUse>> sets;
  if (value.is_array() && value.empty()) return FieldError(ctx, field, "is an empty list (use [[]] for no LoRA)");
  if (value.is_array() && value.size() > static_cast<size_t>(limits.max_list)) {
    return FieldError(ctx, field, absl::StrCat("has ", value.size(), " entries (limit ", limits.max_list, ")"));
  }
  for (const Json* entry : Elements(value)) {
    std::vector<LoraUse> set;
    if (entry->is_array()) {
      for (const Json& one : *entry) {
        ASSIGN_OR_RETURN(LoraUse lora, ReadLora(ctx, field, one));
        set.push_back(std::move(lora));
      }
    } else if (!entry->is_null()) {
      ASSIGN_OR_RETURN(LoraUse lora, ReadLora(ctx, field, *entry));
      set.push_back(std::move(lora));
    }
    sets.push_back(std::move(set));
  }
  return sets;
}

absl::StatusOr<int64_t> ReadInteger(const ParseContext& ctx, const std::string& field, const Json& v) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int>::max())) {
      return FieldError(ctx, field, "value " + QuoteJson(v) + " is out of range");
    }
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) {
    const int64_t i = v.get<int64_t>();
    if (i < std::numeric_limits<int>::min() || i > std::numeric_limits<int>::max()) {
      return FieldError(ctx, field, "value " + QuoteJson(v) + " is out of range");
    }
    return i;
  }
  return FieldError(ctx, field, "expected an integer, got " + QuoteJson(v));
}

absl::StatusOr<int> ReadInt(const ParseContext& ctx, const std::string& field, const Json& v) {
  ASSIGN_OR_RETURN(int64_t i, ReadInteger(ctx, field, v));
  return static_cast<int>(i);
}

absl::StatusOr<std::vector<int>> ReadInts(const ParseContext& ctx, const std::string& field, const Json& value,
                                          const SweepLimits& limits) {
  if (value.is_array() && value.empty()) return FieldError(ctx, field, "is an empty list");
  if (value.is_array() && value.size() > static_cast<size_t>(limits.max_list)) {
    return FieldError(ctx, field, absl::StrCat("has ", value.size(), " entries (limit ", limits.max_list, ")"));
  }
  std::vector<int> out;
  for (const Json* v : Elements(value)) {
    ASSIGN_OR_RETURN(int i, ReadInt(ctx, field, *v));
    out.push_back(i);
  }
  return out;
}

absl::StatusOr<std::vector<double>> ReadNumbers(const ParseContext& ctx, const std::string& field, const Json& value,
                                                const SweepLimits& limits) {
  if (value.is_array() && value.empty()) return FieldError(ctx, field, "is an empty list");
  if (value.is_array() && value.size() > static_cast<size_t>(limits.max_list)) {
    return FieldError(ctx, field, absl::StrCat("has ", value.size(), " entries (limit ", limits.max_list, ")"));
  }
  std::vector<double> out;
  for (const Json* v : Elements(value)) {
    if (!v->is_number()) return FieldError(ctx, field, "expected a number, got " + QuoteJson(*v));
    out.push_back(v->get<double>());
  }
  return out;
}

absl::StatusOr<Size> ParseSizeText(const ParseContext& ctx, const std::string& field, std::string_view text) {
  const std::string_view t = Trim(text);
  const size_t x = t.find_first_of("xX");
  uint64_t w = 0, h = 0;
  if (x == std::string_view::npos || !ParseUint64(Trim(t.substr(0, x)), &w) ||
      !ParseUint64(Trim(t.substr(x + 1)), &h) || w > 1'000'000 || h > 1'000'000) {
    return FieldError(ctx, field, "bad size " + Quote(text) + " (expected WIDTHxHEIGHT, like 512x768)");
  }
  return Size{static_cast<int>(w), static_cast<int>(h)};
}

absl::StatusOr<std::vector<Size>> ReadSizes(const ParseContext& ctx, const std::string& field, const Json& value,
                                            const SweepLimits& limits) {
  if (value.is_array() && value.empty()) return FieldError(ctx, field, "is an empty list");
  if (value.is_array() && value.size() > static_cast<size_t>(limits.max_list)) {
    return FieldError(ctx, field, absl::StrCat("has ", value.size(), " entries (limit ", limits.max_list, ")"));
  }
  std::vector<Size> out;
  for (const Json* v : Elements(value)) {
    if (v->is_string()) {
      ASSIGN_OR_RETURN(Size s, ParseSizeText(ctx, field, v->get_ref<const std::string&>()));
      out.push_back(s);
    } else if (v->is_number_integer()) {
      ASSIGN_OR_RETURN(int side, ReadInt(ctx, field, *v));
      out.push_back(Size{side, side});
    } else if (v->is_object()) {
      if (v->size() != 2 || !v->contains("width") || !v->contains("height")) {
        return FieldError(ctx, field, "a size object takes exactly width and height, got " + QuoteJson(*v));
      }
      ASSIGN_OR_RETURN(int w, ReadInt(ctx, field + ".width", v->at("width")));
      ASSIGN_OR_RETURN(int h, ReadInt(ctx, field + ".height", v->at("height")));
      out.push_back(Size{w, h});
    } else {
      return FieldError(ctx, field, "expected a size like \"512x768\", got " + QuoteJson(*v));
    }
  }
  return out;
}

absl::StatusOr<std::vector<uint64_t>> ReadSeeds(const ParseContext& ctx, const std::string& field, const Json& value,
                                                std::mt19937_64& rng, const SweepLimits& limits) {
  if (value.is_array() && value.empty()) return FieldError(ctx, field, "is an empty list");
  std::vector<uint64_t> out;
  for (const Json* v : Elements(value)) {
    if (v->is_number_unsigned() || (v->is_number_integer() && v->get<int64_t>() >= 0)) {
      if (out.size() >= static_cast<size_t>(limits.max_list)) {
        return FieldError(ctx, field, absl::StrCat("has more than ", limits.max_list, " seeds"));
      }
      out.push_back(v->get<uint64_t>());
    } else if (v->is_string()) {
      if (absl::Status s = AppendSeeds(v->get_ref<const std::string&>(), rng, limits.max_list, &out); !s.ok()) {
        return FieldError(ctx, field, std::string(s.message()));
      }
    } else {
      return FieldError(ctx, field,
                        "expected a seed (0 to 2^64-1), a range like \"0-99\" or \"random:N\", got " + QuoteJson(*v));
    }
  }
  return out;
}

// Reads a prompts file: one prompt per line, blank lines skipped, trailing CR
// and surrounding whitespace removed.
absl::StatusOr<std::vector<std::string>> ReadPromptsFile(const ParseContext& ctx, const std::string& field,
                                                         const Json& value, const SweepLimits& limits) {
  if (!ctx.allow_files) {
    return FieldError(ctx, field,
                      "files are only read when parsing a spec file; send the prompts themselves (as ToJson does)");
  }
  if (!value.is_string() || value.get_ref<const std::string&>().empty()) {
    return FieldError(ctx, field, "expected a file path, got " + QuoteJson(value));
  }
  const std::string& name = value.get_ref<const std::string&>();
  std::filesystem::path path(name);
  if (path.is_relative()) path = ctx.base_dir / path;
  std::ifstream in(path, std::ios::binary);
  if (!in) return FieldError(ctx, field, "cannot open " + Quote(path.string()));
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    const std::string_view trimmed = Trim(line);
    if (trimmed.empty()) continue;
    if (out.size() >= static_cast<size_t>(limits.max_list)) {
      return FieldError(ctx, field, absl::StrCat(Quote(path.string()), " has more than ", limits.max_list, " prompts"));
    }
    out.emplace_back(trimmed);
  }
  if (in.bad()) return FieldError(ctx, field, "error reading " + Quote(path.string()));
  if (out.empty()) return FieldError(ctx, field, Quote(path.string()) + " holds no prompts");
  return out;
}

absl::StatusOr<Crop> ParseCropText(const ParseContext& ctx, const std::string& field, const Json& v) {
  if (!v.is_string()) return FieldError(ctx, field, "expected \"TOP,LEFT\" like \"0,0\", got " + QuoteJson(v));
  const std::string_view t = Trim(v.get_ref<const std::string&>());
  const size_t comma = t.find(',');
  uint64_t top = 0, left = 0;
  if (comma == std::string_view::npos || !ParseUint64(Trim(t.substr(0, comma)), &top) ||
      !ParseUint64(Trim(t.substr(comma + 1)), &left) || top > 1'000'000 || left > 1'000'000) {
    return FieldError(ctx, field, "bad crop " + QuoteJson(v) + " (expected \"TOP,LEFT\" in pixels, like \"0,0\")");
  }
  return Crop{static_cast<int>(top), static_cast<int>(left)};
}

// The SDXL fields (see sweep_spec.h). `pick` / `name_of` as in FromJsonImpl.
template <typename Pick, typename NameOf>
absl::Status ReadSdxlFields(const ParseContext& ctx, const Json& json, const SweepLimits& limits, const Pick& pick,
                            const NameOf& name_of, SweepSpec* spec) {
  for (const auto& [singular, plural, out] :
       {std::make_tuple("prompt_2", "prompts_2", &spec->prompts_2),
        std::make_tuple("negative_prompt_2", "negative_prompts_2", &spec->negative_prompts_2)}) {
    ASSIGN_OR_RETURN(const Json* v, pick(singular, plural));
    if (v != nullptr) {
      ASSIGN_OR_RETURN(*out, ReadStrings(ctx, name_of(singular, plural), *v, limits));
    }
  }
  for (const auto& [singular, plural, out] :
       {std::make_tuple("original_size", "original_sizes", &spec->original_sizes),
        std::make_tuple("target_size", "target_sizes", &spec->target_sizes)}) {
    ASSIGN_OR_RETURN(const Json* v, pick(singular, plural));
    if (v != nullptr) {
      ASSIGN_OR_RETURN(*out, ReadSizes(ctx, name_of(singular, plural), *v, limits));
    }
  }
  ASSIGN_OR_RETURN(const Json* crops, pick("crop_top_left", "crops_top_left"));
  if (crops != nullptr) {
    const std::string field = name_of("crop_top_left", "crops_top_left");
    if (crops->is_array() && crops->empty()) return FieldError(ctx, field, "is an empty list");
    if (crops->is_array() && crops->size() > static_cast<size_t>(limits.max_list)) {
      return FieldError(ctx, field, absl::StrCat("has ", crops->size(), " entries (limit ", limits.max_list, ")"));
    }
    spec->crops_top_left.clear();
    for (const Json* v : Elements(*crops)) {
      ASSIGN_OR_RETURN(Crop c, ParseCropText(ctx, field, *v));
      spec->crops_top_left.push_back(c);
    }
  }
  for (const auto& [field, out] : {std::make_pair("negative_original_size", &spec->negative_original_size),
                                   std::make_pair("negative_target_size", &spec->negative_target_size)}) {
    if (!json.contains(field)) continue;
    ASSIGN_OR_RETURN(std::vector<Size> one, ReadSizes(ctx, field, json.at(field), limits));
    if (one.size() != 1) return FieldError(ctx, field, "takes one size (it is not a sweep axis)");
    *out = one[0];
  }
  if (json.contains("negative_crop_top_left")) {
    ASSIGN_OR_RETURN(spec->negative_crop_top_left,
                     ParseCropText(ctx, "negative_crop_top_left", json.at("negative_crop_top_left")));
  }
  ASSIGN_OR_RETURN(const Json* rescales, pick("guidance_rescale", "guidance_rescales"));
  if (rescales != nullptr) {
    ASSIGN_OR_RETURN(spec->guidance_rescales,
                     ReadNumbers(ctx, name_of("guidance_rescale", "guidance_rescales"), *rescales, limits));
  }
  return absl::OkStatus();
}

// The one place spec fields are known: the parser dispatches on it and
// unknown-field messages suggest from it.
const std::vector<std::string>& KnownFields() {
  static const auto* fields =
      new std::vector<std::string>{"name",         "model",           "prompt",           "prompts",
                                   "prompts_file", "negative_prompt", "negative_prompts", "negative_prompts_file",
                                   "seed",         "seeds",           "guidance_scale",   "guidance_scales",
                                   "steps",        "sampler",         "samplers",         "size",
                                   "sizes",        "width",           "height",           "images_per_combination",
                                   "combine",      "priority",        "lora",             "loras",
                                   "vae",          "prompt_chunking", "prompt_2",         "prompts_2",
                                   "negative_prompt_2", "negative_prompts_2", "original_size", "original_sizes",
                                   "target_size",  "target_sizes",    "crop_top_left",    "crops_top_left",
                                   "negative_original_size", "negative_target_size", "negative_crop_top_left",
                                   "guidance_rescale", "guidance_rescales"};
  return *fields;
}

absl::StatusOr<SweepSpec> FromJsonImpl(const Json& json, const SweepLimits& limits, uint64_t random_seed,
                                       const ParseContext& ctx) {
  if (!json.is_object())
    return absl::InvalidArgumentError("a sweep spec must be a mapping of fields, got " + QuoteJson(json));
  for (auto it = json.begin(); it != json.end(); ++it) {
    const std::string& key = it.key();
    const auto& known = KnownFields();
    if (std::find(known.begin(), known.end(), key) != known.end()) continue;
    std::string best;
    int best_distance = 3;  // suggest only near misses
    for (const std::string& k : known) {
      if (const int d = EditDistance(key, k); d < best_distance) best_distance = d, best = k;
    }
    return FieldError(ctx, key, "unknown field" + (best.empty() ? "" : " (did you mean \"" + best + "\"?)"));
  }
  // `prompt` and `prompts` are one field; saying both is ambiguous.
  auto pick = [&](const std::string& singular, const std::string& plural) -> absl::StatusOr<const Json*> {
    const bool has_s = json.contains(singular), has_p = json.contains(plural);
    if (has_s && has_p) return FieldError(ctx, plural, "give \"" + singular + "\" or \"" + plural + "\", not both");
    if (has_s) return &json.at(singular);
    if (has_p) return &json.at(plural);
    return nullptr;
  };
  auto name_of = [&](const std::string& singular, const std::string& plural) {
    return json.contains(singular) ? singular : plural;
  };

  SweepSpec spec;
  for (const char* field : {"name", "model"}) {
    if (!json.contains(field)) return FieldError(ctx, field, "is required");
    const Json& v = json.at(field);
    if (!v.is_string()) return FieldError(ctx, field, "expected a string, got " + QuoteJson(v));
    (std::string_view(field) == "name" ? spec.name : spec.model) = v.get<std::string>();
  }

  // Prompts and negatives: inline values, then the file's lines.
  struct TextField {
    const char* singular;
    const char* plural;
    const char* file;
    std::vector<std::string>* out;
    bool required;
  };
  for (const TextField& f :
       {TextField{"prompt", "prompts", "prompts_file", &spec.prompts, true},
        TextField{"negative_prompt", "negative_prompts", "negative_prompts_file", &spec.negative_prompts, false}}) {
    ASSIGN_OR_RETURN(const Json* inline_value, pick(f.singular, f.plural));
    std::vector<std::string> values;
    if (inline_value != nullptr) {
      ASSIGN_OR_RETURN(values, ReadStrings(ctx, name_of(f.singular, f.plural), *inline_value, limits));
    }
    if (json.contains(f.file)) {
      ASSIGN_OR_RETURN(std::vector<std::string> lines, ReadPromptsFile(ctx, f.file, json.at(f.file), limits));
      values.insert(values.end(), lines.begin(), lines.end());
    }
    if (inline_value == nullptr && !json.contains(f.file)) {
      if (f.required) {
        return FieldError(ctx, f.plural,
                          absl::StrCat("is required (\"", f.singular, "\", \"", f.plural, "\" or \"", f.file, "\")"));
      }
      continue;  // keep the default
    }
    if (values.size() > static_cast<size_t>(limits.max_list)) {
      return FieldError(ctx, f.plural, absl::StrCat("has ", values.size(), " entries (limit ", limits.max_list, ")"));
    }
    *f.out = std::move(values);
  }

  std::mt19937_64 rng(random_seed);
  ASSIGN_OR_RETURN(const Json* seeds, pick("seed", "seeds"));
  if (seeds == nullptr) return FieldError(ctx, "seeds", "is required (e.g. seeds: \"0-9\" or seeds: \"random:10\")");
  ASSIGN_OR_RETURN(spec.seeds, ReadSeeds(ctx, name_of("seed", "seeds"), *seeds, rng, limits));

  ASSIGN_OR_RETURN(const Json* guidance, pick("guidance_scale", "guidance_scales"));
  if (guidance != nullptr) {
    ASSIGN_OR_RETURN(spec.guidance_scales,
                     ReadNumbers(ctx, name_of("guidance_scale", "guidance_scales"), *guidance, limits));
  }
  if (json.contains("steps")) {
    ASSIGN_OR_RETURN(spec.steps, ReadInts(ctx, "steps", json.at("steps"), limits));
  }
  ASSIGN_OR_RETURN(const Json* samplers, pick("sampler", "samplers"));
  if (samplers != nullptr) {
    ASSIGN_OR_RETURN(spec.samplers, ReadStrings(ctx, name_of("sampler", "samplers"), *samplers, limits));
  }

  ASSIGN_OR_RETURN(const Json* sizes, pick("size", "sizes"));
  const bool has_wh = json.contains("width") || json.contains("height");
  if (sizes != nullptr && has_wh) {
    return FieldError(ctx, json.contains("width") ? "width" : "height",
                      "give \"" + name_of("size", "sizes") + "\" or width and height, not both");
  }
  if (sizes != nullptr) {
    ASSIGN_OR_RETURN(spec.sizes, ReadSizes(ctx, name_of("size", "sizes"), *sizes, limits));
  }
  if (has_wh) {
    if (!json.contains("width")) return FieldError(ctx, "width", "is required when height is given");
    if (!json.contains("height")) return FieldError(ctx, "height", "is required when width is given");
    ASSIGN_OR_RETURN(int w, ReadInt(ctx, "width", json.at("width")));
    ASSIGN_OR_RETURN(int h, ReadInt(ctx, "height", json.at("height")));
    spec.sizes = {Size{w, h}};
  }
  spec.size_from_model = sizes == nullptr && !has_wh;

  if (json.contains("images_per_combination")) {
    ASSIGN_OR_RETURN(spec.images_per_combination,
                     ReadInt(ctx, "images_per_combination", json.at("images_per_combination")));
  }
  if (json.contains("combine")) {
    const Json& v = json.at("combine");
    if (v == "product") {
      spec.combine = SweepSpec::Combine::kProduct;
    } else if (v == "zip") {
      spec.combine = SweepSpec::Combine::kZip;
    } else {
      return FieldError(ctx, "combine", "expected \"product\" or \"zip\", got " + QuoteJson(v));
    }
  }
  if (json.contains("priority")) {
    ASSIGN_OR_RETURN(spec.priority, ReadInt(ctx, "priority", json.at("priority")));
  }
  ASSIGN_OR_RETURN(const Json* loras, pick("lora", "loras"));
  if (loras != nullptr) {
    // `lora:` names one set (a LoRA or a list of them); `loras:` is the axis of sets.
    const Json as_axis = name_of("lora", "loras") == "lora" ? Json::array({*loras}) : *loras;
    ASSIGN_OR_RETURN(spec.loras, ReadLoraSets(ctx, name_of("lora", "loras"), as_axis, limits));
  }
  if (json.contains("vae")) {
    const Json& v = json.at("vae");
    if (!v.is_string()) return FieldError(ctx, "vae", "expected a string, got " + QuoteJson(v));
    spec.vae = v.get<std::string>();
  }
  if (json.contains("prompt_chunking")) {
    const Json& v = json.at("prompt_chunking");
    if (!v.is_boolean()) return FieldError(ctx, "prompt_chunking", "expected true or false, got " + QuoteJson(v));
    spec.prompt_chunking = v.get<bool>();
  }

  RETURN_IF_ERROR(ReadSdxlFields(ctx, json, limits, pick, name_of, &spec));

  if (absl::Status s = Validate(spec, limits); !s.ok()) {
    // Point at the line of the offending field when the YAML told us.
    const std::string message(s.message());
    const std::string field = message.substr(0, message.find_first_of(":["));
    for (const auto& [key, line] : ctx.lines) {
      if (key == field || key + "s" == field) {  // the singular spelling, as written
        return absl::InvalidArgumentError(absl::StrCat(message, " (line ", line, ")"));
      }
    }
    return s;
  }
  return spec;
}

// ---- YAML -> JSON. YAML's plain scalars are untyped; type them the way
// YAML 1.2's core schema does, and keep quoted scalars strings. ----

constexpr int64_t kMaxYamlNodes = 4'000'000;  // aliases can make a small file expand enormously
// Found with the fuzz targets (tests/fuzz): an alias inside its own anchor
// ("&a [*a]") makes yaml-cpp build a cyclic node, and the recursion below
// overflowed the stack before the node budget ran out. A spec needs 3 levels.
constexpr int kMaxYamlDepth = 64;

absl::StatusOr<Json> YamlToJson(const YAML::Node& node, int64_t* budget, int depth = 0) {
  if (--*budget < 0) return absl::InvalidArgumentError("YAML document is too large (aliases expand too far?)");
  if (depth > kMaxYamlDepth) {
    return absl::InvalidArgumentError(
        absl::StrCat("YAML document nests more than ", kMaxYamlDepth, " levels deep (an alias inside its own anchor?)"));
  }
  switch (node.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      return Json(nullptr);
    case YAML::NodeType::Scalar: {
      const std::string& s = node.Scalar();
      if (node.Tag() != "?") return Json(s);  // quoted, or explicitly tagged: text as written
      if (s == "~" || s == "null" || s == "Null" || s == "NULL") return Json(nullptr);
      if (s == "true" || s == "True" || s == "TRUE") return Json(true);
      if (s == "false" || s == "False" || s == "FALSE") return Json(false);
      std::string_view digits = s;
      if (!digits.empty() && digits[0] == '+') digits.remove_prefix(1);
      uint64_t u = 0;
      if (ParseUint64(digits, &u)) return Json(u);
      int64_t i = 0;
      if (const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), i);
          ec == std::errc() && p == s.data() + s.size()) {
        return Json(i);
      }
      double d = 0;
      if (const auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), d);
          ec == std::errc() && p == digits.data() + digits.size() && std::isfinite(d) &&
          digits.find_first_of("0123456789") != std::string_view::npos) {
        return Json(d);
      }
      return Json(s);
    }
    case YAML::NodeType::Sequence: {
      Json out = Json::array();
      for (const YAML::Node& child : node) {
        ASSIGN_OR_RETURN(Json v, YamlToJson(child, budget, depth + 1));
        out.push_back(std::move(v));
      }
      return out;
    }
    case YAML::NodeType::Map: {
      Json out = Json::object();
      for (const auto& kv : node) {
        if (!kv.first.IsScalar()) {
          return absl::InvalidArgumentError(
              absl::StrCat("line ", kv.first.Mark().line + 1, ": keys must be plain names"));
        }
        const std::string key = kv.first.Scalar();
        if (out.contains(key)) {
          return absl::InvalidArgumentError(
              absl::StrCat("line ", kv.first.Mark().line + 1, ": duplicate field \"", key, "\""));
        }
        ASSIGN_OR_RETURN(Json v, YamlToJson(kv.second, budget, depth + 1));
        out[key] = std::move(v);
      }
      return out;
    }
  }
  return Json(nullptr);
}

absl::StatusOr<SweepSpec> ParseText(std::string_view text, bool yaml, const SweepLimits& limits, uint64_t random_seed,
                                    ParseContext ctx) {
  Json json;
  if (yaml) {
    YAML::Node root;
    try {
      root = YAML::Load(std::string(text));
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(
          absl::StrCat("YAML syntax error at line ", e.mark.line + 1, ", column ", e.mark.column + 1, ": ", e.msg));
    } catch (const std::exception& e) {
      return absl::InvalidArgumentError(absl::StrCat("YAML error: ", e.what()));
    }
    if (root.IsMap()) {
      for (const auto& kv : root) {
        if (kv.first.IsScalar()) ctx.lines.emplace(kv.first.Scalar(), kv.first.Mark().line + 1);
      }
    }
    int64_t budget = kMaxYamlNodes;
    try {
      ASSIGN_OR_RETURN(json, YamlToJson(root, &budget));
    } catch (const std::exception& e) {
      return absl::InvalidArgumentError(absl::StrCat("YAML error: ", e.what()));
    }
  } else {
    // nlohmann keeps the last of duplicate keys silently; a spec with two
    // "seeds" is a mistake worth reporting.
    std::vector<std::set<std::string>> keys;
    std::string duplicate;
    auto callback = [&](int depth, Json::parse_event_t event, Json& parsed) {
      if (event == Json::parse_event_t::object_start) keys.emplace_back();
      if (event == Json::parse_event_t::object_end && !keys.empty()) keys.pop_back();
      if (event == Json::parse_event_t::key && !keys.empty() && parsed.is_string() &&
          !keys.back().insert(parsed.get<std::string>()).second && duplicate.empty()) {
        duplicate = parsed.get<std::string>();
      }
      return true;
    };
    try {
      json = Json::parse(text.begin(), text.end(), callback);
    } catch (const std::exception& e) {
      return absl::InvalidArgumentError(absl::StrCat("JSON syntax error: ", e.what()));
    }
    if (!duplicate.empty()) return absl::InvalidArgumentError("duplicate field " + Quote(duplicate));
  }
  try {
    return FromJsonImpl(json, limits, random_seed, ctx);
  } catch (const std::exception& e) {  // not expected: the readers check types first
    return absl::InvalidArgumentError(absl::StrCat("bad sweep spec: ", e.what()));
  }
}

bool IsNameChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
}

// Names become a folder under the output root (name) or a key the workers
// match (model): nothing in them may climb out of or change that folder.
absl::Status ValidateName(const std::string& field, const std::string& value) {
  if (value.empty()) return absl::InvalidArgumentError(field + ": is empty");
  if (value.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(field + ": " + Quote(value) + " contains a NUL byte");
  }
  if (value.find_first_of("/\\") != std::string::npos) {
    return absl::InvalidArgumentError(
        field + ": " + Quote(value) +
        " must be a plain name, without '/' or '\\' (it must not leave the output folder)");
  }
  if (value == "." || value == "..") {
    return absl::InvalidArgumentError(field + ": " + Quote(value) +
                                      " is not allowed (the name must stay inside the output folder)");
  }
  if (value[0] == '.') return absl::InvalidArgumentError(field + ": " + Quote(value) + " must not start with '.'");
  if (value.size() > 100) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", Quote(value), " is longer than 100 characters"));
  }
  for (char c : value) {
    if (!IsNameChar(c)) {
      return absl::InvalidArgumentError(field + ": " + Quote(value) +
                                        " may only hold letters, digits, '.', '_' and '-'");
    }
  }
  return absl::OkStatus();
}

// Returns the number of code points, or -1 when `s` is not valid UTF-8
// (protobuf strings must be, and a worker's tokenizer expects it).
int64_t Utf8Length(std::string_view s) {
  int64_t count = 0;
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    int len = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      len = 1, cp = c;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07;
    } else {
      return -1;
    }
    if (i + len > s.size()) return -1;
    for (int k = 1; k < len; ++k) {
      const unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return -1;
      cp = (cp << 6) | (cc & 0x3F);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return -1;
    i += len;
    ++count;
  }
  return count;
}

absl::Status ValidatePrompts(const std::string& field, const std::vector<std::string>& prompts, bool allow_empty,
                             const SweepLimits& limits) {
  if (prompts.empty()) return absl::InvalidArgumentError(field + ": needs at least one entry");
  for (size_t i = 0; i < prompts.size(); ++i) {
    const std::string& p = prompts[i];
    const std::string where = absl::StrCat(field, "[", i, "]");
    if (!allow_empty && Trim(p).empty()) {
      return absl::InvalidArgumentError(where + ": prompt " + Quote(p) + " is empty");
    }
    if (p.find('\0') != std::string::npos) {
      return absl::InvalidArgumentError(where + ": " + Quote(p) + " contains a NUL byte");
    }
    const int64_t length = Utf8Length(p);
    if (length < 0) return absl::InvalidArgumentError(where + ": " + Quote(p) + " is not valid UTF-8");
    if (length > limits.max_prompt_chars) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": ", Quote(p), " has ", length, " characters (limit ", limits.max_prompt_chars, ")"));
    }
  }
  return absl::OkStatus();
}

std::string FormatDouble(double v) {
  char buf[64];
  const auto [ptr, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  return ec == std::errc() ? std::string(buf, ptr) : "?";
}

}  // namespace

const std::vector<std::string>& ValidSamplers() {
  static const auto* samplers =
      new std::vector<std::string>{"pndm", "ddim", "euler", "euler_a", "lms", "dpmpp_2m", "dpmpp_2m_karras", "ddpm"};
  return *samplers;
}

int64_t CountImages(const SweepSpec& spec) {
  const int64_t lengths[] = {
      static_cast<int64_t>(spec.prompts.size()), static_cast<int64_t>(spec.negative_prompts.size()),
      static_cast<int64_t>(spec.seeds.size()),   static_cast<int64_t>(spec.guidance_scales.size()),
      static_cast<int64_t>(spec.steps.size()),   static_cast<int64_t>(spec.samplers.size()),
      static_cast<int64_t>(spec.sizes.size()),   static_cast<int64_t>(spec.loras.size()),
      static_cast<int64_t>(spec.prompts_2.size()), static_cast<int64_t>(spec.negative_prompts_2.size()),
      static_cast<int64_t>(spec.original_sizes.size()), static_cast<int64_t>(spec.crops_top_left.size()),
      static_cast<int64_t>(spec.target_sizes.size()), static_cast<int64_t>(spec.guidance_rescales.size())};
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  int64_t combinations = 1;
  for (int64_t n : lengths) {
    if (n == 0) return 0;
    if (spec.combine == SweepSpec::Combine::kZip) {
      combinations = std::max(combinations, n);
    } else {
      combinations = combinations > kMax / n ? kMax : combinations * n;
    }
  }
  const int64_t per = std::max(spec.images_per_combination, 0);
  if (per == 0) return 0;
  return combinations > kMax / per ? kMax : combinations * per;
}

absl::Status Validate(const SweepSpec& spec, const SweepLimits& limits) {
  RETURN_IF_ERROR(ValidateName("name", spec.name));
  RETURN_IF_ERROR(ValidateName("model", spec.model));
  RETURN_IF_ERROR(ValidatePrompts("prompts", spec.prompts, /*allow_empty=*/false, limits));
  RETURN_IF_ERROR(ValidatePrompts("negative_prompts", spec.negative_prompts, /*allow_empty=*/true, limits));

  const std::pair<const char*, size_t> lists[] = {
      {"prompts", spec.prompts.size()}, {"negative_prompts", spec.negative_prompts.size()},
      {"seeds", spec.seeds.size()},     {"guidance_scales", spec.guidance_scales.size()},
      {"steps", spec.steps.size()},     {"samplers", spec.samplers.size()},
      {"sizes", spec.sizes.size()},     {"loras", spec.loras.size()},
      {"prompts_2", spec.prompts_2.size()}, {"negative_prompts_2", spec.negative_prompts_2.size()},
      {"original_sizes", spec.original_sizes.size()}, {"crops_top_left", spec.crops_top_left.size()},
      {"target_sizes", spec.target_sizes.size()}, {"guidance_rescales", spec.guidance_rescales.size()}};
  for (const auto& [field, n] : lists) {
    if (n == 0) return absl::InvalidArgumentError(absl::StrCat(field, ": needs at least one entry"));
    if (n > static_cast<size_t>(limits.max_list)) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": has ", n, " entries (limit ", limits.max_list, ")"));
    }
  }

  if (spec.images_per_combination < 1 || spec.images_per_combination > limits.max_list) {
    return absl::InvalidArgumentError(absl::StrCat("images_per_combination: ", spec.images_per_combination,
                                                   " is out of range [1, ", limits.max_list, "]"));
  }
  for (uint64_t seed : spec.seeds) {
    if (seed > std::numeric_limits<uint64_t>::max() - static_cast<uint64_t>(spec.images_per_combination - 1)) {
      return absl::InvalidArgumentError(absl::StrCat("seeds: seed ", seed, " + images_per_combination ",
                                                     spec.images_per_combination, " runs past 2^64-1"));
    }
  }
  for (size_t i = 0; i < spec.guidance_scales.size(); ++i) {
    const double g = spec.guidance_scales[i];
    if (!(g >= 0 && g <= 100)) {  // also rejects NaN
      return absl::InvalidArgumentError(
          absl::StrCat("guidance_scales[", i, "]: ", FormatDouble(g), " is out of range [0, 100]"));
    }
  }
  for (size_t i = 0; i < spec.steps.size(); ++i) {
    if (spec.steps[i] < 1 || spec.steps[i] > limits.max_steps) {
      return absl::InvalidArgumentError(
          absl::StrCat("steps[", i, "]: ", spec.steps[i], " is out of range [1, ", limits.max_steps, "]"));
    }
  }
  for (size_t i = 0; i < spec.samplers.size(); ++i) {
    const auto& valid = ValidSamplers();
    if (std::find(valid.begin(), valid.end(), spec.samplers[i]) == valid.end()) {
      return absl::InvalidArgumentError(absl::StrCat("samplers[", i, "]: unknown sampler ", Quote(spec.samplers[i]),
                                                     " (valid: ", absl::StrJoin(valid, " "), ")"));
    }
  }
  for (size_t i = 0; i < spec.sizes.size(); ++i) {
    const Size& s = spec.sizes[i];
    for (int side : {s.width, s.height}) {
      if (side < 64 || side > limits.max_side || side % 8 != 0) {
        return absl::InvalidArgumentError(absl::StrCat("sizes[", i, "]: ", s.width, "x", s.height,
                                                       " is not allowed: each side must be a multiple of 8 in [64, ",
                                                       limits.max_side, "]"));
      }
    }
  }
  for (size_t i = 0; i < spec.loras.size(); ++i) {
    constexpr size_t kMaxLorasPerSet = 16;
    if (spec.loras[i].size() > kMaxLorasPerSet) {
      return absl::InvalidArgumentError(
          absl::StrCat("loras[", i, "]: ", spec.loras[i].size(), " LoRAs in one set (limit ", kMaxLorasPerSet, ")"));
    }
    std::set<std::string> seen;
    for (const LoraUse& l : spec.loras[i]) {
      RETURN_IF_ERROR(ValidateName(absl::StrCat("loras[", i, "]"), l.name));
      if (!(l.scale >= -10 && l.scale <= 10)) {  // also rejects NaN
        return absl::InvalidArgumentError(absl::StrCat("loras[", i, "]: scale ", FormatDouble(l.scale), " of ",
                                                       Quote(l.name), " is out of range [-10, 10]"));
      }
      if (!seen.insert(l.name).second) {
        return absl::InvalidArgumentError(absl::StrCat("loras[", i, "]: ", Quote(l.name), " is in the set twice"));
      }
    }
  }
  if (!spec.vae.empty()) RETURN_IF_ERROR(ValidateName("vae", spec.vae));
  RETURN_IF_ERROR(ValidatePrompts("prompts_2", spec.prompts_2, /*allow_empty=*/true, limits));
  RETURN_IF_ERROR(ValidatePrompts("negative_prompts_2", spec.negative_prompts_2, /*allow_empty=*/true, limits));
  // Micro-conditioning sizes: 0x0 (the image size) or both sides in [1, 65536].
  constexpr int kMaxMicro = 65536;
  auto check_micro_size = [&](const std::string& where, const Size& s) {
    const bool unset = s.width == 0 && s.height == 0;
    if (!unset && (s.width < 1 || s.height < 1 || s.width > kMaxMicro || s.height > kMaxMicro)) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", s.width, "x", s.height,
                                                     " is not allowed: each side must be in [1, ", kMaxMicro, "]"));
    }
    return absl::OkStatus();
  };
  auto check_crop = [&](const std::string& where, const Crop& c) {
    if (c.top < 0 || c.left < 0 || c.top > kMaxMicro || c.left > kMaxMicro) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": ", c.top, ",", c.left, " is out of range [0, ", kMaxMicro, "]"));
    }
    return absl::OkStatus();
  };
  for (size_t i = 0; i < spec.original_sizes.size(); ++i) {
    RETURN_IF_ERROR(check_micro_size(absl::StrCat("original_sizes[", i, "]"), spec.original_sizes[i]));
  }
  for (size_t i = 0; i < spec.target_sizes.size(); ++i) {
    RETURN_IF_ERROR(check_micro_size(absl::StrCat("target_sizes[", i, "]"), spec.target_sizes[i]));
  }
  for (size_t i = 0; i < spec.crops_top_left.size(); ++i) {
    RETURN_IF_ERROR(check_crop(absl::StrCat("crops_top_left[", i, "]"), spec.crops_top_left[i]));
  }
  RETURN_IF_ERROR(check_micro_size("negative_original_size", spec.negative_original_size));
  RETURN_IF_ERROR(check_micro_size("negative_target_size", spec.negative_target_size));
  RETURN_IF_ERROR(check_crop("negative_crop_top_left", spec.negative_crop_top_left));
  const bool neg_orig = spec.negative_original_size != Size{0, 0};
  const bool neg_target = spec.negative_target_size != Size{0, 0};
  if (neg_orig != neg_target || (spec.negative_crop_top_left != Crop{} && !neg_orig)) {
    return absl::InvalidArgumentError(
        std::string(neg_orig ? "negative_target_size" : "negative_original_size") +
        ": negative_original_size and negative_target_size go together (diffusers ignores either one, and "
        "negative_crop_top_left, without the other)");
  }
  for (size_t i = 0; i < spec.guidance_rescales.size(); ++i) {
    const double r = spec.guidance_rescales[i];
    if (!(r >= 0 && r <= 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("guidance_rescales[", i, "]: ", FormatDouble(r), " is out of range [0, 1]"));
    }
  }
  if (spec.priority < 1 || spec.priority > 100) {
    return absl::InvalidArgumentError(absl::StrCat("priority: ", spec.priority, " is out of range [1, 100]"));
  }
  if (spec.combine == SweepSpec::Combine::kZip) {
    size_t length = 1;
    const char* longest = nullptr;
    for (const auto& [field, n] : lists) {
      if (n == 1) continue;  // broadcasts
      if (longest == nullptr) {
        length = n, longest = field;
      } else if (n != length) {
        return absl::InvalidArgumentError(absl::StrCat(field, ": combine: zip needs lists of equal length (or 1), but ",
                                                       field, " has ", n, " entries and ", longest, " has ", length));
      }
    }
  }
  const int64_t images = CountImages(spec);
  if (images > limits.max_images) {
    return absl::InvalidArgumentError(
        absl::StrCat("sweep: ", images == std::numeric_limits<int64_t>::max() ? "more than 2^63" : absl::StrCat(images),
                     " images is over the limit of ", limits.max_images));
  }
  return absl::OkStatus();
}

nlohmann::json SweepSpec::ToJson() const {
  Json sizes_json = Json::array();
  for (const Size& s : sizes) sizes_json.push_back(absl::StrCat(s.width, "x", s.height));
  Json j{{"name", name},
              {"model", model},
              {"prompts", prompts},
              {"negative_prompts", negative_prompts},
              {"seeds", seeds},
              {"guidance_scales", guidance_scales},
              {"steps", steps},
              {"samplers", samplers},
              {"sizes", std::move(sizes_json)},
              {"images_per_combination", images_per_combination},
              {"combine", combine == Combine::kZip ? "zip" : "product"},
              {"priority", priority}};
  if (size_from_model) j.erase("sizes");  // the coordinator picks the model's own size
  if (loras != std::vector<std::vector<LoraUse>>{{}}) {
    Json sets = Json::array();
    for (const auto& set : loras) {
      Json one = Json::array();
      for (const LoraUse& l : set) one.push_back(l.name + ":" + FormatDouble(l.scale));
      sets.push_back(std::move(one));
    }
    j["loras"] = std::move(sets);
  }
  if (!vae.empty()) j["vae"] = vae;
  if (prompt_chunking) j["prompt_chunking"] = true;
  auto size_text = [](const Size& s) { return absl::StrCat(s.width, "x", s.height); };
  auto crop_text = [](const Crop& c) { return absl::StrCat(c.top, ",", c.left); };
  if (prompts_2 != std::vector<std::string>{""}) j["prompts_2"] = prompts_2;
  if (negative_prompts_2 != std::vector<std::string>{""}) j["negative_prompts_2"] = negative_prompts_2;
  for (const auto& [field, list] : {std::make_pair("original_sizes", &original_sizes),
                                    std::make_pair("target_sizes", &target_sizes)}) {
    if (*list == std::vector<Size>{Size{0, 0}}) continue;
    Json v = Json::array();
    for (const Size& s : *list) v.push_back(size_text(s));
    j[field] = std::move(v);
  }
  if (crops_top_left != std::vector<Crop>{Crop{}}) {
    Json v = Json::array();
    for (const Crop& c : crops_top_left) v.push_back(crop_text(c));
    j["crops_top_left"] = std::move(v);
  }
  if (negative_original_size != Size{0, 0}) j["negative_original_size"] = size_text(negative_original_size);
  if (negative_target_size != Size{0, 0}) j["negative_target_size"] = size_text(negative_target_size);
  if (negative_crop_top_left != Crop{}) j["negative_crop_top_left"] = crop_text(negative_crop_top_left);
  if (guidance_rescales != std::vector<double>{0}) j["guidance_rescales"] = guidance_rescales;
  return j;
}

absl::StatusOr<SweepSpec> SweepSpec::FromJson(const nlohmann::json& json, const SweepLimits& limits,
                                              uint64_t random_seed) {
  try {
    return FromJsonImpl(json, limits, random_seed, ParseContext{});
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("bad sweep spec: ", e.what()));
  }
}

absl::StatusOr<SweepSpec> ParseSweepText(std::string_view text, bool yaml, const SweepLimits& limits,
                                         uint64_t random_seed) {
  return ParseText(text, yaml, limits, random_seed, ParseContext{.allow_files = true, .base_dir = "."});
}

absl::StatusOr<SweepSpec> ParseSweepFile(const std::string& path, const SweepLimits& limits, uint64_t random_seed) {
  const std::filesystem::path p(path);
  const std::string ext = absl::AsciiStrToLower(p.extension().string());
  if (ext != ".json" && ext != ".yaml" && ext != ".yml") {
    return absl::InvalidArgumentError("sweep file " + Quote(path) + " must end in .json, .yaml or .yml");
  }
  std::ifstream in(p, std::ios::binary);
  if (!in) return absl::NotFoundError("cannot open sweep file " + Quote(path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return absl::InvalidArgumentError("error reading sweep file " + Quote(path));
  absl::StatusOr<SweepSpec> spec =
      ParseText(buffer.str(), ext != ".json", limits, random_seed,
                ParseContext{.allow_files = true, .base_dir = p.parent_path().empty() ? "." : p.parent_path()});
  if (!spec.ok()) return absl::Status(spec.status().code(), path + ": " + std::string(spec.status().message()));
  return spec;
}

absl::StatusOr<std::vector<uint64_t>> ParseSeeds(std::string_view text, uint64_t random_seed, int64_t max_count) {
  std::mt19937_64 rng(random_seed);
  std::vector<uint64_t> seeds;
  RETURN_IF_ERROR(AppendSeeds(text, rng, max_count, &seeds));
  return seeds;
}

}  // namespace sdfarm::coordinator
