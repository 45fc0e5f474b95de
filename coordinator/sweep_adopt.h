// When Redis loses a sweep's state (FLUSHALL, a restart without AOF, a
// rollback to an older snapshot), the sweep's folder still says what it is
// and what is done: sweep.json holds its spec, metadata.jsonl every image
// recorded. This file holds the pieces the coordinator uses to rebuild the
// Redis state from the folder ("adopt" it) and to skip the jobs whose images
// are all on disk, so that finished images are kept and only the missing
// ones are rendered:
//
//   ASSIGN_OR_RETURN(SweepFolder f, ReadSweepFolder(root, "fox-study", limits));
//   // EVAL kAdoptSweepScript (through the leader lease) with AdoptSweepArgv(...)
//   int64_t n = RecordedJobRun(expander, output, next_job, 4096);  // jobs to skip
//   // EVAL kSkipRecordedJobsScript: next_job += n, jobs_done += n
//
// The adopted sweep starts again at next_job 0 with no job in flight; the
// scheduler skips every run of jobs whose images are all recorded and
// enqueues the rest. Items that had failed (their record was in Redis) get
// another chance. Images are recorded once whatever happens: the folder's
// manifest is the record (SweepOutput::IsRecorded), Redis only schedules.
#ifndef SDFARM_COORDINATOR_SWEEP_ADOPT_H_
#define SDFARM_COORDINATOR_SWEEP_ADOPT_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/sweep_expander.h"
#include "coordinator/sweep_output.h"
#include "coordinator/sweep_spec.h"

namespace sdfarm::coordinator {

struct SweepFolder {
  nlohmann::json spec_json;  // sweep.json, as the coordinator wrote it (canonical)
  SweepSpec spec;
  std::string sweep_id;      // the id metadata.jsonl's first row names ("" when none)
};

// Reads <root>/<name>/sweep.json and the sweep id of the first row of its
// metadata.jsonl. NotFound when the folder or sweep.json is missing;
// InvalidArgument when sweep.json is not a valid spec (the message says why).
// The folder is not followed when it is a symlink.
absl::StatusOr<SweepFolder> ReadSweepFolder(const std::string& root, const std::string& name, SweepLimits limits);

// The names of the folders under `root` that hold a sweep.json (plain
// folders with a valid sweep name, not symlinks, without the marker that
// `sdfarm rm --keep-files` leaves).
std::vector<std::string> SweepFoldersUnder(const std::string& root);

// The marker `sdfarm rm --keep-files` leaves in a folder it forgets, so that
// the folder is never adopted again automatically (sdfarm adopt still can).
inline constexpr char kRemovedMarker[] = ".sdfarm-removed";

// The item index a sweep image's file name starts with ("000042-seed7-..." ->
// 42); -1 when it has none.
int64_t ItemIndexOfFileName(const std::string& file_name);

// The largest item index with a recorded image; -1 when none.
int64_t LastRecordedItem(const SweepOutput& output);

// How many jobs from `from` on (at most `limit`, never past the last job) have
// every image recorded: they need no rendering.
int64_t RecordedJobRun(const SweepExpander& expander, const SweepOutput& output, int64_t from, int64_t limit);

// Rebuilds a sweep's keys.
// KEYS: sweep hash, inflight hash, failures hash, failed-items hash, name key,
// sweeps zset, request key. ARGV: sweep id, name, created ms, sweep-key prefix
// ("<prefix>:sweep:"), "1" to set the request key, field, value, ...
// Returns {0, id} rebuilt, {1, id} the sweep's state is there (nothing
// changed), {2, owner} the name belongs to another sweep that has its state.
inline constexpr char kAdoptSweepScript[] = R"lua(
if redis.call('HEXISTS', KEYS[1], 'spec') == 1 then return {1, ARGV[1]} end
local owner = redis.call('GET', KEYS[5])
if owner and owner ~= ARGV[1] and redis.call('HEXISTS', ARGV[4] .. owner, 'spec') == 1 then
  return {2, owner}
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('SET', KEYS[5], ARGV[1])
if ARGV[5] == '1' then redis.call('SET', KEYS[7], ARGV[1]) end
redis.call('ZADD', KEYS[6], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
return {0, ARGV[1]}
)lua";

// KEYS: sweep hash. ARGV: from (== expected next_job), to. Marks the jobs
// [from, to) finished without rendering them (their images are on disk).
// Returns the new jobs_done, or nil when the sweep is not running or
// next_job moved.
inline constexpr char kSkipRecordedJobsScript[] = R"lua(
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return false end
if redis.call('HGET', KEYS[1], 'next_job') ~= ARGV[1] then return false end
redis.call('HSET', KEYS[1], 'next_job', ARGV[2])
return redis.call('HINCRBY', KEYS[1], 'jobs_done', tonumber(ARGV[2]) - tonumber(ARGV[1]))
)lua";

}  // namespace sdfarm::coordinator

#endif  // SDFARM_COORDINATOR_SWEEP_ADOPT_H_
