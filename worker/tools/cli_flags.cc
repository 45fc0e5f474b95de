#include "worker/tools/cli_flags.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>

namespace sdfarm::tools {

using engine::InvalidArgumentError;
using engine::OkStatus;

void CliFlags::Add(const std::string& name, const std::string& metavar, const std::string& help,
                   std::optional<std::string> default_value, bool repeatable) {
  specs_.push_back({name, metavar, help, std::move(default_value), repeatable, false});
}

void CliFlags::AddBool(const std::string& name, const std::string& help) {
  specs_.push_back({name, "", help, std::nullopt, false, true});
}

void CliFlags::SetEnv(const std::string& name, const std::string& env) {
  for (auto& s : specs_) {
    if (s.name == name) s.env = env;
  }
}

void CliFlags::AllowPositional(std::string metavar, std::string help) {
  allow_positional_ = true;
  positional_metavar_ = std::move(metavar);
  positional_help_ = std::move(help);
}

std::optional<std::string> CliFlags::FromEnv(const Spec& spec) const {
  if (spec.env.empty()) return std::nullopt;
  const char* v = std::getenv(spec.env.c_str());
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

const CliFlags::Spec* CliFlags::Find(const std::string& name) const {
  for (const auto& s : specs_) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

Status CliFlags::Parse(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      help_ = true;
      return OkStatus();
    }
    if (arg == "--" && allow_positional_) {
      for (++i; i < argc; ++i) positional_.push_back(argv[i]);
      break;
    }
    if (allow_positional_ && (arg.rfind("-", 0) != 0 || arg == "-")) {
      positional_.push_back(arg);
      continue;
    }
    if (arg.rfind("--", 0) != 0 || arg.size() < 3) {
      return InvalidArgumentError("unexpected argument '" + arg + "' (flags start with --; see --help)");
    }
    std::string name = arg.substr(2);
    std::optional<std::string> value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    const Spec* spec = Find(name);
    if (spec == nullptr && name.rfind("no-", 0) == 0) {
      const Spec* neg = Find(name.substr(3));
      if (neg != nullptr && neg->boolean && !value) {
        values_[neg->name] = {"false"};
        continue;
      }
    }
    if (spec == nullptr) return InvalidArgumentError("unknown flag --" + name + " (see --help)");
    if (spec->boolean) {
      if (value && *value != "true" && *value != "false") {
        return InvalidArgumentError("--" + name + " takes no value (or =true / =false)");
      }
      values_[name] = {value.value_or("true")};
      continue;
    }
    if (!value) {
      if (i + 1 >= argc) return InvalidArgumentError("--" + name + " needs a value: --" + name + " " + spec->metavar);
      value = argv[++i];
    }
    auto& slot = values_[name];
    if (!spec->repeatable && !slot.empty()) return InvalidArgumentError("--" + name + " given twice");
    slot.push_back(*value);
  }
  return OkStatus();
}

std::string CliFlags::Usage() const {
  std::ostringstream os;
  os << "Usage: " << program_ << " [flags]" << (allow_positional_ ? " " + positional_metavar_ : "") << "\n\n"
     << summary_ << "\n";
  if (allow_positional_ && !positional_help_.empty()) os << "\n  " << positional_metavar_ << ": " << positional_help_ << "\n";
  os << "\nFlags:\n";
  for (const auto& s : specs_) {
    std::string left = "  --" + s.name + (s.metavar.empty() ? "" : " " + s.metavar);
    os << left;
    if (left.size() < 30) {
      os << std::string(30 - left.size(), ' ');
    } else {
      os << "\n" << std::string(30, ' ');
    }
    os << s.help;
    if (s.default_value && !s.default_value->empty()) os << " (default: " << *s.default_value << ")";
    if (s.repeatable) os << " [repeatable]";
    if (!s.env.empty()) os << " [env " << s.env << "]";
    os << "\n";
  }
  os << "  --help                      show this help\n";
  if (!epilog_.empty()) os << "\n" << epilog_;
  return os.str();
}

bool CliFlags::Has(const std::string& name) const {
  if (values_.count(name) > 0) return true;
  const Spec* s = Find(name);
  return s != nullptr && FromEnv(*s).has_value();
}

std::string CliFlags::Get(const std::string& name) const {
  auto it = values_.find(name);
  if (it != values_.end() && !it->second.empty()) return it->second.back();
  const Spec* s = Find(name);
  if (s == nullptr) return "";
  if (auto env = FromEnv(*s)) return *env;
  return s->default_value ? *s->default_value : "";
}

std::vector<std::string> CliFlags::GetAll(const std::string& name) const {
  auto it = values_.find(name);
  if (it != values_.end()) return it->second;
  const Spec* s = Find(name);
  if (s && s->default_value) return {*s->default_value};
  return {};
}

bool CliFlags::GetBool(const std::string& name) const {
  const std::string v = Get(name);
  return v == "true" || v == "1";
}

StatusOr<int64_t> CliFlags::GetInt(const std::string& name, int64_t min, int64_t max) const {
  const std::string text = Get(name);
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno == ERANGE) {
    return InvalidArgumentError("--" + name + " must be an integer, got '" + text + "'");
  }
  if (v < min || v > max) {
    return InvalidArgumentError("--" + name + " must be in [" + std::to_string(min) + ", " + std::to_string(max) +
                                "], got " + text);
  }
  return static_cast<int64_t>(v);
}

