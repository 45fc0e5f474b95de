// One coordinator per output root: an exclusive flock on
// <root>/.sdfarm-coordinator.lock, held for the process's lifetime (the
// kernel drops it when the process dies, kill -9 included), so a second
// coordinator started on the same folder refuses to start instead of writing
// the same sweep folders and manifests (duplicate rows).
//
//   ASSIGN_OR_RETURN(auto lock, OutputRootLock::Acquire(opt.output_root));
//   ... // keep `lock` alive as long as the coordinator runs
//
// The lock file holds "pid N host H since T" of the holder, for the refusal
// message: "another coordinator (pid N, host H, since T) holds <root>".
// flock is per host: two hosts sharing a network file system are kept apart
// by the leader lease in Redis (leader_lease.h), not by this lock.
#ifndef SDFARM_COORDINATOR_OUTPUT_ROOT_LOCK_H_
#define SDFARM_COORDINATOR_OUTPUT_ROOT_LOCK_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace sdfarm::coordinator {

class OutputRootLock {
 public:
  static constexpr const char* kFileName = ".sdfarm-coordinator.lock";

  // FailedPrecondition naming the holder when another process holds the lock;
  // Unavailable when the file cannot be opened.
  static absl::StatusOr<std::unique_ptr<OutputRootLock>> Acquire(const std::string& root);
  ~OutputRootLock();  // releases the lock
  OutputRootLock(const OutputRootLock&) = delete;
  OutputRootLock& operator=(const OutputRootLock&) = delete;

 private:
  explicit OutputRootLock(int fd) : fd_(fd) {}
  int fd_;
};

}  // namespace sdfarm::coordinator

#endif  // SDFARM_COORDINATOR_OUTPUT_ROOT_LOCK_H_
