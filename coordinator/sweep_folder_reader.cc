#include "coordinator/sweep_folder_reader.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "coordinator/sweep_output.h"

namespace sdfarm::coordinator {
namespace {

absl::Status Errno(const std::string& what, const std::string& path) {
  return absl::UnavailableError(what + " " + path + ": " + std::strerror(errno));
}

// Reads up to `size` bytes; fewer only at the end of the file.
absl::StatusOr<size_t> ReadUpTo(int fd, char* buf, size_t size, const std::string& path) {
  size_t got = 0;
  while (got < size) {
    const ssize_t n = ::read(fd, buf + got, size - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Errno("cannot read", path);
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  return got;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SweepFolderReader>> SweepFolderReader::Open(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError("the sweep folder " + dir + " does not exist");
    if (errno == ELOOP || errno == ENOTDIR) {
      return absl::FailedPreconditionError("the sweep folder " + dir +
                                           " is a symbolic link or not a folder; refusing to read through it");
    }
    return Errno("cannot open", dir);
  }
  return std::unique_ptr<SweepFolderReader>(new SweepFolderReader(dir, fd));
}

SweepFolderReader::~SweepFolderReader() {
  if (fd_ >= 0) ::close(fd_);
}

std::vector<std::string> SweepFolderReader::Files() const {
  std::vector<std::string> files;
  const int list_fd = ::dup(fd_);
  if (list_fd < 0) return files;
  DIR* d = ::fdopendir(list_fd);
  if (!d) {
    ::close(list_fd);
    return files;
  }
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    struct stat st {};
    if (!IsSafeFileName(name) || ::fstatat(fd_, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    if (S_ISREG(st.st_mode)) files.push_back(name);
  }
  ::closedir(d);
  std::sort(files.begin(), files.end());
  return files;
}

absl::Status SweepFolderReader::ReadFile(
    const std::string& name, size_t chunk_size,
    const std::function<absl::Status(int64_t offset, std::string_view data, bool last)>& chunk) const {
  const std::string path = dir_ + "/" + name;
  if (!IsSafeFileName(name)) return absl::InvalidArgumentError("unsafe file name '" + name + "'");
  const int fd = ::openat(fd_, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError(path + " is gone");
    if (errno == ELOOP) return absl::FailedPreconditionError(path + " is a symbolic link");
    return Errno("cannot open", path);
  }
  struct stat st {};
  absl::Status result;
  if (::fstat(fd, &st) != 0) {
    result = Errno("cannot stat", path);
  } else if (!S_ISREG(st.st_mode)) {
    result = absl::FailedPreconditionError(path + " is not a regular file");
  } else {
    // One piece ahead, so that the last piece says it is the last.
    std::string cur(chunk_size, '\0'), next(chunk_size, '\0');
    absl::StatusOr<size_t> n = ReadUpTo(fd, cur.data(), chunk_size, path);
    int64_t offset = 0;
    while (n.ok()) {
      absl::StatusOr<size_t> m = *n < chunk_size ? absl::StatusOr<size_t>(0) : ReadUpTo(fd, next.data(), chunk_size, path);
      if (!m.ok()) {
        n = m;
        break;
      }
      const bool last = *m == 0;
      result = chunk(offset, std::string_view(cur.data(), *n), last);
      if (!result.ok() || last) break;
      offset += static_cast<int64_t>(*n);
      cur.swap(next);
      n = m;
    }
    if (!n.ok()) result = n.status();
  }
  ::close(fd);
  return result;
}

}  // namespace sdfarm::coordinator
