// A sweep's output folder: the images and metadata.jsonl, written so that a
// crash at any point leaves only complete files and every image recorded once.
//
//   <output root>/<sweep name>/
//     000042-seed7-cfg7.5.png     written to a temporary name, fsynced, renamed
//     metadata.jsonl              one row per image: {"file_name": ..., params...}
//     sweep.json                  the spec as submitted
//
//   ASSIGN_OR_RETURN(auto out, SweepOutput::Open(root, "fox-study"));
//   RETURN_IF_ERROR(out->WriteImage(name, png_bytes));          // idempotent: same name, same bytes
//   ASSIGN_OR_RETURN(bool added, out->RecordImage(name, row));   // false: already recorded
//
// The coordinator writes an image, records it, and only then acknowledges the
// job in Redis: a redelivered job rewrites the same file and finds its row
// already there, so its effect happens exactly once. Rows are loaded from an
// existing metadata.jsonl on Open, so a restarted coordinator resumes the
// same set; a torn last line from a crash is dropped and rewritten.
// Not thread-safe: one writer per sweep.
//
// The folder is opened once without following symlinks (a sweep folder that
// is a symlink is refused), every file is reached through that descriptor
// (openat, renameat, O_NOFOLLOW), and each write first checks that
// <root>/<name> is still that very folder: a folder replaced by a symlink (or
// moved away) gets FAILED_PRECONDITION, and nothing is written through it.
// A full disk (ENOSPC, EDQUOT) is RESOURCE_EXHAUSTED; other I/O errors are
// UNAVAILABLE. Nothing partial is left behind on any error.
#ifndef SDFARM_COORDINATOR_SWEEP_OUTPUT_H_
#define SDFARM_COORDINATOR_SWEEP_OUTPUT_H_

#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sdfarm::coordinator {

class SweepOutput {
 public:
  // Creates <root>/<name> if needed and removes temporary files a crash left.
  // `name` must be a plain folder name (no separators, not "." or "..").
  static absl::StatusOr<std::unique_ptr<SweepOutput>> Open(const std::string& root, const std::string& name);
  ~SweepOutput();
  SweepOutput(const SweepOutput&) = delete;
  SweepOutput& operator=(const SweepOutput&) = delete;

  const std::string& dir() const { return dir_; }
  size_t recorded() const { return recorded_.size(); }
  bool IsRecorded(const std::string& file_name) const { return recorded_.count(file_name) > 0; }
  const std::set<std::string>& recorded_files() const { return recorded_; }

  // Atomically (temp file, fsync, rename, fsync of the folder) writes `bytes`
  // as `file_name` in the sweep folder.
  absl::Status WriteImage(const std::string& file_name, const std::string& bytes);

  // Appends {"file_name": file_name, ...row} to metadata.jsonl and fsyncs it,
  // unless the file is already recorded (returns false then).
  absl::StatusOr<bool> RecordImage(const std::string& file_name, const nlohmann::json& row);

  // Writes sweep.json (atomically).
  absl::Status WriteSpec(const nlohmann::json& spec);

 private:
  SweepOutput(std::string dir, int dir_fd) : dir_(std::move(dir)), dir_fd_(dir_fd) {}
  absl::Status LoadManifest();
  absl::Status WriteFileAtomic(const std::string& file_name, const std::string& bytes);
  // OK when dir_ is still the folder dir_fd_ refers to (not a symlink).
  absl::Status CheckFolderUnchanged() const;

  std::string dir_;
  int dir_fd_ = -1;  // the sweep folder, opened with O_NOFOLLOW
  unsigned long dev_ = 0, ino_ = 0;
  std::set<std::string> recorded_;
};

// A file name the sweep folder may hold: [A-Za-z0-9._-], 1..200 chars, no leading '.'.
bool IsSafeFileName(const std::string& name);

}  // namespace sdfarm::coordinator

#endif  // SDFARM_COORDINATOR_SWEEP_OUTPUT_H_