StatusOr<double> CliFlags::GetDouble(const std::string& name, double min, double max) const {
  const std::string text = Get(name);
  char* end = nullptr;
  double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !std::isfinite(v)) {
    return InvalidArgumentError("--" + name + " must be a number, got '" + text + "'");
  }
  if (v < min || v > max) {
    std::ostringstream os;
    os << "--" << name << " must be in [" << min << ", " << max << "], got " << text;
    return InvalidArgumentError(os.str());
  }
  return v;
}

bool ParseUint64(const std::string& text, uint64_t* out) {
  if (text.empty() || text.size() > 20) return false;
  uint64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    const uint64_t d = static_cast<uint64_t>(c - '0');
    if (v > (UINT64_MAX - d) / 10) return false;
    v = v * 10 + d;
  }
  *out = v;
  return true;
}

StatusOr<std::vector<uint64_t>> ParseSeedList(const std::string& text, size_t max_count) {
  std::vector<uint64_t> seeds;
  std::stringstream ss(text);
  std::string part;
  while (std::getline(ss, part, ',')) {
    auto trim = [](std::string s) {
      s.erase(0, s.find_first_not_of(" \t"));
      s.erase(s.find_last_not_of(" \t") + 1);
      return s;
    };
    part = trim(part);
    if (part.empty()) return InvalidArgumentError("empty entry in seed list '" + text + "'");
    uint64_t lo = 0, hi = 0;
    // A dash after the first character is a range (seeds are never negative).
    const size_t dash = part.find('-', 1);
    if (dash == std::string::npos) {
      if (!ParseUint64(part, &lo)) return InvalidArgumentError("bad seed '" + part + "' (seeds are 0 to 2^64-1)");
      hi = lo;
    } else if (!ParseUint64(trim(part.substr(0, dash)), &lo) || !ParseUint64(trim(part.substr(dash + 1)), &hi)) {
      return InvalidArgumentError("bad seed range '" + part + "' (expected like 0-99)");
    }
    if (hi < lo) return InvalidArgumentError("seed range '" + part + "' runs backwards");
    if (hi - lo >= max_count || seeds.size() + (hi - lo + 1) > max_count) {
      return InvalidArgumentError("seed list '" + text + "' has more than " + std::to_string(max_count) + " seeds");
    }
    for (uint64_t s = lo;; ++s) {
      seeds.push_back(s);
      if (s == hi) break;
    }
  }
  if (seeds.empty()) return InvalidArgumentError("empty seed list");
  return seeds;
}

}  // namespace sdfarm::tools
