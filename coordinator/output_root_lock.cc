// The output root's exclusive lock (see output_root_lock.h).
#include "coordinator/output_root_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/log_time.h"

namespace sdfarm::coordinator {

absl::StatusOr<std::unique_ptr<OutputRootLock>> OutputRootLock::Acquire(const std::string& root) {
  const std::string path = root + "/" + kFileName;
  // O_NOFOLLOW: a symlink planted here must not make us lock (and write) another file.
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    std::string holder(512, '\0');
    const ssize_t n = ::pread(fd, holder.data(), holder.size(), 0);
    holder.resize(n > 0 ? static_cast<size_t>(n) : 0);
    ::close(fd);
    if (err != EWOULDBLOCK) return absl::UnavailableError(absl::StrCat("cannot lock ", path, ": ", std::strerror(err)));
    const std::string who(absl::StripAsciiWhitespace(holder));
    return absl::FailedPreconditionError(absl::StrCat(
        "another coordinator (", who.empty() ? "unknown process" : who, ") holds ", root, " (lock file ", path,
        "); one coordinator per output root: stop it first"));
  }
  char host[256] = {0};
  (void)::gethostname(host, sizeof(host) - 1);
  const std::string me = absl::StrCat("pid ", ::getpid(), ", host ", host, ", since ", LogTimestamp(), "\n");
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size())) {
    // The lock holds without the note; only the refusal message of a second coordinator is poorer.
  }
  return std::unique_ptr<OutputRootLock>(new OutputRootLock(fd));
}

OutputRootLock::~OutputRootLock() {
  if (fd_ >= 0) ::close(fd_);  // closing the last descriptor releases the flock
}

}  // namespace sdfarm::coordinator
