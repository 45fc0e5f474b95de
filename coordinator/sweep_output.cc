#include "coordinator/sweep_output.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/status_macros.h"

namespace sdfarm::coordinator {
namespace {

namespace fs = std::filesystem;

constexpr char kManifest[] = "metadata.jsonl";
constexpr char kTempSuffix[] = ".sdfarm-tmp";

absl::Status Errno(const std::string& what, const std::string& path) {
  return absl::UnavailableError(what + " " + path + ": " + std::strerror(errno));
}

absl::Status WriteAll(int fd, const std::string& bytes, const std::string& path) {
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("cannot write", path);
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status FsyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Errno("cannot open", dir);
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return Errno("cannot fsync", dir);
  return absl::OkStatus();
}

}  // namespace

bool IsSafeFileName(const std::string& name) {
  if (name.empty() || name.size() > 200 || name[0] == '.') return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

absl::StatusOr<std::unique_ptr<SweepOutput>> SweepOutput::Open(const std::string& root, const std::string& name) {
  if (!IsSafeFileName(name)) {
    return absl::InvalidArgumentError("sweep folder name '" + name +
                                      "' must be 1-200 characters of [A-Za-z0-9._-] without a leading '.'");
  }
  std::error_code ec;
  const std::string dir = (fs::path(root) / name).string();
  fs::create_directories(dir, ec);
  if (ec) return absl::UnavailableError("cannot create " + dir + ": " + ec.message());
  // A crash between write and rename leaves a temporary file: never a result.
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string f = entry.path().filename().string();
    if (f.size() > sizeof(kTempSuffix) && f.find(kTempSuffix) != std::string::npos) fs::remove(entry.path(), ec);
  }
  auto out = std::unique_ptr<SweepOutput>(new SweepOutput(dir));
  RETURN_IF_ERROR(out->LoadManifest());
  return out;
}

absl::Status SweepOutput::LoadManifest() {
  const std::string path = dir_ + "/" + kManifest;
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::OkStatus();  // a new sweep
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  size_t good_end = 0;  // bytes up to the last complete, parseable row
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) break;  // torn last line: dropped below
    nlohmann::json row = nlohmann::json::parse(text.substr(pos, nl - pos), nullptr, /*allow_exceptions=*/false);
    if (row.is_discarded() || !row.is_object() || !row.contains("file_name") || !row["file_name"].is_string()) {
      return absl::DataLossError(path + ": unreadable row at byte " + std::to_string(pos));
    }
    recorded_.insert(row["file_name"].get<std::string>());
    pos = nl + 1;
    good_end = pos;
  }
  if (good_end < text.size()) {
    // The coordinator died while appending: cut the partial row so the next append starts clean.
    std::error_code ec;
    fs::resize_file(path, good_end, ec);
    if (ec) return absl::UnavailableError("cannot truncate " + path + ": " + ec.message());
  }
  return absl::OkStatus();
}

absl::Status SweepOutput::WriteFileAtomic(const std::string& file_name, const std::string& bytes) {
  const std::string final_path = dir_ + "/" + file_name;
  const std::string tmp = dir_ + "/." + file_name + kTempSuffix + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("cannot create", tmp);
  absl::Status s = WriteAll(fd, bytes, tmp);
  if (s.ok() && ::fsync(fd) != 0) s = Errno("cannot fsync", tmp);
  if (::close(fd) != 0 && s.ok()) s = Errno("cannot close", tmp);
  if (s.ok() && std::rename(tmp.c_str(), final_path.c_str()) != 0) s = Errno("cannot rename to", final_path);
  if (!s.ok()) {
    ::unlink(tmp.c_str());
    return s;
  }
  return FsyncDir(dir_);
}

absl::Status SweepOutput::WriteImage(const std::string& file_name, const std::string& bytes) {
  if (!IsSafeFileName(file_name) || file_name == kManifest || file_name == "sweep.json") {
    return absl::InvalidArgumentError("unsafe image file name '" + file_name + "'");
  }
  return WriteFileAtomic(file_name, bytes);
}

absl::StatusOr<bool> SweepOutput::RecordImage(const std::string& file_name, const nlohmann::json& row) {
  if (!IsSafeFileName(file_name)) return absl::InvalidArgumentError("unsafe file name '" + file_name + "'");
  if (!row.is_object()) return absl::InvalidArgumentError("a manifest row must be a JSON object");
  if (recorded_.count(file_name)) return false;
  nlohmann::ordered_json line;
  line["file_name"] = file_name;  // first, as Hugging Face's imagefolder expects
  for (auto it = row.begin(); it != row.end(); ++it) {
    if (it.key() != "file_name") line[it.key()] = it.value();
  }
  const std::string path = dir_ + "/" + kManifest;
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("cannot open", path);
  const off_t before = ::lseek(fd, 0, SEEK_END);
  absl::Status s = WriteAll(fd, line.dump() + "\n", path);
  if (s.ok() && ::fsync(fd) != 0) s = Errno("cannot fsync", path);
  // A half-written row would corrupt every later one: take it back.
  if (!s.ok() && before >= 0) (void)::ftruncate(fd, before);
  ::close(fd);
  if (!s.ok()) return s;
  recorded_.insert(file_name);
  return true;
}

absl::Status SweepOutput::WriteSpec(const nlohmann::json& spec) {
  return WriteFileAtomic("sweep.json", spec.dump(2) + "\n");
}

}  // namespace sdfarm::coordinator
