// See local_farm_file.h.
#include "client/local_farm_file.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace sdfarm::client {
namespace fs = std::filesystem;

fs::path LocalFarmFile(const fs::path& output_root) { return output_root / ".sdfarm-local" / "farm.json"; }

fs::path UserLocalFarmFile() {
  if (const char* state = std::getenv("XDG_STATE_HOME"); state != nullptr && state[0] == '/') {
    return fs::path(state) / "sdfarm" / "local-farm.json";
  }
  const char* home = std::getenv("HOME");
  return fs::path(home != nullptr && home[0] != '\0' ? home : "/tmp") / ".local" / "state" / "sdfarm" /
         "local-farm.json";
}

absl::Status WriteLocalFarm(const fs::path& file, const LocalFarm& farm) {
  std::error_code ec;
  fs::create_directories(file.parent_path(), ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", file.parent_path().string(), ": ", ec.message()));
  const std::string text = nlohmann::json{{"coordinator", farm.coordinator},
                                          {"token", farm.token},
                                          {"output_root", farm.output_root},
                                          {"pid", farm.pid}}
                               .dump() +
                           "\n";
  const std::string temp = file.string() + ".tmp";
  const int fd = open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot write ", temp, ": ", std::strerror(errno)));
  fchmod(fd, 0600);  // the token is in here
  const bool ok = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  close(fd);
  if (!ok || rename(temp.c_str(), file.c_str()) != 0) {
    unlink(temp.c_str());
    return absl::InternalError(absl::StrCat("cannot write ", file.string()));
  }
  return absl::OkStatus();
}

std::optional<LocalFarm> ReadLocalFarm(const fs::path& file) {
  std::ifstream in(file);
  if (!in) return std::nullopt;
  std::stringstream buffer;
  buffer << in.rdbuf();
  const nlohmann::json j = nlohmann::json::parse(buffer.str(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return std::nullopt;
  LocalFarm farm;
  try {
    farm.coordinator = j.at("coordinator").get<std::string>();
    farm.token = j.at("token").get<std::string>();
    farm.output_root = j.value("output_root", "");
    farm.pid = j.at("pid").get<int64_t>();
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;
  }
  // A farm whose process is gone (killed -9: the file stayed) is not used.
  if (farm.pid <= 0 || (kill(static_cast<pid_t>(farm.pid), 0) != 0 && errno == ESRCH)) return std::nullopt;
  return farm;
}

void RemoveLocalFarm(const fs::path& file, int64_t pid) {
  std::ifstream in(file);
  if (!in) return;
  std::stringstream buffer;
  buffer << in.rdbuf();
  const nlohmann::json j = nlohmann::json::parse(buffer.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_object() && j.value("pid", int64_t{0}) == pid) {
    std::error_code ec;
    fs::remove(file, ec);
  }
}

std::optional<LocalFarm> FindLocalFarm() {
  const char* root = std::getenv("SDFARM_OUTPUT_ROOT");
  if (auto farm = ReadLocalFarm(LocalFarmFile(root != nullptr && root[0] != '\0' ? root : "sdfarm-out"))) return farm;
  return ReadLocalFarm(UserLocalFarmFile());
}

}  // namespace sdfarm::client
