// Where a running `sdfarm local` can be reached: its coordinator's address and
// client token, written by `sdfarm local` and read by every other command
// (status, watch, workers, pause, cancel, rm, ...) when neither --coordinator
// nor --token is given, so a local farm works from another shell as is.
//
//   sdfarm local ...            writes <output root>/.sdfarm-local/farm.json
//                               and the user's latest: $XDG_STATE_HOME/sdfarm/local-farm.json
//                               (~/.local/state/...), both mode 0600, removed on exit
//   sdfarm status NAME          finds ./sdfarm-out (or $SDFARM_OUTPUT_ROOT)'s file,
//                               else the user's latest, if that process still runs
#ifndef SDFARM_CLIENT_LOCAL_FARM_FILE_H_
#define SDFARM_CLIENT_LOCAL_FARM_FILE_H_

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "absl/status/status.h"

namespace sdfarm::client {

struct LocalFarm {
  std::string coordinator;  // "127.0.0.1:PORT"
  std::string token;        // the client token
  std::string output_root;  // absolute
  int64_t pid = 0;          // the `sdfarm local` process
};

// <output_root>/.sdfarm-local/farm.json
std::filesystem::path LocalFarmFile(const std::filesystem::path& output_root);
// $XDG_STATE_HOME/sdfarm/local-farm.json, else ~/.local/state/sdfarm/local-farm.json.
std::filesystem::path UserLocalFarmFile();

// Writes `farm` to `file` (owner-only, atomically: a reader never sees half).
absl::Status WriteLocalFarm(const std::filesystem::path& file, const LocalFarm& farm);
// The farm in `file`; nullopt when it is missing, unreadable, or its process is gone.
std::optional<LocalFarm> ReadLocalFarm(const std::filesystem::path& file);
// Removes `file` if it still names process `pid`.
void RemoveLocalFarm(const std::filesystem::path& file, int64_t pid);
// The local farm the commands talk to without --coordinator/--token: the one
// of the default output root under the current folder ($SDFARM_OUTPUT_ROOT or
// sdfarm-out), else the user's latest.
std::optional<LocalFarm> FindLocalFarm();

}  // namespace sdfarm::client

#endif  // SDFARM_CLIENT_LOCAL_FARM_FILE_H_
