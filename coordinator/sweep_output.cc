#include "coordinator/sweep_output.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>

#include "common/status_macros.h"

namespace sdfarm::coordinator {
namespace {

namespace fs = std::filesystem;

constexpr char kManifest[] = "metadata.jsonl";
constexpr char kTempSuffix[] = ".sdfarm-tmp";

absl::Status Errno(const std::string& what, const std::string& path) {
  const int e = errno;
  const std::string message = what + " " + path + ": " + std::strerror(e);
  if (e == ENOSPC || e == EDQUOT) return absl::ResourceExhaustedError(message);
  return absl::UnavailableError(message);
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

absl::Status FsyncFd(int fd, const std::string& path) {
  if (::fsync(fd) != 0) return Errno("cannot fsync", path);
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
  fs::create_directories(root, ec);
  if (ec) return absl::UnavailableError("cannot create " + root + ": " + ec.message());
  const std::string dir = (fs::path(root) / name).string();
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) return Errno("cannot create", dir);
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ELOOP || errno == ENOTDIR) {
      return absl::FailedPreconditionError("the sweep folder " + dir +
                                           " is a symbolic link or not a folder; it must be a real folder");
    }
    return Errno("cannot open", dir);
  }
  auto out = std::unique_ptr<SweepOutput>(new SweepOutput(dir, fd));
  struct stat st {};
  if (::fstat(fd, &st) != 0) return Errno("cannot stat", dir);
  out->dev_ = st.st_dev;
  out->ino_ = st.st_ino;
  // A crash between write and rename leaves a temporary file: never a result.
  const int list_fd = ::dup(fd);
  if (list_fd < 0) return Errno("cannot list", dir);
  if (DIR* d = ::fdopendir(list_fd)) {
    std::vector<std::string> stale;
    while (const dirent* e = ::readdir(d)) {
      const std::string f = e->d_name;
      if (f.size() > sizeof(kTempSuffix) && f.find(kTempSuffix) != std::string::npos) stale.push_back(f);
    }
    ::closedir(d);
    for (const std::string& f : stale) ::unlinkat(fd, f.c_str(), 0);
  } else {
    ::close(list_fd);
    return Errno("cannot list", dir);
  }
  RETURN_IF_ERROR(out->LoadManifest());
  return out;
}

SweepOutput::~SweepOutput() {
  if (dir_fd_ >= 0) ::close(dir_fd_);
}

absl::Status SweepOutput::CheckFolderUnchanged() const {
  struct stat st {};
  if (::lstat(dir_.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || st.st_dev != dev_ || st.st_ino != ino_) {
    return absl::FailedPreconditionError("the sweep folder " + dir_ +
                                         " was replaced or removed (a symbolic link?) since the coordinator opened "
                                         "it; no image is written until the folder is restored");
  }
  return absl::OkStatus();
}

absl::Status SweepOutput::LoadManifest() {
  const std::string path = dir_ + "/" + kManifest;
  const int fd = ::openat(dir_fd_, kManifest, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::OkStatus();  // a new sweep
    return Errno("cannot open", path);
  }
  std::string text;
  char buf[1 << 16];
  while (true) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ::close(fd);
      return Errno("cannot read", path);
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  size_t good_end = 0;  // bytes up to the last complete, parseable row
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) break;  // torn last line: dropped below
    nlohmann::json row = nlohmann::json::parse(text.substr(pos, nl - pos), nullptr, /*allow_exceptions=*/false);
    if (row.is_discarded() || !row.is_object() || !row.contains("file_name") || !row["file_name"].is_string()) {
      ::close(fd);
      return absl::DataLossError(path + ": unreadable row at byte " + std::to_string(pos));
    }
    recorded_.insert(row["file_name"].get<std::string>());
    pos = nl + 1;
    good_end = pos;
  }
  absl::Status s;
  // The coordinator died while appending: cut the partial row so the next append starts clean.
  if (good_end < text.size() && ::ftruncate(fd, static_cast<off_t>(good_end)) != 0) s = Errno("cannot truncate", path);
  ::close(fd);
  return s;
}

absl::Status SweepOutput::WriteFileAtomic(const std::string& file_name, const std::string& bytes) {
  RETURN_IF_ERROR(CheckFolderUnchanged());
  const std::string tmp = "." + file_name + kTempSuffix + std::to_string(::getpid());
  const std::string tmp_path = dir_ + "/" + tmp;
  int fd = ::openat(dir_fd_, tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("cannot create", tmp_path);
  absl::Status s = WriteAll(fd, bytes, tmp_path);
  if (s.ok() && ::fsync(fd) != 0) s = Errno("cannot fsync", tmp_path);
  if (::close(fd) != 0 && s.ok()) s = Errno("cannot close", tmp_path);
  if (s.ok() && ::renameat(dir_fd_, tmp.c_str(), dir_fd_, file_name.c_str()) != 0) {
    s = Errno("cannot rename to", dir_ + "/" + file_name);
  }
  if (!s.ok()) {
    ::unlinkat(dir_fd_, tmp.c_str(), 0);
    return s;
  }
  return FsyncFd(dir_fd_, dir_);
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
  RETURN_IF_ERROR(CheckFolderUnchanged());
  const std::string path = dir_ + "/" + kManifest;
  int fd = ::openat(dir_fd_, kManifest, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0644);
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
