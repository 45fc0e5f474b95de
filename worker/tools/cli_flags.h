// A small command-line flag parser for sdfarm's programs, which must build
// without Abseil (engine-only builds against a pip-installed LibTorch).
//
//   CliFlags flags("sdfarm-render", "Renders images on this machine.");
//   flags.Add("model", "DIR", "diffusers pipeline folder (required)");
//   flags.AddBool("quiet", "no progress output");
//   if (Status s = flags.Parse(argc, argv); !s.ok()) ...   // --help sets help_requested()
//   std::string model = flags.Get("model");
//
// Accepts --name value, --name=value and, for booleans, --name / --no-name.
// Flags marked repeatable collect every occurrence in order. A flag may also
// be read from an environment variable (SetEnv): the command line wins, then
// the variable (when set and non-empty), then the default. Positional
// arguments are refused unless AllowPositional was called; "--" ends flags.
#ifndef SDFARM_WORKER_TOOLS_CLI_FLAGS_H_
#define SDFARM_WORKER_TOOLS_CLI_FLAGS_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "worker/engine/status.h"

namespace sdfarm::tools {

using engine::Status;
using engine::StatusOr;

class CliFlags {
 public:
  CliFlags(std::string program, std::string summary) : program_(std::move(program)), summary_(std::move(summary)) {}

  void Add(const std::string& name, const std::string& metavar, const std::string& help,
           std::optional<std::string> default_value = std::nullopt, bool repeatable = false);
  void AddBool(const std::string& name, const std::string& help);
  // Reads flag `name` from environment variable `env` when it is not given.
  void SetEnv(const std::string& name, const std::string& env);
  // Accepts non-flag arguments (shown in the usage line as `metavar`).
  void AllowPositional(std::string metavar, std::string help);
  const std::vector<std::string>& positional() const { return positional_; }
  // Free text printed after the flag list (examples).
  void SetEpilog(std::string epilog) { epilog_ = std::move(epilog); }

  Status Parse(int argc, char** argv);
  bool help_requested() const { return help_; }
  std::string Usage() const;

  bool Has(const std::string& name) const;                      // given on the command line or by its env var
  std::string Get(const std::string& name) const;               // value, or default, or ""
  std::vector<std::string> GetAll(const std::string& name) const;
  bool GetBool(const std::string& name) const;
  StatusOr<int64_t> GetInt(const std::string& name, int64_t min, int64_t max) const;
  StatusOr<double> GetDouble(const std::string& name, double min, double max) const;

 private:
  struct Spec {
    std::string name, metavar, help;
    std::optional<std::string> default_value;
    bool repeatable = false;
    bool boolean = false;
    std::string env;
  };
  // The value from the spec's environment variable, if set and non-empty.
  std::optional<std::string> FromEnv(const Spec& spec) const;
  const Spec* Find(const std::string& name) const;

  std::string program_, summary_, epilog_;
  std::string positional_metavar_, positional_help_;
  bool allow_positional_ = false;
  std::vector<std::string> positional_;
  std::vector<Spec> specs_;
  std::map<std::string, std::vector<std::string>> values_;
  bool help_ = false;
};

// Parses an unsigned 64-bit integer (decimal), rejecting signs, junk and overflow.
bool ParseUint64(const std::string& text, uint64_t* out);

// "0-9,42,100-102" -> {0, 1, ..., 9, 42, 100, 101, 102}. Ranges are inclusive;
// at most `max_count` seeds in all.
StatusOr<std::vector<uint64_t>> ParseSeedList(const std::string& text, size_t max_count = 1000000);

}  // namespace sdfarm::tools

#endif  // SDFARM_WORKER_TOOLS_CLI_FLAGS_H_
