// Reads a sweep folder for `sdfarm get` without following symbolic links:
// the folder is opened with O_DIRECTORY | O_NOFOLLOW, each file with openat
// and O_NOFOLLOW, and only regular files with safe names are listed, so a
// symlink planted in (or as) the folder can never stream a file from
// elsewhere on the coordinator's host.
//
//   ASSIGN_OR_RETURN(auto folder, SweepFolderReader::Open(root + "/" + name));
//   for (const std::string& f : folder->Files())
//     RETURN_IF_ERROR(folder->ReadFile(f, 1 << 20, [&](int64_t offset, std::string_view data, bool last) {...}));
#ifndef SDFARM_COORDINATOR_SWEEP_FOLDER_READER_H_
#define SDFARM_COORDINATOR_SWEEP_FOLDER_READER_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sdfarm::coordinator {

class SweepFolderReader {
 public:
  // FAILED_PRECONDITION when `dir` is a symlink or not a folder, NOT_FOUND
  // when it does not exist.
  static absl::StatusOr<std::unique_ptr<SweepFolderReader>> Open(const std::string& dir);
  ~SweepFolderReader();
  SweepFolderReader(const SweepFolderReader&) = delete;
  SweepFolderReader& operator=(const SweepFolderReader&) = delete;

  // The regular files (not symlinks) with safe names (IsSafeFileName), sorted.
  std::vector<std::string> Files() const;

  // Calls `chunk` with consecutive pieces of at most `chunk_size` bytes (one
  // empty piece for an empty file), the last with last = true; stops at the
  // first error `chunk` returns. NOT_FOUND when the file is gone,
  // FAILED_PRECONDITION when it is no longer a regular file.
  absl::Status ReadFile(const std::string& name, size_t chunk_size,
                        const std::function<absl::Status(int64_t offset, std::string_view data, bool last)>& chunk) const;

 private:
  SweepFolderReader(std::string dir, int fd) : dir_(std::move(dir)), fd_(fd) {}
  std::string dir_;
  int fd_ = -1;
};

}  // namespace sdfarm::coordinator

#endif  // SDFARM_COORDINATOR_SWEEP_FOLDER_READER_H_
